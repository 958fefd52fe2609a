"""The playground page, ``GET /ui``: a prompt box that shows the router's decision as you type,
answers streamed or side by side from every target of a policy, and the traffic's cost and
savings against the served model's quality/cost curve. Static files only (no build step); the
page talks to the router's public API like any client, with the key the user enters."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

STATIC = Path(__file__).with_name("playground")

bp = Blueprint("playground", __name__, static_folder=str(STATIC), static_url_path="/ui/static")

# The page runs only its own script and talks only to this origin: a model answer that slipped
# into the DOM as HTML still could not run script or send anything elsewhere.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


@bp.get("/ui")
def page() -> Response:
    resp = bp.send_static_file("index.html")
    resp.headers.update(_SECURITY_HEADERS)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.after_request
def _harden(resp: Response) -> Response:
    """Every response of the blueprint, the page and its assets: no content-type sniffing."""
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp
