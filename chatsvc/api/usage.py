"""Token usage per user."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from .. import auth, db
from ..schemas import UsagePageSchema
from ..services import usage
from . import problems

bp = Blueprint("usage", __name__, url_prefix="/api", description="Token usage.")


@bp.get("/<user_id>/usage")
@bp.response(200, UsagePageSchema)
@problems(bp, 401, 403, 404, 422, 429)
def get_usage(user_id: str) -> dict[str, Any]:
    """Tokens the user's turns used, per day (UTC) and model, newest day first."""
    return {"items": usage.per_day(db.session(), auth.user_for_path(user_id))}
