"""Token usage per user, the user's quota, and an admin's per-user cap."""

from __future__ import annotations

from typing import Any

from flask import current_app

from .. import auth, db
from ..errors import Forbidden, NotFound, Unauthorized
from ..schemas import QuotaSchema, QuotaUpdateSchema, UsagePageSchema
from ..services import quotas, usage
from . import Blueprint, problems

bp = Blueprint("usage", __name__, url_prefix="/api", description="Token usage and quotas.")


@bp.get("/<user_id>/usage")
@bp.response(200, UsagePageSchema)
@problems(bp, 401, 403, 404, 422, 429)
def get_usage(user_id: str) -> dict[str, Any]:
    """Tokens the user's turns used, per day (UTC) and model, newest day first, and the quota."""
    user = auth.user_for_path(user_id)
    items = usage.per_day(db.session(), user)
    quota = quotas.user_standing(db.session(), user, current_app.config["QUOTA_TOKENS_PER_DAY"])
    return {"items": items, "quota": quota.as_dict()}


@bp.put("/admin/users/<user_id>/quota")
@bp.arguments(QuotaUpdateSchema)
@bp.response(200, QuotaSchema)
@problems(bp, 400, 401, 403, 404, 413, 415, 422, 429)
def set_quota(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Set one user's daily token cap (an admin's token is required, in every profile)."""
    found = auth.claims()
    if found is None:
        raise Unauthorized()
    if found.get("role") != "admin":
        raise Forbidden("Only an admin may set quotas.")
    if not auth.USER_ID.match(user_id):
        raise NotFound("The user does not exist.")
    quota = quotas.set_user_cap(
        db.session(), user_id, body["tokens_per_day"], current_app.config["QUOTA_TOKENS_PER_DAY"]
    )
    return quota.as_dict()
