"""A streamed chat turn the way a careful FastAPI service would write it: the peer of P7.

    python -m bench.peer.app --init   (creates the tables of PEER_DATABASE_URL; once)
    uvicorn bench.peer.app:app --workers 2 --loop uvloop --http httptools --no-access-log

`POST /api/{user_id}/chat` `{"message", "conversation_id"?}` with a bearer token whose subject
is `user_id` (HS256, PEER_JWT_SECRET), `Accept: text/event-stream`: the same turn as chatsvc's.
One transaction loads the conversation (or makes one) and its last 20 messages and stores the
user's message; no connection is held while the model answers; the model's stream (AsyncOpenAI,
`stream=True`) is forwarded chunk by chunk as `event: delta` frames after a `meta`; then the
reply is stored and `done` carries the turn's body (`error` with a problem body when the model
fails). Settings: PEER_DATABASE_URL (sqlite+aiosqlite:///…), PEER_OPENAI_BASE_URL,
PEER_OPENAI_MODEL, PEER_JWT_SECRET.

No handicap on purpose: SQLite in WAL mode with a busy timeout, one engine and one SDK client
per worker (their pools sized for a thousand streams a worker), uvloop and httptools.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2
import jwt
import openai
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import ForeignKey, Index, String, Text, event, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

HISTORY_LIMIT = 20
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_created", "conversation_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]


class ChatRequest(BaseModel):
    message: str = Field(min_length=1, max_length=32_000)
    conversation_id: str | None = Field(default=None, max_length=32)


def make_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=10, max_overflow=20)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        # A writer waits up to 30 s for the lock (as long as a P7 client waits): both workers
        # write, and under load a lock is held while its task waits for the event loop.
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = make_engine(os.environ["PEER_DATABASE_URL"])
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    limits = httpx2.Limits(max_connections=4000, max_keepalive_connections=1000)
    app.state.model = openai.AsyncOpenAI(
        base_url=os.environ["PEER_OPENAI_BASE_URL"], api_key="peer", max_retries=0,
        timeout=30.0, http_client=openai.DefaultAsyncHttpxClient(limits=limits),
    )  # fmt: skip
    yield
    await app.state.model.close()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


def authenticate(authorization: str, user_id: str) -> None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "A bearer token is required.")
    try:
        claims = jwt.decode(token, os.environ["PEER_JWT_SECRET"], algorithms=["HS256"])
    except jwt.InvalidTokenError as error:
        raise HTTPException(401, "The token is not valid.") from error
    if claims.get("sub") != user_id:
        raise HTTPException(403, "This token is another user's.")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def frame(event_id: int, name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\nid: {event_id}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@app.post("/api/{user_id}/chat")
async def chat(
    user_id: str, body: ChatRequest, request: Request, authorization: str = Header("")
) -> StreamingResponse:
    """One streamed turn: store the message, load the history, stream the answer, store it."""
    authenticate(authorization, user_id)
    sessions = request.app.state.sessions
    async with sessions() as session, session.begin():
        if body.conversation_id is None:
            conversation = Conversation(
                id=uuid.uuid4().hex, user_id=user_id, title=body.message[:60], created_at=now()
            )
            session.add(conversation)
            history: list[dict[str, str]] = []
        else:
            conversation = await session.get(Conversation, body.conversation_id)
            if conversation is None or conversation.user_id != user_id:
                raise HTTPException(404, "No such conversation.")
            rows = await session.execute(
                select(Message.role, Message.content)
                .where(Message.conversation_id == conversation.id, Message.status == "completed")
                .order_by(Message.created_at.desc())
                .limit(HISTORY_LIMIT)
            )
            history = [{"role": role, "content": content} for role, content in rows][::-1]
        session.add(
            Message(id=uuid.uuid4().hex, conversation_id=conversation.id, role="user",
                    content=body.message, status="completed", created_at=now())
        )  # fmt: skip
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, *history]
    messages.append({"role": "user", "content": body.message})
    try:
        stream = await request.app.state.model.chat.completions.create(
            model=os.environ.get("PEER_OPENAI_MODEL", "bench"), messages=messages, stream=True
        )
    except openai.APIError as error:
        raise HTTPException(502, "The model failed.") from error
    turn = {"conversation_id": conversation.id, "message_id": uuid.uuid4().hex}
    return StreamingResponse(
        answer(sessions, stream, turn), media_type="text/event-stream", headers=NO_BUFFERING
    )


async def answer(
    sessions: async_sessionmaker, stream: Any, turn: dict[str, str]
) -> AsyncIterator[str]:
    """The turn's events; the reply is stored (`failed` with what came, if the model broke
    off or the client left) before `done` or `error`."""
    yield frame(1, "meta", turn)
    parts: list[str] = []
    event_id, status = 1, "failed"
    try:
        async for chunk in stream:
            if chunk.choices and (text := chunk.choices[0].delta.content):
                parts.append(text)
                event_id += 1
                yield frame(event_id, "delta", {"text": text})
        status = "completed"
    except openai.APIError:
        problem = {"status": 502, "code": "upstream_error", "detail": "The model failed."}
        yield frame(event_id + 1, "error", problem)
    finally:
        text = "".join(parts)
        # A client that leaves cancels this task; anyio would cancel every await that follows
        # too, and a store cut short leaks its pooled connection: shielded, it completes.
        with anyio.CancelScope(shield=True):
            async with sessions() as session, session.begin():
                session.add(
                    Message(id=turn["message_id"], conversation_id=turn["conversation_id"],
                            role="assistant", content=text, status=status, created_at=now())
                )  # fmt: skip
            await stream.close()
    if status == "completed":
        yield frame(event_id + 1, "done", {**turn, "response": text, "status": status})


@app.exception_handler(HTTPException)
async def problem(_request: Request, error: HTTPException) -> JSONResponse:
    body = {"status": error.status_code, "detail": error.detail}
    return JSONResponse(body, error.status_code, media_type="application/problem+json")


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


async def create_tables(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", action="store_true", help="create PEER_DATABASE_URL's tables")
    args = parser.parse_args()
    if args.init:
        asyncio.run(create_tables(os.environ["PEER_DATABASE_URL"]))


if __name__ == "__main__":
    main()
