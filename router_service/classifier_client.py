"""Client for the Triton-served router classifier: prompt text in, P(strong needed) out.

One gRPC channel per process, created once in the app factory and reused by every request
(gRPC channels are thread-safe), so the hot path does no connection set-up.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


class ClassifierUnavailable(RuntimeError):
    """Triton or the classifier model could not answer."""


class ClassifierClient:
    INPUT = "text"
    OUTPUT = "score"

    def __init__(self, grpc_url: str, model: str, version: str = "", timeout_s: float = 2.0) -> None:
        self._client = grpcclient.InferenceServerClient(url=grpc_url)
        self.model = model
        self.version = version
        self.timeout_s = timeout_s
        self._outputs = [grpcclient.InferRequestedOutput(self.OUTPUT)]

    def score(self, texts: Sequence[str]) -> list[float]:
        """Scores in [0, 1], one per text, in order."""
        batch = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        inp = grpcclient.InferInput(self.INPUT, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        try:
            result = self._client.infer(self.model, [inp], model_version=self.version, outputs=self._outputs,
                                        client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise ClassifierUnavailable(f"classifier {self.model!r} failed: {exc.message()}") from exc
        scores = result.as_numpy(self.OUTPUT)
        if scores is None:
            raise ClassifierUnavailable(f"classifier {self.model!r} returned no '{self.OUTPUT}' output")
        return [float(s) for s in scores.reshape(-1)]

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s)
                        and self._client.is_model_ready(self.model, self.version, client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    def close(self) -> None:
        self._client.close()
