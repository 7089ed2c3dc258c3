"""The WSGI entry point: `gunicorn -k gevent wsgi:app`."""

from chatsite import create_app

app = create_app()
