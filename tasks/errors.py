"""Exceptions raised by Jobcast's task side.

JobcastError
├── JobError          raised by a job's body: ``failed`` shows its message to watchers
├── JobCancelled      a cancel was requested; the task stops at its next step
└── QueueFull         the waiting line is at ``max_queue``; try again later
"""

from __future__ import annotations


class JobcastError(Exception):
    """Base class of Jobcast's own exceptions."""


class JobError(JobcastError):
    """A failure whose message is safe to show the job's watchers (``failed``'s error).

    Any other exception fails the job with the task's generic ``failure_message``: its
    text may hold paths or secrets, so only the logs get it.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class JobCancelled(JobcastError):
    """The job was cancelled while it ran; raised at the next step."""


class QueueFull(JobcastError):
    """The waiting line holds ``max_queue`` jobs already."""

    def __init__(self, length: int, retry_after: int | None = None) -> None:
        super().__init__(f"the queue is full ({length} jobs waiting)")
        self.length = length
        self.retry_after = retry_after  # seconds until a place should free up, if known
