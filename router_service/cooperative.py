"""Running under gunicorn's gevent worker: what must change when the sockets are cooperative.

The gevent worker patches the standard library before the app is imported, so sockets, locks,
sleeps and threads yield to one event loop instead of blocking an OS thread. Two things do not:

- gRPC's C core keeps its own threads and sockets outside the loop; with grpc's gevent mode a
  process that had made a failed call hung at exit, even with its channel closed. The classifier
  then talks to Triton over HTTP (tritonclient's HTTP client is built on geventhttpclient, made
  for this loop).
- A blocking C call (sqlite) stalls every request of the worker while it runs; ``off_loop`` runs
  it on gevent's pool of real threads, and the calling greenlet waits for it alone.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def patched() -> bool:
    """True in a process whose sockets gevent has patched (gunicorn's gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def off_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, on a real thread when gevent runs the loop, so other requests go on."""
    if not patched():
        return fn(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args)  # type: ignore[no-any-return]
