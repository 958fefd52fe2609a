"""Gunicorn settings for the router (production WSGI server; used by `make run` and the image)."""
import os

bind = f"{os.environ.get('ROUTER_HOST', '127.0.0.1')}:{os.environ.get('ROUTER_PORT', '8080')}"
# Threads, not processes, carry concurrency: requests mostly wait on Triton or an upstream API
# (both release the GIL). One process by default keeps the circuit breakers and the cost totals
# in one place; scale out with more pods (or WEB_CONCURRENCY, with per-process totals).
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
threads = int(os.environ.get("ROUTER_THREADS", "16"))
# Streams of long generations must not be killed by the worker timeout.
timeout = int(os.environ.get("ROUTER_WORKER_TIMEOUT", "600"))
# Long streams get this long to finish when a pod is stopped (match terminationGracePeriodSeconds).
graceful_timeout = int(os.environ.get("ROUTER_GRACEFUL_TIMEOUT", "30"))
keepalive = 75
accesslog = os.environ.get("ROUTER_ACCESS_LOG", "-")
errorlog = "-"
