"""The flask-sse reference subject: the PyPI package ``flask-sse``, used as documented.

``gunicorn -k gevent -w 1 bench.flasksse_app:app``; a stream is
``GET /stream?channel=<channel>``. flask-sse opens one Redis pub/sub connection (and a
fresh connection pool) per open stream, JSON-decodes every message and re-encodes it
for each watcher. Its publish side is ``PUBLISH <channel> {"data":…,"type":…,"id":…}``,
which ``bench.load`` sends directly through Redis for this subject.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
app.register_blueprint(sse, url_prefix="/stream")
