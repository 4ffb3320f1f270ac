"""The peer P7 measures chatsvc against: the same streamed turn on FastAPI + uvicorn + async
SQLAlchemy (aiosqlite) + AsyncOpenAI (bench/peer/app.py; its pins: requirements.txt)."""
