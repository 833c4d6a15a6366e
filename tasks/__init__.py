"""Jobcast's task side: the event log, the reporter API and the demo image task.

``celery -A tasks worker`` finds the app in :mod:`tasks.celery`; importing this package
builds nothing and reads no environment.
"""

from tasks.events import JobEvents
from tasks.reporter import Reporter

__all__ = ["JobEvents", "Reporter"]
