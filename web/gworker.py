"""A gunicorn worker class: gevent's, with a cheaper ``sendall`` for small writes.

    gunicorn -k web.gworker.GeventWorker 'web:create_app()'

gevent's ``sendall`` asks the kernel for the socket's send buffer size (a ``getsockopt``),
reads the clock and slices a memoryview on every call, to cope with huge payloads. An SSE
frame is a hundred bytes that the kernel almost always takes whole, so this worker first
tries one plain non-blocking ``send`` and only falls back to gevent's loop for what is
left. Everything else is gunicorn's gevent worker unchanged; ``-k gevent`` works too.
"""

from __future__ import annotations

from typing import Any

import gevent.socket
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker


class FastSendSocket(gevent.socket.socket):
    __slots__ = ()

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            sent = self._sock.send(data, flags)
        except BlockingIOError:
            sent = 0  # the send buffer is full: gevent waits for it below
        if sent < len(data):
            super().sendall(memoryview(data)[sent:], flags)


class GeventWorker(_GeventWorker):
    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if type(client) is gevent.socket.socket:
            client.__class__ = FastSendSocket  # same layout: only sendall differs
        super().handle(listener, client, addr)
