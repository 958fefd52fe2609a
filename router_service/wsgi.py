"""WSGI entry point for gunicorn: ``gunicorn 'router_service.wsgi:app'`` (config from $ROUTER_CONFIG)."""
from .app import create_app

app = create_app()
