"""Job tokens: with ``JOBCAST_SIGNING_KEY`` set, a job's id alone no longer opens it.

The token is an HMAC of the job id, so any process holding the key (a web process, the
backend that submitted the job) can hand a browser the capability for exactly one job —
or, for a canvas, for the canvas and each of its children (``<P>.<n>`` opens with P's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from tasks.keys import parent_of


def job_token(key: str, job_id: str) -> str:
    """The capability to watch a job when ``JOBCAST_SIGNING_KEY`` is set ("" otherwise)."""
    if not key:
        return ""
    digest = hmac.new(key.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def opens(key: str, job_id: str, given: str) -> bool:
    """Whether ``given`` is the token of ``job_id``, or of the canvas it is a child of."""
    owners = [job_id] + [parent for parent in (parent_of(job_id),) if parent]
    return any(hmac.compare_digest(given.encode(), job_token(key, o).encode()) for o in owners)
