"""A Flask app of its own, with Jobcast mounted under ``/jobcast``.

    cd examples/flask_embed
    gunicorn -k gevent -b 127.0.0.1:8000 'app:create_app()'
    JOBCAST_URL_PREFIX=/jobcast celery -A tasks worker      # from the repository root

The app keeps its own routes, its own 404 page, its own rate limiter and its own
Prometheus metrics; Jobcast brings the job API, the streams, the page (``/jobcast/``) and
the ops dashboard (``/jobcast/ops``). Workers need ``JOBCAST_URL_PREFIX`` to publish
result URLs under the prefix (a done event's image url).
"""

from __future__ import annotations

from flask import Flask, Response
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from web import Jobcast

jobcast = Jobcast(url_prefix="/jobcast")
HELLOS = Counter("hello_requests", "Greetings served by the host app.")


def create_app() -> Flask:
    app = Flask(__name__)
    # The host's own limiter, in memory: Jobcast's (Redis) neither reads nor changes it.
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://")

    @app.get("/hello")
    @limiter.limit("3/minute")
    def hello() -> str:
        HELLOS.inc()
        return "Hello from the host app."

    @app.get("/host-metrics")
    def host_metrics() -> Response:
        return Response(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[str, int]:
        return "<!doctype html><title>Not here</title><h1>The host app has no such page</h1>", 404

    jobcast.init_app(app)
    return app
