"""Celery's unacknowledged messages in Redis, read and handed out again as kombu does it.

kombu's Redis transport emulates acks: a delivered message waits in the ``unacked`` hash
(delivery tag → ``[message, exchange, routing key]``) until its task acks it, and only
after the visibility timeout does some worker restore it to its queue. A message whose
worker died therefore waits that long. :func:`in_flight` lists those messages by task id
and :func:`restore` moves one back to its queue with kombu's own transaction
(``QoS.restore_by_tag``: atomic, and a no-op for a tag already acked or restored), so
the monitor can hand out a dead worker's job at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from celery import Celery


class InFlight(NamedTuple):
    tag: bytes
    task: str  # the task's name


@contextmanager
def broker_channel(app: Celery) -> Iterator[Any]:
    """A kombu channel on ``app``'s broker (its key names and prefix, its client)."""
    with app.connection_for_write() as conn:
        yield conn.default_channel


def in_flight(channel: Any) -> dict[str, list[InFlight]]:
    """Task id → its unacked messages (a restored one may be out twice), delivered, not acked."""
    out: dict[str, list[InFlight]] = {}
    # kombu prefixes the keys of the commands it uses itself; HSCAN is not one of them.
    key = (getattr(channel, "global_keyprefix", "") or "") + channel.unacked_key
    for tag, raw in channel.client.hscan_iter(key, count=500):
        try:
            headers = json.loads(raw)[0]["headers"]
            task_id, name = str(headers["id"]), str(headers["task"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # not a Celery protocol 2 message: not ours to hand out
        out.setdefault(task_id, []).append(InFlight(tag, name))
    return out


def restore(channel: Any, tag: bytes) -> None:
    """Put the message back on its queue, next in line, as the visibility timeout would."""
    channel.qos.restore_by_tag(tag)


def keep_visible(channel: Any, tags: list[bytes]) -> None:
    """Restart the visibility timeout of these messages: their tasks are alive and well."""
    if tags:
        channel.client.zadd(channel.unacked_index_key, dict.fromkeys(tags, time.time()), xx=True)
