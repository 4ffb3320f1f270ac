"""The WSGI entry point gunicorn serves."""

from chatsvc import create_app

app = create_app()
