"""gunicorn's gevent worker, with a stop that does not wait for idle keep-alive connections.

On SIGTERM gunicorn's gevent worker stops accepting and waits, up to the graceful timeout, for
every connection's greenlet to end, including those only waiting for a client's next request on a
keep-alive connection. Clients and load balancers keep such connections open, so every stop took
the whole graceful timeout (30 s) and a rollout waited that long per pod. gthread closes them at
once; this worker does the same: once stopping, a connection between requests is shut down (the
client sees it closed, as after a keep-alive timeout, and opens a new one elsewhere), while
requests in flight, streams included, still get the graceful timeout to finish.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import gevent
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker


class GeventWorker(_GeventWorker):  # type: ignore[misc]
    CLOSE_IDLE_EVERY_S = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle: set[Any] = set()  # the greenlets of connections waiting for their next request

    @contextmanager
    def timeout_ctx(self) -> Iterator[None]:
        """gunicorn waits for each request's first bytes inside this (the keep-alive timeout)."""
        me = gevent.getcurrent()
        self._idle.add(me)
        try:
            with super().timeout_ctx():
                yield
        finally:
            self._idle.discard(me)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        gevent.spawn(self._close_idle_connections)  # out of the signal handler, as gunicorn does

    def _close_idle_connections(self) -> None:
        # Repeated until the worker exits: a request in flight at the signal is answered with
        # "Connection: close", but a connection accepted just before the listener closed may go idle later.
        while True:
            for connection in list(self._idle):
                # What gunicorn raises when a client closes between requests: it closes the socket quietly.
                connection.kill(NoMoreData(), block=False)
            gevent.sleep(self.CLOSE_IDLE_EVERY_S)
