"""Bearer JWTs (HS256), the caller, and what the caller may reach."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any

import jwt
from flask import current_app, g, request

from .config import accepted_secrets
from .db import utcnow
from .errors import ApiError, Forbidden, NotFound, Unauthorized
from .services.conversations import SESSION, Access

# Anchored with \Z, not `$`: `$` also matches before a final newline, so "alice\n" was a user
# of its own. Whole-string, whichever of match/fullmatch a caller uses.
USER_ID = re.compile(r"^(?!(?:chat|session|documents)\Z)[A-Za-z0-9._@-]{1,128}\Z")
ALGORITHM = "HS256"


def claims() -> dict[str, Any] | None:
    """The verified token's claims, or None without an Authorization header; 401 if it is bad."""
    store = g._get_current_object()  # the proxies, looked through once (speedups.py)
    if "auth_claims" in store:
        return store.auth_claims
    header = request.headers.get("Authorization")
    found = store.auth_claims = None if header is None else _verify(header)
    if found:
        store.user_id = found["sub"]
    return found


def _verify(header: str) -> dict[str, Any]:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
    config = current_app.config
    if not config["JWT_SECRET"]:
        raise Unauthorized("This service accepts no tokens: JWT_SECRET is not configured.")
    try:
        decoded = jwt.decode(
            token.strip(),
            signing_key(token.strip(), config),
            algorithms=[ALGORITHM],
            issuer=config["JWT_ISSUER"] or None,
            audience=config["JWT_AUDIENCE"] or None,
            options={"require": ["sub", "exp"], "verify_aud": bool(config["JWT_AUDIENCE"])},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The token has expired.") from None
    except jwt.PyJWTError:
        raise Unauthorized("The token is not valid.") from None
    if not isinstance(decoded.get("sub"), str) or not USER_ID.fullmatch(decoded["sub"]):
        raise Unauthorized("The token's subject is not a valid user id.")
    _check_lifetime(decoded, config["JWT_MAX_LIFETIME_SECONDS"])
    return decoded


def _check_lifetime(decoded: dict[str, Any], longest: int) -> None:
    """With JWT_MAX_LIFETIME_SECONDS set, a token must say when it was issued (`iat`), and
    live no longer than that (`exp - iat`): a stolen year-long token is refused."""
    if not longest:
        return
    issued, expires = decoded.get("iat"), decoded.get("exp")
    if not _is_number(issued) or not _is_number(expires):
        raise Unauthorized("The token must carry numeric 'iat' and 'exp' claims.")
    if expires - issued > longest:
        raise Unauthorized(f"The token lives longer than {longest} seconds.")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def authenticate(token: Any) -> dict[str, Any]:
    """A token sent other than in the Authorization header (a WebSocket's first frame),
    checked exactly as the header's; its subject is then the request's caller."""
    if not isinstance(token, str) or not token.strip():
        raise Unauthorized("The token must be a non-empty string.")
    g.auth_claims = _verify(f"Bearer {token.strip()}")
    g.user_id = g.auth_claims["sub"]
    return g.auth_claims


def caller_id() -> str | None:
    found = claims()
    return found["sub"] if found else None


def caller_key() -> str:
    """Who is asking, for rate limits and idempotency: the token's subject; without a token the
    path's user (trusted only when AUTH_MODE=optional), else the session id, else the client
    address (the proxy's X-Forwarded-For when PROXY_FIX_X_FOR trusts it). Never raises."""
    try:
        subject = caller_id()
    except ApiError:  # a bad token: the view answers 401, and the request counts by address
        return f"addr:{request.remote_addr}"
    if subject is not None:
        return f"user:{subject}"
    path = request.view_args or {}
    if path.get("user_id") and current_app.config["AUTH_MODE"] == "optional":
        return f"user:{path['user_id']}"
    if path.get("session_id"):
        return f"session:{path['session_id']}"
    return f"addr:{request.remote_addr}"


def limit_key() -> str:
    """The rate limiter's caller: `caller_key`, except that chat without a token counts by
    client address unless the path's user is trusted (a new or made-up session id buys no
    fresh budget), and a session id (a capability: the limiter logs its keys) is hashed."""
    key = caller_key()
    if key.startswith("session:"):
        if request.method == "POST" and request.blueprint == "chat":
            return f"addr:{request.remote_addr}"
        return "session:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return key


def check_early() -> None:
    """The caller's right to the route, checked before the body is read: a request without a
    valid token where one is needed is 401 at once, whatever its Content-Length. The views
    check again (cached); this runs the same checks, chosen by the route's blueprint."""
    req = request._get_current_object()
    if req.url_rule is None or req.method == "OPTIONS":
        return
    if req.url_rule.websocket:  # a socket may authenticate by frame (api/websocket.py)
        return
    path = req.view_args or {}
    if req.path.startswith("/api/admin/"):
        require_admin()
    elif "user_id" in path:
        user_for_path(path["user_id"])
    elif req.blueprint in ("chat", "sessions", "openai"):
        session_access()
    elif req.blueprint == "documents":
        require_reader() if req.method == "GET" else require_admin()
    elif req.path.startswith("/api/"):
        claims()


def user_for_path(user_id: str) -> str:
    """The path's user, if well formed (else 404) and the caller may act for them (401/403)."""
    if not USER_ID.fullmatch(user_id):
        raise NotFound("The resource does not exist.")
    subject = caller_id()
    if subject is None and current_app.config["AUTH_MODE"] == "required":
        raise Unauthorized()
    if subject is not None and subject != user_id:
        raise Forbidden("The token's subject is not this user.")
    g.user_id = user_id
    return user_id


def user_access(user_id: str) -> Access:
    return Access(user_for_path(user_id), rules=lifetimes())


def lifetimes() -> dict[str, int]:
    """The conversation rules a service applies, from the running config."""
    config = current_app.config
    names = (
        "SESSION_TTL_SECONDS", "CONVERSATION_TTL_SECONDS", "TURN_STALE_SECONDS",
        "TURN_LEASE_SECONDS",
    )  # fmt: skip
    return {name: config[name] for name in names}


def session_access() -> Access:
    """Session routes: the caller's own sessions, or anonymous ones when they are allowed."""
    subject = caller_id()
    config = current_app.config
    if (
        subject is None
        and config["AUTH_MODE"] == "required"
        and not config["ALLOW_ANONYMOUS_SESSIONS"]
    ):
        raise Unauthorized("Sessions need a token on this service.")
    return Access(subject, kind=SESSION, rules=lifetimes())


def require_reader() -> None:
    if current_app.config["AUTH_MODE"] == "required" and claims() is None:
        raise Unauthorized()


def require_admin() -> None:
    found = claims()
    if found is None and current_app.config["AUTH_MODE"] == "required":
        raise Unauthorized()
    if found is not None and found.get("role") != "admin":
        raise Forbidden("Only an admin may change the knowledge base.")


def create_token(
    user_id: str, *, secret: str, admin: bool = False, ttl: timedelta = timedelta(days=1),
    issuer: str = "", audience: str = "",
) -> str:  # fmt: skip
    now = utcnow()
    payload: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if admin:
        payload["role"] = "admin"
    if issuer:
        payload["iss"] = issuer
    if audience:
        payload["aud"] = audience
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def signing_key(token: str, config: Any) -> str:
    """The accepted key that signed the token: JWT_SECRET, or one of JWT_SECRETS during a
    rollover. JWT_SECRET when none did (or the token is malformed), so that verifying with it
    says why the token is not valid. With one key there is nothing to try."""
    keys = accepted_secrets(config)
    if len(keys) > 1:
        for key in keys:
            try:
                jwt.api_jws.decode_complete(token, key, algorithms=[ALGORITHM])
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                break
            return key
    return config["JWT_SECRET"]
