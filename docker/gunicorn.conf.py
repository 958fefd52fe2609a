"""gunicorn settings for the router image; every value can be overridden from the environment.

GUNICORN_BIND (0.0.0.0:8080), GUNICORN_WORKERS (2), GUNICORN_THREADS (8),
GUNICORN_TIMEOUT (180 s: LLM generations are slow; also the graceful-shutdown window),
GUNICORN_KEEPALIVE (5 s), GUNICORN_LOG_LEVEL (info).
"""
import os
import tempfile

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# Threads per worker (gthread): requests mostly wait on Triton or an upstream API.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "180"))
graceful_timeout = timeout
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# Heartbeat files: the root filesystem is read-only under the chart, /tmp is an emptyDir.
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR", tempfile.gettempdir())
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
accesslog = "-"
errorlog = "-"
# Behind a Service / Ingress: trust X-Forwarded-* from any proxy address.
forwarded_allow_ips = "*"
