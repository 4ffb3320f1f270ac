"""The floors: bare Flask endpoints served with the same gunicorn settings as chatsvc.

`POST /api/<user_id>/chat` does nothing. With `FLOOR_LLM_URL` set it makes one chat completion
through the `openai` SDK first, sent and read the way chatsvc's adapter does it (a body as
large as chatsvc's, the answer as plain JSON), and returns its text: no turn that asks the
model through the SDK can be cheaper than that.
"""

import os

import openai
from flask import Flask

from bench.harness import PROVIDER_REQUEST

app = Flask(__name__)
LLM_URL = os.environ.get("FLOOR_LLM_URL")
client = openai.OpenAI(base_url=LLM_URL, api_key="bench", max_retries=0) if LLM_URL else None


@app.post("/api/<user_id>/chat")
def chat(user_id: str) -> dict[str, str]:
    if client is None:
        return {"response": "ok", "user_id": user_id}
    completion = client.post(
        "/chat/completions",
        body=PROVIDER_REQUEST,
        cast_to=object,
        options={"timeout": 30, "security": {"bearer_auth": True}},
    )
    return {"response": completion["choices"][0]["message"]["content"], "user_id": user_id}


@app.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "ok"}
