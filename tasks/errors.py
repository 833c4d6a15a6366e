"""Exceptions raised by Jobcast's task side.

JobcastError
├── JobCancelled      a cancel was requested; the task stops at its next step
└── QueueFull         the waiting line is at ``max_queue``; try again later
"""

from __future__ import annotations


class JobcastError(Exception):
    """Base class of Jobcast's own exceptions."""


class JobCancelled(JobcastError):
    """The job was cancelled while it ran; raised at the next step."""


class QueueFull(JobcastError):
    """The waiting line holds ``max_queue`` jobs already."""

    def __init__(self, length: int) -> None:
        super().__init__(f"the queue is full ({length} jobs waiting)")
        self.length = length
