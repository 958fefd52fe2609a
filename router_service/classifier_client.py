"""The Classifier (classifier.py) served by Triton: prompt text in, P(strong needed) out.

One client per process, created once in the app factory and reused by every request, so the hot
path does no connection set-up: a gRPC channel (thread-safe) under gunicorn's thread workers; under
its gevent worker Triton's HTTP endpoint, through tritonclient's gevent-native HTTP client with a
pool of connections (cooperative.py says why not gRPC there).

Besides ``score`` the exported model can return ``strong_share``: the share of its calibration
prompts that score at or above this prompt. Sending a prompt to the strong model iff its
strong_share <= s sends about s of the traffic there, with no threshold kept in the router,
so the calibration always belongs to the model version that scored the prompt.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from http.client import HTTPException
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .classifier import Classification, ClassifierUnavailable

# gRPC reports every failure as InferenceServerException; the HTTP client lets the socket's own
# errors (refused, reset, timed out: OSError) and unparsable answers (HTTPException) through.
_FAILURES = (InferenceServerException, OSError, HTTPException)


def _reason(exc: Exception) -> str:
    return str(exc.message()) if isinstance(exc, InferenceServerException) else f"{type(exc).__name__}: {exc}"


class ClassifierClient:
    INPUT = "text"
    SCORE = "score"
    SHARE = "strong_share"
    CONFIDENCE = "confidence"
    CALIBRATION = "calibration"
    CALIBRATION_SHARES = "calibration_shares"  # the shares the thresholds are for (the model's own grid)
    QUALITY = "calibration_quality"  # the version's quality/cost curve on that grid

    def __init__(self, url: str, model: str, version: str = "", timeout_s: float = 2.0,
                 protocol: Literal["grpc", "http"] = "grpc", connections: int = 1024) -> None:
        """``url``: Triton's gRPC address (host:port) or, with ``protocol="http"``, its HTTP URL;
        ``connections``: the most the HTTP client opens (only as requests need them). A request
        beyond it waits for one with no deadline, so it is as large as the requests a worker holds
        at once: then the timeout alone bounds a classification, as gRPC's deadline does, and an
        overloaded classifier fails open after ``timeout_s`` instead of queueing."""
        self._client: Any
        if protocol == "http":
            parts = urlsplit(url if "://" in url else f"http://{url}")
            self._api: Any = httpclient
            self._client = httpclient.InferenceServerClient(
                url=parts.netloc, ssl=parts.scheme == "https", concurrency=connections,
                connection_timeout=timeout_s, network_timeout=timeout_s)
            self._timeout: dict[str, Any] = {}  # the HTTP client's timeouts are the connection's
            self._as_json: dict[str, Any] = {}  # its metadata is JSON already
        else:
            self._api = grpcclient
            self._client = grpcclient.InferenceServerClient(url=url)
            self._timeout = {"client_timeout": timeout_s}
            self._as_json = {"as_json": True}
        self.model = model
        self.version = version
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._outputs: list[Any] | None = None

    def _requested_outputs(self) -> list[Any]:
        """SCORE, plus SHARE and CONFIDENCE when the served model has them (read once from its metadata)."""
        if self._outputs is None:
            with self._lock:
                meta = self._client.get_model_metadata(self.model, self.version, **self._as_json, **self._timeout)
                names = {o["name"] for o in meta.get("outputs", [])}
                self._outputs = [self._api.InferRequestedOutput(n) for n in (self.SCORE, self.SHARE, self.CONFIDENCE)
                                 if n in names]
        return self._outputs

    def _drop_newer_outputs(self, outputs: list[Any]) -> bool:
        """Stop asking for the outputs older versions lack; False when there were none to drop."""
        older = [o for o in outputs if o.name() != self.CONFIDENCE]
        if len(older) == len(outputs):
            return False
        self._outputs = older
        return True

    def _infer(self, texts: Sequence[str], outputs: list[Any],  # noqa: ANN202
               request_id: str = "", version: str | None = None):
        batch = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        inp = self._api.InferInput(self.INPUT, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        return self._client.infer(self.model, [inp], model_version=self.version if version is None else version,
                                  outputs=outputs, request_id=request_id, **self._timeout)

    def classify(self, texts: Sequence[str], request_id: str = "", version: str | None = None) -> list[Classification]:
        """``version``: the model version to ask (a release's serving or candidate one); None: the
        configured one."""
        try:
            outputs = self._requested_outputs()
            try:
                result = self._infer(texts, outputs, request_id, version)
            except InferenceServerException as exc:
                if "unknown outputs" not in str(exc.message()) or not self._drop_newer_outputs(outputs):
                    raise
                # A version exported before `confidence` existed, served with today's config.pbtxt
                # (e.g. mid-upgrade): ask it for what its model.py knows.
                result = self._infer(texts, self._requested_outputs(), request_id, version)
        except _FAILURES as exc:
            self._outputs = None  # the model may have been reloaded with other outputs
            raise ClassifierUnavailable(f"classifier {self.model!r} failed: {_reason(exc)}") from exc
        scores = result.as_numpy(self.SCORE)
        if scores is None:
            raise ClassifierUnavailable(f"classifier {self.model!r} returned no '{self.SCORE}' output")
        response = result.get_response()
        version = (response.get("model_version") if isinstance(response, dict) else response.model_version) or None
        return [Classification(float(s), share, confidence, version) for s, share, confidence in
                zip(scores.reshape(-1), self._optional(result, self.SHARE, len(texts)),
                    self._optional(result, self.CONFIDENCE, len(texts)))]

    @staticmethod
    def _optional(result, name: str, n: int) -> list[float | None]:  # noqa: ANN001
        """A per-prompt output the served version may lack (absent, or NaN: unknown) as floats or None."""
        values = result.as_numpy(name)
        if values is None:
            return [None] * n
        return [None if np.isnan(v) else float(v) for v in values.reshape(-1)]

    def score(self, texts: Sequence[str]) -> list[float]:
        """Scores in [0, 1], one per text, in order."""
        return [c.score for c in self.classify(texts)]

    def calibration(self, version: str | None = None) -> dict[str, float] | None:
        """The version's score threshold per strong share ("0.1" -> score), if it has a calibration."""
        try:
            if self.SHARE not in {o.name() for o in self._requested_outputs()}:
                return None
            result = self._infer([""], [self._api.InferRequestedOutput(n)
                                        for n in (self.CALIBRATION, self.CALIBRATION_SHARES)], version=version)
        except _FAILURES:
            return None
        values, shares = result.as_numpy(self.CALIBRATION), result.as_numpy(self.CALIBRATION_SHARES)
        if values is None or shares is None:
            return None
        return {f"{float(share):.2g}": round(float(v), 6) for share, v in zip(shares.reshape(-1), values.reshape(-1))}

    def quality(self, version: str | None = None) -> dict[str, float] | None:
        """The version's quality/cost curve ("0.1" -> quality as a fraction of the strong model's,
        on its validation prompts), or None when the version does not carry one."""
        try:
            result = self._infer([""], [self._api.InferRequestedOutput(n)
                                        for n in (self.QUALITY, self.CALIBRATION_SHARES)], version=version)
        except _FAILURES:  # older versions' model.py do not know the output
            return None
        values, shares = result.as_numpy(self.QUALITY), result.as_numpy(self.CALIBRATION_SHARES)
        if values is None or shares is None or np.isnan(values).any():
            return None
        return {f"{float(share):.2g}": round(float(v), 6) for share, v in zip(shares.reshape(-1), values.reshape(-1))}

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(**self._timeout)
                        and self._client.is_model_ready(self.model, self.version, **self._timeout))
        except _FAILURES:
            return False

    def versions(self) -> list[str]:
        """The versions Triton has loaded and ready, ascending; raises ClassifierUnavailable."""
        try:
            meta = self._client.get_model_metadata(self.model, "", **self._as_json, **self._timeout)
            ready = [v for v in meta.get("versions", []) if self._client.is_model_ready(self.model, v, **self._timeout)]
        except _FAILURES as exc:
            raise ClassifierUnavailable(f"classifier {self.model!r}: {_reason(exc)}") from exc
        return sorted(ready, key=int)

    def close(self) -> None:
        self._client.close()
