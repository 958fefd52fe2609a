"""The floor under the overhead figure: the least a proxy in Flask can do (parse the request,
POST it to the upstream on a pooled urllib3 connection, return the answer), run by `make bench`
under the router's own gunicorn settings. Its overhead is what gunicorn, Flask and the second
HTTP hop cost; the router's overhead minus this floor is the router's own work (validation, the
decision, accounting, the request log, metrics)."""
import os

import urllib3
from flask import Flask, Response, request

app = Flask(__name__)
_upstream = os.environ["FLOOR_UPSTREAM"]  # the instant upstream's chat-completions URL
_pool = urllib3.PoolManager(maxsize=64)


@app.post("/v1/chat/completions")
def chat() -> Response:
    body = request.get_json()
    answer = _pool.request("POST", _upstream, json=body)
    return Response(answer.data, status=answer.status, mimetype="application/json")
