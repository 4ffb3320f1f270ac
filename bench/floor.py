"""The floor: a bare Flask JSON endpoint doing nothing, served with the same gunicorn settings."""

from flask import Flask

app = Flask(__name__)


@app.post("/api/<user_id>/chat")
def chat(user_id: str) -> dict[str, str]:
    return {"response": "ok", "user_id": user_id}


@app.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "ok"}
