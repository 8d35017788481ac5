"""Errors of the model host and dispatch, shared by the disk cache, the host, the batcher and the API."""

from __future__ import annotations

from marketplace.errors import ApplicationError


class ModelUnavailable(ApplicationError):
    """The model cannot serve now (storage down on a first load, worker lost, deadline passed, bad artifact).

    503 with ``retry_after`` seconds; the caller is never charged for it.
    """

    status = 503
    code = "model_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = max(1, int(retry_after))


class InferenceFailed(ApplicationError):
    """ONNX Runtime rejected input that passed the signature checks (422)."""

    status = 422
    code = "inference_failed"
