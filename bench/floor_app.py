"""The floor under the overhead figure: the least a proxy in Flask can do (parse the request,
POST it to the upstream on the router's own pooled connections, return the answer), run by
`make bench` under the router's own gunicorn settings. Its overhead is what gunicorn, Flask and the
second HTTP hop cost; the router's overhead minus this floor is the router's own work (validation,
the decision, accounting, the request log, metrics)."""
import os

from flask import Flask, Response, request

from router_service.targets.http_client import HttpClient

app = Flask(__name__)
# The instant upstream's chat-completions URL, reached as the router reaches its targets.
_upstream = HttpClient(pool_size=64).upstream(os.environ["FLOOR_UPSTREAM"], connect_timeout_s=2.0, read_timeout_s=60.0)


@app.post("/v1/chat/completions")
def chat() -> Response:
    answer = _upstream.post("", request.get_json(), {})
    return Response(answer.data, status=answer.status, mimetype="application/json")
