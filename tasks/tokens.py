"""Job tokens: with ``JOBCAST_SIGNING_KEY`` set, a job's id alone no longer opens it.

The token is an HMAC of the job id, so any process holding the key (a web process, the
backend that submitted the job) can hand a browser the capability for exactly one job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def job_token(key: str, job_id: str) -> str:
    """The capability to watch a job when ``JOBCAST_SIGNING_KEY`` is set ("" otherwise)."""
    if not key:
        return ""
    digest = hmac.new(key.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()
