"""Edge module for the ``celery`` CLI: ``celery -A tasks worker``. Nothing imports it."""

from tasks.app import create_celery

app = create_celery()
