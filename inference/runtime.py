"""ONNX Runtime wrapper: the only module in the project that imports onnxruntime.

Everything else talks to ORT through these functions, so provider choice, error translation and
the Open Inference Protocol datatype names live in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inference.datatypes import DATATYPE_TO_NUMPY

# ORT logs CUDA provider load failures (missing libcublas, no driver) at ERROR level on every
# session it creates; we verify the provider ourselves, so only fatal messages are worth printing.
ort.set_default_logger_severity(4)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


class RuntimeFailure(Exception):
    """An ORT error translated into a readable message.

    `kind` lets callers react without parsing text: "memory" (allocation failed), "input" (the
    feed does not fit the model), "type" (a datatype we cannot map), "load" or "run".
    """

    def __init__(self, message: str, *, kind: str = "run") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclass
class InferenceSessionHandle:
    session: ort.InferenceSession
    provider: str  # the provider that actually runs the graph, read back from the session
    providers: list[str] = field(default_factory=list)
    requested_gpu: bool = False
    # Read once: ORT builds new NodeArg objects on every get_inputs()/get_outputs() call.
    input_names: tuple[str, ...] = field(init=False)
    output_names: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.input_names = tuple(arg.name for arg in self.session.get_inputs())
        self.output_names = [arg.name for arg in self.session.get_outputs()]

    @property
    def gpu(self) -> bool:
        return self.provider != CPU_PROVIDER


# --- datatypes -------------------------------------------------------------------------------

# ORT type string element -> Open Inference Protocol (KServe v2 / Triton) datatype.
_ORT_ELEMENT_TO_DATATYPE = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "float16": "FP16",
    "float": "FP32",
    "double": "FP64",
    "string": "BYTES",
    "bfloat16": "BF16",
}

# onnx.TensorProto.DataType numbers -> datatype (kept numeric so this module needs no onnx import).
_ONNX_ELEM_TO_DATATYPE = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}


DATATYPES = tuple(DATATYPE_TO_NUMPY)


def onnx_type_to_datatype(onnx_type: str | int) -> str:
    """Map an ORT type string ("tensor(float)"), element name ("float") or onnx.TensorProto
    element type number (1) to an Open Inference Protocol datatype ("FP32")."""
    if isinstance(onnx_type, int):
        datatype = _ONNX_ELEM_TO_DATATYPE.get(onnx_type)
        if datatype is None:
            raise RuntimeFailure(f"ONNX element type {onnx_type} is not supported.", kind="type")
        return datatype
    text = onnx_type.strip()
    match = re.fullmatch(r"tensor\((\w+)\)", text)
    element = match.group(1) if match else text
    datatype = _ORT_ELEMENT_TO_DATATYPE.get(element)
    if datatype is None:
        raise RuntimeFailure(f"Type {text} is not a tensor type the inference API can carry.", kind="type")
    return datatype


def datatype_to_numpy(datatype: str) -> np.dtype:
    """Open Inference Protocol datatype -> numpy dtype. BF16 has no numpy dtype and is refused."""
    try:
        return DATATYPE_TO_NUMPY[datatype.upper()]
    except KeyError:
        raise RuntimeFailure(f"Datatype {datatype} is not supported.", kind="type") from None


def numpy_to_datatype(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    for datatype, np_type in DATATYPE_TO_NUMPY.items():
        if np_type == dtype:
            return datatype
    raise RuntimeFailure(f"numpy dtype {dtype} has no inference datatype.", kind="type")


# --- errors ----------------------------------------------------------------------------------

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE_LOCATION = re.compile(r"(?:/\S+/)?[\w.-]+\.(?:cc|cpp|h|hpp|cu):\d+\s*")
_MEMORY_MARKERS = ("failed to allocate memory", "bad_alloc", "out of memory", "cannot allocate memory")


def _strip_cpp_signature(text: str) -> str:
    """Drop a leading `ns::Class::method(args...)` that ORT puts after the source location."""
    match = re.match(r"[\w:<>~,\s*&]*::[\w~]+\s*\(", text)
    if not match:
        return text
    depth = 0
    for index in range(match.end() - 1, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                rest = text[index + 1 :]
                rest = re.sub(r"^\s*(?:const\s*)?", "", rest)
                return rest.lstrip(" :")
    return text


def error_message_clean(raw: str) -> str:
    """Turn an ORT exception text into something a publisher can read."""
    text = " ".join(str(raw).split())
    text = _ORT_PREFIX.sub("", text)
    # Source locations can appear at the start or after "Error: " in nested messages.
    while True:
        match = _SOURCE_LOCATION.search(text)
        if not match:
            break
        tail = _strip_cpp_signature(text[match.end() :])
        text = text[: match.start()] + tail
    ir = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if ir:
        return (
            f"The model uses ONNX IR version {ir.group(1)}, but the inference runtime supports up to "
            f"IR version {ir.group(2)}. Re-export with an older onnx package or set model.ir_version "
            f"to {ir.group(2)} or lower."
        )
    return text.strip() or "ONNX Runtime failed without a message."


def _failure(exc: BaseException, *, kind: str) -> RuntimeFailure:
    if isinstance(exc, RuntimeFailure):
        return exc
    if isinstance(exc, MemoryError):
        return RuntimeFailure("Memory allocation failed.", kind="memory")
    message = error_message_clean(str(exc))
    if any(marker in message.lower() for marker in _MEMORY_MARKERS):
        kind = "memory"
    return RuntimeFailure(message, kind=kind)


# --- sessions --------------------------------------------------------------------------------


def available_providers() -> list[str]:
    """Providers this ORT build knows about. A listed CUDA provider may still fail to load
    (no driver, wrong CUDA major), which is why session_create checks what a session really got."""
    return list(ort.get_available_providers())


def session_create(
    *,
    model_bytes_or_path: bytes | str | Path,
    prefer_gpu: bool = True,
    intra_op_threads: int | None = None,
) -> InferenceSessionHandle:
    """Create an ORT session, on CUDA when this build has it and it actually initialises, else CPU.

    Custom-op libraries are never registered: a model can only use operators built into ORT.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    requested_gpu = prefer_gpu and CUDA_PROVIDER in ort.get_available_providers()
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if requested_gpu else [CPU_PROVIDER]
    source = str(model_bytes_or_path) if isinstance(model_bytes_or_path, Path) else model_bytes_or_path
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind exception classes and RuntimeError
        raise _failure(exc, kind="load") from exc
    # ORT falls back to CPU silently when the CUDA provider cannot be created; report the truth.
    actual = list(session.get_providers())
    return InferenceSessionHandle(
        session=session,
        provider=actual[0] if actual else CPU_PROVIDER,
        providers=actual,
        requested_gpu=requested_gpu,
    )


