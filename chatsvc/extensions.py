"""Unbound extension singletons; `create_app` binds them to each app."""

from flask_migrate import Migrate

migrate = Migrate(render_as_batch=True, compare_type=True)
