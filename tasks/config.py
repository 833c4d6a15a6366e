"""Settings: the one place that reads the environment.

Both the web factory and the Celery factory call :func:`Settings.from_env` when they
build their app, never at import time, so tests can build apps with other settings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "jobcast:"
    media_dir: str = "var/media"
    retention_seconds: int = 24 * 3600
    max_queue: int = 1000
    heartbeat_seconds: float = 15.0
    retry_ms: int = 3000
    max_prompt_chars: int = 500
    max_side: int = 1024
    min_side: int = 64
    max_steps: int = 100
    default_side: int = 512
    default_steps: int = 20
    max_body_bytes: int = 16 * 1024
    stream_maxlen: int = 1000
    # Connections a web process may hold besides the hub's pub/sub one; requests wait
    # for a free one (BlockingConnectionPool) instead of failing.
    redis_pool_size: int = 32
    redis_pool_timeout: float = 10.0
    watcher_queue_size: int = 256
    max_streams: int = 20000
    send_timeout_seconds: float = 30.0
    max_attempts: int = 3
    publish_retry_seconds: float = 60.0
    visibility_timeout: int = 3600
    # Flask-Limiter syntax, per client address; empty turns the limit off.
    post_rate_limit: str = "60/minute;10/second"
    ops_token: str = ""
    # Sign-in attempts at /ops/login, per client address (Flask-Limiter syntax; empty: off).
    ops_login_rate_limit: str = "10/minute"
    # Reverse proxies in front of the web that set X-Forwarded-For/-Proto; 0 trusts none.
    trusted_proxies: int = 0
    # The monitor publishes the ops snapshot this often (seconds).
    ops_interval: float = 1.0
    # A worker is offline after this long without a heartbeat; 0 means 2.5 heartbeat
    # intervals as the worker announces them (Celery's default 2 s gives 5 s).
    worker_timeout: float = 0.0
    # The monitor's retention sweep (old images, ghosts in the line) runs this often.
    sweep_seconds: float = 60.0
    signing_key: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then ``JOBCAST_*``/``REDIS_URL``, then overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "REDIS_URL" in env:
            values["redis_url"] = env["REDIS_URL"]
        for f in dataclasses.fields(cls):
            name = "JOBCAST_" + f.name.upper()
            if name in env and f.name != "extra":
                values[f.name] = _coerce(f.default, env[name])
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw
