"""Gunicorn settings for the router (production WSGI server; used by `make run` and the image)."""
import os
import shutil
import tempfile
from pathlib import Path

bind = f"{os.environ.get('ROUTER_HOST', '127.0.0.1')}:{os.environ.get('ROUTER_PORT', '8080')}"
# One process carries many requests at once: they mostly wait on Triton or an upstream API, and a
# streamed answer holds its request for as long as it lasts. gevent (the default) runs them as
# greenlets on one event loop: at 64 connections it carried 1.5x the requests/s of gthread's OS
# threads (manual routing, 897 vs 589 on 2 cores), because a request's hand-offs between threads
# (accept, work, upstream) cost more than a switch between greenlets. The app adapts to it
# (cooperative.py): the classifier calls Triton over HTTP instead of gRPC, sqlite writes run on a
# real thread. gthread (ROUTER_WORKER_CLASS=gthread) stays available: ROUTER_THREADS threads, the
# pool growing as requests come; 1,024 threads held 1,000 concurrent 30 s streams in ~200 MB.
# worker_connections caps open connections (gevent: also the requests in flight): above a
# thousand streams, so that idle keep-alive connections never keep a new request out.
# gevent_worker.py: gunicorn's gevent worker, whose stop does not wait for idle keep-alive connections.
WORKER_CLASSES = {"gevent": "router_service.gevent_worker.GeventWorker", "gthread": "gthread"}


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer setting; a wrong one stops the start with its name, not a bare traceback."""
    raw = os.environ.get(name, str(default))
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise ValueError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return int(raw)


_worker_class = os.environ.get("ROUTER_WORKER_CLASS", "gevent")
if _worker_class not in WORKER_CLASSES:
    raise ValueError(f"ROUTER_WORKER_CLASS={_worker_class!r}: expected one of {', '.join(WORKER_CLASSES)}")
worker_class = WORKER_CLASSES[_worker_class]
workers = _env_int("WEB_CONCURRENCY", 1)
threads = _env_int("ROUTER_THREADS", 1024)
worker_connections = _env_int("ROUTER_WORKER_CONNECTIONS", max(4096, 2 * threads))
# Streams of long generations must not be killed by the worker timeout.
timeout = _env_int("ROUTER_WORKER_TIMEOUT", 600, minimum=0)  # 0: gunicorn's "never"
# Long streams get this long to finish when a pod is stopped (match terminationGracePeriodSeconds).
graceful_timeout = _env_int("ROUTER_GRACEFUL_TIMEOUT", 30, minimum=0)
keepalive = 75
# gunicorn's own access line per request (health probes included) is off: the router writes its
# JSON line per request anyway, and formatting the second one cost 9% of a busy worker's CPU.
# ROUTER_ACCESS_LOG="-" puts it on stdout, a path in a file.
accesslog = os.environ.get("ROUTER_ACCESS_LOG") or None
errorlog = "-"

# Several workers share /metrics through prometheus_client's multiprocess mode: the directory
# must be set before a worker imports prometheus_client, and must start empty (stale files of
# earlier processes would be summed in).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_own_dir: str | None = None
if workers > 1:
    if not os.environ.get(MULTIPROC_ENV):
        _own_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="router-metrics-")
    Path(os.environ[MULTIPROC_ENV]).mkdir(parents=True, exist_ok=True)
    for stale in Path(os.environ[MULTIPROC_ENV]).glob("*.db"):
        stale.unlink()
else:
    os.environ.pop(MULTIPROC_ENV, None)  # one process: the plain (faster) in-memory values


def child_exit(server, worker):  # noqa: ANN001, ANN201 -- gunicorn's hook signature
    """A dead worker's live gauges (in flight, breaker state) stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001, ANN201
    if _own_dir:
        shutil.rmtree(_own_dir, ignore_errors=True)