def _raw_session(session: InferenceSessionHandle | ort.InferenceSession) -> ort.InferenceSession:
    return session.session if isinstance(session, InferenceSessionHandle) else session


def _dim(value: Any) -> int:
    # ORT reports symbolic dims as strings and unknown ones as None; both are dynamic.
    return value if isinstance(value, int) and value >= 0 else -1


def _describe(node_arg: Any) -> dict:
    return {
        "name": node_arg.name,
        "datatype": onnx_type_to_datatype(node_arg.type),
        "shape": [_dim(d) for d in (node_arg.shape or [])],
    }


def session_signature(session: InferenceSessionHandle | ort.InferenceSession) -> dict:
    """{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]} with OIP datatypes and -1
    for dynamic dims. Raises RuntimeFailure(kind="type") for non-tensor inputs/outputs
    (sequences, maps), which the inference API cannot carry."""
    raw = _raw_session(session)
    return {
        "inputs": [_describe(arg) for arg in raw.get_inputs()],
        "outputs": [_describe(arg) for arg in raw.get_outputs()],
    }


def session_io_types(session: InferenceSessionHandle | ort.InferenceSession) -> dict[str, dict[str, str]]:
    """Raw ORT type strings per input/output name, e.g. {"outputs": {"probs": "seq(map(...))"}}."""
    raw = _raw_session(session)
    return {
        "inputs": {arg.name: arg.type for arg in raw.get_inputs()},
        "outputs": {arg.name: arg.type for arg in raw.get_outputs()},
    }


def session_run(
    session: InferenceSessionHandle,
    inputs: dict[str, np.ndarray],
    output_names: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run the model. Input names are checked first so the error names what is wrong."""
    raw, expected = session.session, session.input_names
    if len(inputs) != len(expected) or not all(name in inputs for name in expected):
        unknown = sorted(set(inputs) - set(expected))
        missing = [name for name in expected if name not in inputs]
        parts = []
        if unknown:
            parts.append("unknown input " + ", ".join(f"'{name}'" for name in unknown))
        if missing:
            parts.append("missing input " + ", ".join(f"'{name}'" for name in missing))
        wanted = ", ".join(f"'{name}'" for name in expected) or "no inputs"
        raise RuntimeFailure(f"{'; '.join(parts).capitalize()}. The model expects: {wanted}.", kind="input")
    names = list(output_names) if output_names else session.output_names
    try:
        values = raw.run(names, inputs)
    except Exception as exc:
        text = str(exc)
        kind = "input" if "INVALID_ARGUMENT" in text else "run"
        raise _failure(exc, kind=kind) from exc
    return dict(zip(names, values, strict=True))
