"""Open Inference Protocol (KServe v2 / Triton) datatypes and their numpy dtypes: one map for the wire codec
(inference.protocol) and the ONNX Runtime wrapper (inference.runtime). numpy only, so either side can import it
without pulling in the other (ORT, or Django)."""

from __future__ import annotations

import numpy as np

# BF16 has no numpy dtype, so it is not here (the runtime refuses it). BYTES: ORT takes string tensors as object
# arrays of str.
DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
