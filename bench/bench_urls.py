"""The product's URLs plus ``POST /bench/session-run``: a minimal Django view that only runs the ONNX Runtime session
(JSON in, JSON out), the baseline (b) of bench/inference.py. Routed only by bench/settings.py, never in production.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import numpy as np
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from marketplace.urls import handler404, handler500  # noqa: F401
from marketplace.urls import urlpatterns as product_urlpatterns

_session: Any = None
_session_lock = threading.Lock()


def _session_get() -> Any:
    """The session, made once per process like the host makes it (same provider choice and thread options)."""
    global _session
    if _session is None:
        from inference import runtime

        with _session_lock:
            if _session is None:
                _session = runtime.session_create(
                    model_bytes_or_path=os.environ["BENCH_MODEL_PATH"],
                    prefer_gpu=settings.INFERENCE_PREFER_GPU,
                    intra_op_threads=settings.INFERENCE_INTRA_OP_THREADS,
                ).session
    return _session


@csrf_exempt
def session_run(request: HttpRequest) -> HttpResponse:
    """Decode the same KServe V2 JSON request, run the session, encode the outputs: nothing else."""
    session = _session_get()
    payload = json.loads(request.body)
    feeds = {
        tensor["name"]: np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        for tensor in payload["inputs"]
    }
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, feeds)
    outputs = [
        {"name": name, "datatype": "FP32", "shape": list(value.shape), "data": value.ravel().tolist()}
        for name, value in zip(names, values, strict=True)
    ]
    return HttpResponse(json.dumps({"outputs": outputs}), content_type="application/json")


# Right after the product's /v2 routes (the first ones), so both resolve at the same cost.
_v2 = [i for i, entry in enumerate(product_urlpatterns) if str(getattr(entry, "pattern", "")).startswith("v2")]
_v2_end = max(_v2) + 1
urlpatterns = [*product_urlpatterns[:_v2_end], path("bench/session-run", session_run), *product_urlpatterns[_v2_end:]]
