"""Validation of an uploaded ONNX artifact, producing the report the publisher sees.

The calling worker only checks size and sha256 (streaming, while copying the file into a private
directory). Everything that parses or runs the publisher's bytes happens in a sandboxed child
process (see sandbox.py), because onnx/ORT are C++ code fed with hostile input: a crash, a huge
allocation or an endless loop must cost the child, never the worker.

Pure helpers used by the child (format_sniff, external_data_problem, operator_problem,
model_summary) are plain functions over bytes / ModelProto so they are easy to test.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inference import sandbox

STEPS: tuple[tuple[str, str], ...] = (
    ("size", "File size"),
    ("sha256", "Checksum (SHA-256)"),
    ("format", "ONNX format"),
    ("external_data", "Single self-contained file"),
    ("operators", "Standard operators only"),
    ("checker", "ONNX checker"),
    ("load", "Loads in ONNX Runtime"),
    ("signature", "Inputs and outputs"),
    ("smoke", "Test inference"),
    ("latency", "Latency"),
)
STEP_LABELS = dict(STEPS)
SANDBOX_STEP_KEYS = tuple(key for key, _ in STEPS[2:])

ALLOWED_OP_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MODEL_FILENAME = "model.onnx"
LATENCY_RUNS = 30
LATENCY_BUDGET_S = 10.0
LATENCY_BATCH = 8
_CHUNK = 1024 * 1024
_RESAVE_HINT = "Re-save it as a single file with onnx.save_model(model, 'model.onnx', save_as_external_data=False)."


class StepFailed(Exception):
    """A check did not pass; the message is what the publisher reads."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _step(key: str, status: str, detail: str, duration_ms: float) -> dict:
    return {"key": key, "label": STEP_LABELS[key], "status": status, "detail": detail, "duration_ms": duration_ms}


class _Report:
    """Collects steps in order, reports each through on_step, and skips the rest after a failure."""

    def __init__(self, on_step: Callable[[dict], None] | None) -> None:
        self.on_step = on_step
        self.steps: list[dict] = []
        self.reason: str | None = None
        self.sha256: str | None = None
        self.signature: dict | None = None
        self.metrics: dict | None = None
        self.model: dict | None = None
        self.smoke: dict | None = None

    def add(self, step: dict) -> None:
        if step["key"] not in STEP_LABELS or any(s["key"] == step["key"] for s in self.steps):
            return  # ignore anything malformed or repeated from the child
        step = _step(step["key"], step["status"], str(step.get("detail", "")), float(step.get("duration_ms", 0.0)))
        self.steps.append(step)
        if step["status"] == "failed" and self.reason is None:
            self.reason = step["detail"]
        if self.on_step is not None:
            self.on_step(step)

    def failed(self) -> bool:
        return self.reason is not None

    def next_key(self) -> str | None:
        done = {s["key"] for s in self.steps}
        return next((key for key, _ in STEPS if key not in done), None)

    def finish(self) -> dict:
        for key, _ in STEPS:
            if not any(s["key"] == key for s in self.steps):
                self.add(_step(key, "skipped", "Not run because an earlier check failed.", 0.0))
        return {
            "ok": self.reason is None,
            "reason": self.reason,
            "sha256": self.sha256,
            "steps": self.steps,
            "signature": self.signature,
            "metrics": self.metrics,
            "model": self.model,
            "smoke": self.smoke,
        }


def _size_human(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"


def artifact_validate(
    *,
    path: Path,
    expected_size: int | None,
    expected_sha256: str | None,
    max_bytes: int,
    sample_input: dict | None = None,
    memory_limit_mb: int = 2048,
    timeout_s: float = 120,
    on_step: Callable[[dict], None] | None = None,
    work_dir: Path | str | None = None,
) -> dict:
    """Validate the ONNX file at `path`; anything the file does is reported, never raised.

    Returns {"ok", "reason" (the first failed step's detail, or None), "sha256", "steps": [{"key",
    "label", "status": passed|failed|skipped, "detail", "duration_ms"}] in STEPS order, "signature",
    "metrics", "model", "smoke"} (the last four None when not reached). on_step gets each step dict
    as it finishes, skipped ones included. `memory_limit_mb` is the address space the model may use
    on top of the runtime's own footprint; `timeout_s` bounds the whole sandboxed part.
    `work_dir` is where the private per-run temp dir is made (default: the system temp dir).
    Raises sandbox.SandboxError only when the sandbox cannot be started (infrastructure).
    """
    path = Path(path)
    report = _Report(on_step)
    private_dir = Path(tempfile.mkdtemp(prefix="mp-validate-", dir=work_dir))
    try:
        size = _size_step(report, path=path, expected_size=expected_size, max_bytes=max_bytes)
        if size is None:
            return report.finish()
        copy_path = private_dir / MODEL_FILENAME
        if not _sha256_step(report, path=path, copy_to=copy_path, expected_sha256=expected_sha256, size=size):
            return report.finish()
        _sandbox_steps(
            report,
            private_dir=private_dir,
            source_dir=path.parent,
            sample_input=sample_input,
            memory_limit_mb=memory_limit_mb,
            timeout_s=timeout_s,
        )
        return report.finish()
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)


def _size_step(report: _Report, *, path: Path, expected_size: int | None, max_bytes: int) -> int | None:
    started = time.perf_counter()
    try:
        size = path.stat().st_size
    except OSError:
        report.add(_step("size", "failed", "The uploaded file could not be found.", _ms(time.perf_counter() - started)))
        return None
    problem = None
    if size == 0:
        problem = "The file is empty."
    elif size > max_bytes:
        problem = f"The file is {_size_human(size)}, over the {_size_human(max_bytes)} limit for a model file."
    elif expected_size is not None and size != expected_size:
        problem = (
            f"The stored file is {size} bytes but the upload declared {expected_size} bytes. "
            "The upload was probably incomplete; upload the file again."
        )
    duration = _ms(time.perf_counter() - started)
    if problem:
        report.add(_step("size", "failed", problem, duration))
        return None
    human = _size_human(size)
    detail = f"{human}." if human.endswith("bytes") else f"{human} ({size} bytes)."
    report.add(_step("size", "passed", f"{detail[:-1]}, within the {_size_human(max_bytes)} limit.", duration))
    return size


def _sha256_step(report: _Report, *, path: Path, copy_to: Path, expected_sha256: str | None, size: int) -> bool:
    """Hash while copying, so the sandbox checks exactly the bytes whose hash we verified."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    copied = 0
    with path.open("rb") as source, copy_to.open("wb") as target:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            target.write(chunk)
            copied += len(chunk)
    os.chmod(copy_to, 0o400)
    actual = digest.hexdigest()
    report.sha256 = actual
    duration = _ms(time.perf_counter() - started)
    if copied != size:
        report.add(_step("sha256", "failed", "The file changed while it was being checked. Try again.", duration))
        return False
    if expected_sha256 is not None and actual != expected_sha256.strip().lower():
        detail = (
            f"The file's SHA-256 is {actual}, but the upload declared {expected_sha256.strip().lower()}. "
            "The file was corrupted or replaced in transit; upload it again."
        )
        report.add(_step("sha256", "failed", detail, duration))
        return False
    detail = f"SHA-256 {actual}" + (
        " matches the declared checksum." if expected_sha256 else " (no checksum declared)."
    )
    report.add(_step("sha256", "passed", detail, duration))
    return True


def _sandbox_steps(
    report: _Report,
    *,
    private_dir: Path,
    source_dir: Path,
    sample_input: dict | None,
    memory_limit_mb: int,
    timeout_s: float,
) -> None:
    started = time.monotonic()
    last_step_at = [started]

    def on_message(message: dict) -> None:
        kind = message.get("type")
        if kind == "step" and isinstance(message.get("step"), dict):
            report.add(message["step"])
            last_step_at[0] = time.monotonic()
        elif kind == "result":
            report.signature = message.get("signature")
            report.metrics = message.get("metrics")
            report.model = message.get("model")
            report.smoke = message.get("smoke")

    job = {
        "model_path": str(private_dir / MODEL_FILENAME),
        "source_dir": str(source_dir),
        "sample_input": sample_input,
        "memory_limit_mb": memory_limit_mb,
        "timeout_s": timeout_s,
    }
    outcome = sandbox.sandbox_run(
        job=job,
        work_dir=private_dir,
        memory_limit_mb=memory_limit_mb,
        timeout_s=timeout_s,
        on_message=on_message,
    )
    if report.failed():
        return
    pending = report.next_key()
    if pending is None:
        return
    # The child stopped before finishing: blame the step it was in.
    reason = outcome.failure_reason() or "Validation stopped unexpectedly."
    report.add(_step(pending, "failed", reason, _ms(time.monotonic() - last_step_at[0])))


# --- checks run inside the sandbox -----------------------------------------------------------------


def format_sniff(head: bytes, *, size: int | None = None, data: bytes | None = None) -> str | None:
    """Name a known non-ONNX format from the file's first bytes, or None if it could be ONNX."""
    if not head:
        return "The file is empty."
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "The file is a Python pickle, not an ONNX model. Export your model with torch.onnx.export or skl2onnx."
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip_reason(data)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "The file is an HDF5 file (for example a Keras .h5 model), not an ONNX model. Convert it with tf2onnx."
    if head.startswith(b"GGUF"):
        return "The file is a GGUF (llama.cpp) model, not an ONNX model."
    if head[4:8] == b"TFL3":
        return "The file is a TensorFlow Lite model, not an ONNX model. Convert it with tf2onnx."
    if head.startswith(b"\x93NUMPY"):
        return "The file is a NumPy array (.npy), not an ONNX model."
    if head.startswith(b"\x1f\x8b"):
        return "The file is gzip-compressed. Decompress it and upload the .onnx file itself."
    if len(head) >= 10:
        header_len = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 2 <= header_len <= (size if size is not None else 1 << 40):
            return (
                "The file is a safetensors weights file, not an ONNX model: it holds weights but no graph. "
                "Export the full model with torch.onnx.export."
            )
    text = None if _looks_like_onnx(head) else _as_text(head)
    if text is not None:
        lowered = text.lstrip().lower()
        if lowered.startswith(("<!doctype html", "<html")) or "<html" in lowered[:1024]:
            return (
                "The file is an HTML page, not an ONNX model. Perhaps an error or login page was saved "
                "instead of the model; download the model file again."
            )
        return "The file is text, not an ONNX model. ONNX models are binary protobuf files."
    return None


def _as_text(head: bytes) -> str | None:
    sample = head[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # allow a multi-byte character cut at the end
            return None
        text = sample[: exc.start].decode("utf-8")
    if not text:
        return None
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\r\n\t")
    return text if printable / len(text) > 0.95 else None


def _zip_reason(data: bytes | None) -> str:
    names: list[str] = []
    if data is not None:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = archive.namelist()[:10000]
        except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError):
            names = []
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return (
            "The file is a PyTorch checkpoint (torch.save), not an ONNX model. "
            "Export your model with torch.onnx.export."
        )
    if "config.json" in names and any(name.endswith(".weights.h5") for name in names):
        return "The file is a Keras model archive (.keras), not an ONNX model. Convert it with tf2onnx."
    onnx_members = [name for name in names if name.lower().endswith(".onnx")]
    if onnx_members:
        return (
            f"The file is a zip archive (containing '{onnx_members[0]}'), not an ONNX model. "
            "Upload the .onnx file itself, not an archive."
        )
    return "The file is a zip archive, not an ONNX model. Upload a single .onnx file."


def _looks_like_onnx(head: bytes) -> bool:
    # An ONNX ModelProto serialised by onnx/torch/skl2onnx starts with field 1 (ir_version) as a varint.
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 20


def model_parse(data: bytes) -> Any:
    """bytes -> onnx.ModelProto, or StepFailed with a publisher-readable reason."""
    import onnx
    from google.protobuf.message import DecodeError

    head = data[:4096]
    known = format_sniff(head, size=len(data), data=data)
    if known:
        raise StepFailed(known)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        if _looks_like_onnx(head):
            raise StepFailed(
                "The file starts like an ONNX model but is incomplete or corrupted (the data ends in the "
                "middle of a record). The upload may have been cut off; upload the file again."
            ) from exc
        raise StepFailed("The file is not an ONNX model: it could not be read as an ONNX protobuf.") from exc
    if proto.ir_version <= 0 or not proto.HasField("graph") or not (proto.graph.node or proto.graph.output):
        raise StepFailed("The file is not an ONNX model: it has no ONNX graph (no IR version, nodes or outputs).")
    return proto


def _subgraphs(node: Any) -> Iterator[Any]:
    import onnx

    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _graph_nodes(graph: Any, where: str) -> Iterator[tuple[Any, str]]:
    """Every node of a graph and its nested subgraphs (If/Loop/Scan bodies), with a location."""
    for node in graph.node:
        yield node, where
        for sub in _subgraphs(node):
            yield from _graph_nodes(sub, f"{where} > subgraph of {node.op_type} '{node.name or node.output[0]}'")


def _all_nodes(proto: Any) -> Iterator[tuple[Any, str]]:
    yield from _graph_nodes(proto.graph, "main graph")
    for function in proto.functions:
        for node in function.node:
            yield node, f"function '{function.domain}:{function.name}'"
            for sub in _subgraphs(node):
                yield from _graph_nodes(sub, f"function '{function.domain}:{function.name}' > subgraph")


def _graphs(proto: Any) -> Iterator[Any]:
    def walk(graph: Any) -> Iterator[Any]:
        yield graph
        for node in graph.node:
            for sub in _subgraphs(node):
                yield from walk(sub)

    yield from walk(proto.graph)
    for function in proto.functions:
        for node in function.node:
            for sub in _subgraphs(node):
                yield from walk(sub)


def _all_tensors(proto: Any) -> Iterator[Any]:
    """Every TensorProto that can carry data: initializers, sparse initializers, Constant values."""
    import onnx

    for graph in _graphs(proto):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    for node, _ in _all_nodes(proto):
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSORS:
                for sparse in attribute.sparse_tensors:
                    yield sparse.values
                    yield sparse.indices


def external_data_problem(proto: Any, *, source_dir: Path | None = None) -> str | None:
    """A marketplace artifact is one file: any tensor stored outside it is refused. The reason says
    whether the location is absolute, escapes with '..', is a symlink next to the upload, or just
    another file. Only lstat is used on source_dir; nothing is ever opened."""
    import onnx

    for tensor in _all_tensors(proto):
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if tensor.data_location != onnx.TensorProto.EXTERNAL and not entries:
            continue
        name = tensor.name or "(unnamed)"
        location = entries.get("location", "")
        if not location:
            return f"Tensor '{name}' says its data is stored in an external file but gives no location. {_RESAVE_HINT}"
        if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
            return (
                f"Tensor '{name}' reads its data from the absolute path '{location}'. A model must be one "
                f"self-contained .onnx file, and absolute paths would read files on our servers. {_RESAVE_HINT}"
            )
        parts = [part for part in re.split(r"[\\/]+", location) if part not in ("", ".")]
        if ".." in parts:
            return (
                f"Tensor '{name}' reads its data from '{location}', which escapes the model's folder "
                f"with '..'. A model must be one self-contained .onnx file. {_RESAVE_HINT}"
            )
        if source_dir is not None and _path_has_symlink(Path(source_dir), parts):
            return (
                f"Tensor '{name}' reads its data from '{location}', which is a symbolic link to another "
                f"file. A model must be one self-contained .onnx file. {_RESAVE_HINT}"
            )
        return (
            f"Tensor '{name}' stores its data in a separate file '{location}'. A model must be one "
            f"self-contained .onnx file (so it has to be under 2 GB). {_RESAVE_HINT}"
        )
    return None


def _path_has_symlink(base: Path, parts: list[str]) -> bool:
    current = base
    for part in parts:
        current = current / part
        try:
            if current.is_symlink():
                return True
        except OSError:
            return False
    return False


def operator_problem(proto: Any) -> str | None:
    """Only operators built into ONNX ("", ai.onnx) and ONNX-ML are allowed, in the main graph,
    nested subgraphs and model-local functions. Calls to a model-local function are fine; its body
    is checked like the graph."""
    local_functions = {(function.domain, function.name) for function in proto.functions}
    for node, where in _all_nodes(proto):
        if node.domain in ALLOWED_OP_DOMAINS or (node.domain, node.op_type) in local_functions:
            continue
        return (
            f"The model uses operator '{node.op_type}' from the custom domain '{node.domain}' ({where}). "
            "Only standard ONNX and ONNX-ML operators are allowed; custom operators need native code "
            "we do not run. Re-export using standard operators only."
        )
    return None


def _tensor_nbytes(tensor: Any) -> int:
    import onnx

    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(item) for item in tensor.string_data)
    count = math.prod(tensor.dims) if tensor.dims else 1
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return len(tensor.raw_data)


def model_summary(proto: Any) -> dict:
    opsets: dict[str, int] = {}
    for opset in proto.opset_import:
        domain = opset.domain or "ai.onnx"
        opsets[domain] = max(opsets.get(domain, 0), int(opset.version))
    return {
        "ir_version": int(proto.ir_version),
        "opsets": opsets,
        "producer_name": proto.producer_name,
        "producer_version": proto.producer_version,
        "node_count": sum(1 for _ in _graph_nodes(proto.graph, "")),
        "parameter_bytes": sum(_tensor_nbytes(tensor) for tensor in _all_tensors(proto))
        + sum(_attribute_nbytes(node) for node, _ in _all_nodes(proto)),
    }


def _attribute_nbytes(node: Any) -> int:
    # ONNX-ML operators (linear models, tree ensembles) keep their parameters in list attributes.
    import onnx

    total = 0
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.FLOATS:
            total += 4 * len(attribute.floats)
        elif attribute.type == onnx.AttributeProto.INTS:
            total += 8 * len(attribute.ints)
        elif attribute.type == onnx.AttributeProto.STRINGS:
            total += sum(len(item) for item in attribute.strings)
    return total


def checker_problem(proto: Any) -> str | None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = " ".join(str(exc).split())[:600]
        return f"The ONNX checker rejected the model: {first}"
    return None


def _signature_problem(handle: Any) -> str | None:
    from inference import runtime

    io_types = runtime.session_io_types(handle)
    for direction, singular in (("inputs", "Input"), ("outputs", "Output")):
        for name, type_string in io_types[direction].items():
            try:
                datatype = runtime.onnx_type_to_datatype(type_string)
            except runtime.RuntimeFailure:
                hint = ""
                if "map(" in type_string:
                    hint = (
                        " For scikit-learn classifiers convert with "
                        "options={id(model): {'zipmap': False}} so probabilities are a tensor."
                    )
                return (
                    f"{singular} '{name}' has type {type_string}, which the inference API cannot carry: "
                    f"it only exchanges tensors.{hint}"
                )
            if datatype not in runtime.DATATYPES:
                return f"{singular} '{name}' has datatype {datatype}, which the inference API does not support."
    return None


def _fits(shape: list[int], expected: list[int]) -> bool:
    return len(shape) == len(expected) and all(e < 0 or s == e for s, e in zip(shape, expected, strict=True))


def _sample_feeds(signature: dict, sample_input: Any) -> dict:
    import numpy as np

    from inference import runtime

    if not isinstance(sample_input, dict):
        raise StepFailed("The sample input must be an object mapping input names to nested lists of values.")
    specs = {spec["name"]: spec for spec in signature["inputs"]}
    unknown = [name for name in sample_input if name not in specs]
    missing = [name for name in specs if name not in sample_input]
    expected = ", ".join(f"'{name}'" for name in specs) or "no inputs"
    if unknown:
        names = ", ".join(f"'{name}'" for name in unknown)
        raise StepFailed(f"The sample input has input {names}, which the model does not have. It expects {expected}.")
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        raise StepFailed(f"The sample input is missing input {names}. The model expects {expected}.")
    feeds = {}
    for name, value in sample_input.items():
        spec = specs[name]
        dtype = runtime.datatype_to_numpy(spec["datatype"])
        shape = None
        if isinstance(value, dict) and "data" in value:  # Open Inference Protocol style {"shape", "data"}
            shape, value = value.get("shape"), value["data"]
        try:
            if spec["datatype"] == "BYTES":
                array = np.array(value, dtype=object)
                array = np.vectorize(str, otypes=[object])(array) if array.size else array
            else:
                array = np.asarray(value, dtype=dtype)
            if shape is not None:
                array = array.reshape([int(d) for d in shape])
        except (ValueError, TypeError, OverflowError) as exc:
            raise StepFailed(f"Sample input '{name}' could not be read as {spec['datatype']} values: {exc}.") from exc
        if not _fits(list(array.shape), spec["shape"]):
            raise StepFailed(
                f"Sample input '{name}' has shape {list(array.shape)}, but the model expects "
                f"{spec['shape']} (-1 means any size)."
            )
        feeds[name] = array
    return feeds


def _synthesized_feeds(signature: dict) -> dict:
    import numpy as np

    from inference import runtime

    rng = np.random.default_rng(0)
    feeds = {}
    for spec in signature["inputs"]:
        shape = [1 if dim < 0 else dim for dim in spec["shape"]]
        datatype = spec["datatype"]
        if datatype == "BYTES":
            feeds[spec["name"]] = np.full(shape, "sample text", dtype=object)
        elif datatype in ("FP16", "FP32", "FP64"):
            feeds[spec["name"]] = rng.random(shape).astype(runtime.datatype_to_numpy(datatype))
        else:
            # zeros are valid indices/ids for Gather/Embedding-style integer inputs
            feeds[spec["name"]] = np.zeros(shape, dtype=runtime.datatype_to_numpy(datatype))
    return feeds


def _batched(feeds: dict, batch: int) -> dict:
    import numpy as np

    return {name: np.repeat(array[:1], batch, axis=0) for name, array in feeds.items()}


def _timings(handle: Any, feeds: dict, *, budget_s: float) -> list[float]:
    from inference import runtime

    runtime.session_run(handle, feeds)  # warm-up, not timed
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < LATENCY_RUNS:
        t0 = time.perf_counter()
        runtime.session_run(handle, feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
        if time.perf_counter() - started > budget_s:
            break
    return times


def _percentiles(times: list[float]) -> tuple[float, float]:
    import numpy as np

    return round(float(np.percentile(times, 50)), 4), round(float(np.percentile(times, 95)), 4)


def artifact_inspect(
    *,
    model_path: Path,
    source_dir: Path | None,
    sample_input: dict | None,
    memory_limit_mb: int,
    deadline: float,
    emit: Callable[[dict], None],
) -> dict:
    """The sandboxed part: format → external_data → operators → checker → load → signature →
    smoke → latency. Emits each finished step; stops at the first failure. Runs in the child."""
    from inference import runtime

    state: dict[str, Any] = {}
    result: dict[str, Any] = {"signature": None, "metrics": None, "model": None, "smoke": None}

    def run(key: str, check: Callable[[], str]) -> bool:
        started = time.perf_counter()
        try:
            detail, status = check(), "passed"
        except StepFailed as exc:
            detail, status = str(exc), "failed"
        except runtime.RuntimeFailure as exc:
            status = "failed"
            if exc.kind == "memory":
                detail = sandbox.memory_reason(memory_limit_mb)
            elif key == "load":
                detail = f"ONNX Runtime could not load the model: {exc.message}"
            else:
                detail = f"The model failed to run: {exc.message}"
        except MemoryError:
            detail, status = sandbox.memory_reason(memory_limit_mb), "failed"
        emit(_step(key, status, detail, _ms(time.perf_counter() - started)))
        return status == "passed"

    def check_format() -> str:
        data = Path(model_path).read_bytes()
        state["proto"] = model_parse(data)
        del data
        result["model"] = model_summary(state["proto"])
        info = result["model"]
        producer = f"{info['producer_name']} {info['producer_version']}".strip() or "unknown producer"
        return f"ONNX IR version {info['ir_version']}, {info['node_count']} nodes, made by {producer}."

    def check_external_data() -> str:
        problem = external_data_problem(state["proto"], source_dir=source_dir)
        if problem:
            raise StepFailed(problem)
        return "All weights are stored inside the file."

    def check_operators() -> str:
        problem = operator_problem(state["proto"])
        if problem:
            raise StepFailed(problem)
        return "Only standard ONNX / ONNX-ML operators are used: " + ", ".join(
            f"{domain} {version}" for domain, version in result["model"]["opsets"].items()
        )

    def check_checker() -> str:
        problem = checker_problem(state.pop("proto"))  # drop our copy before ORT loads its own
        if problem:
            raise StepFailed(problem)
        return "onnx.checker (full check, with shape inference) passed."

    def check_load() -> str:
        started = time.perf_counter()
        handle = runtime.session_create(model_bytes_or_path=Path(model_path), prefer_gpu=False, intra_op_threads=1)
        state["handle"] = handle
        state["cold_load_ms"] = _ms(time.perf_counter() - started)
        return f"Loaded in {state['cold_load_ms']:.0f} ms on {handle.provider}."

    def check_signature() -> str:
        problem = _signature_problem(state["handle"])
        if problem:
            raise StepFailed(problem)
        signature = runtime.session_signature(state["handle"])
        result["signature"] = signature

        def describe(items: list[dict]) -> str:
            return ", ".join(f"{item['name']} {item['datatype']} {item['shape']}" for item in items) or "none"

        return f"Inputs: {describe(signature['inputs'])}. Outputs: {describe(signature['outputs'])}."

    def check_smoke() -> str:
        signature = result["signature"]
        if sample_input is not None:
            feeds, source = _sample_feeds(signature, sample_input), "sample"
        else:
            feeds, source = _synthesized_feeds(signature), "synthesized"
        outputs = runtime.session_run(state["handle"], feeds)
        state["feeds"] = feeds
        described = {
            name: {"datatype": runtime.numpy_to_datatype(value.dtype), "shape": list(value.shape)}
            for name, value in outputs.items()
        }
        result["smoke"] = {"input_source": source, "outputs": described}
        shapes = ", ".join(f"{name} {info['shape']}" for name, info in described.items())
        what = "the sample input" if source == "sample" else "generated input"
        return f"Ran on {what}; outputs: {shapes or 'none'}."

    def check_latency() -> str:
        handle, signature, feeds = state["handle"], result["signature"], state["feeds"]
        remaining = deadline - time.monotonic()
        budget = max(0.2, min(LATENCY_BUDGET_S, remaining * 0.5))
        batchable = bool(signature["inputs"]) and all(
            spec["shape"] and spec["shape"][0] == -1 for spec in signature["inputs"]
        )
        if batchable and all(array.shape[0] >= 1 for array in feeds.values()):
            try:
                b1_feeds = _batched(feeds, 1)
                runtime.session_run(handle, b1_feeds)
            except runtime.RuntimeFailure as exc:
                if exc.kind == "memory":
                    raise
                b1_feeds, batchable = feeds, False
        else:
            b1_feeds, batchable = feeds, False
        p50_b1, p95_b1 = _percentiles(_timings(handle, b1_feeds, budget_s=budget / 2))
        p50_b8 = p95_b8 = None
        if batchable:
            try:
                p50_b8, p95_b8 = _percentiles(_timings(handle, _batched(b1_feeds, LATENCY_BATCH), budget_s=budget / 2))
            except runtime.RuntimeFailure as exc:
                if exc.kind == "memory":
                    raise
                batchable = False  # the batch dim is declared dynamic but the graph does not accept 8
        result["metrics"] = {
            "cold_load_ms": state["cold_load_ms"],
            "p50_ms_b1": p50_b1,
            "p95_ms_b1": p95_b1,
            "p50_ms_b8": p50_b8,
            "p95_ms_b8": p95_b8,
            "batchable": batchable,
            "provider": handle.provider,
        }
        detail = f"Batch 1: p50 {p50_b1:.3f} ms, p95 {p95_b1:.3f} ms"
        if p50_b8 is not None:
            detail += f"; batch {LATENCY_BATCH}: p50 {p50_b8:.3f} ms, p95 {p95_b8:.3f} ms"
        else:
            detail += "; batching not supported (fixed batch size)"
        return detail + f" on {handle.provider} with 1 thread."

    checks = (
        ("format", check_format),
        ("external_data", check_external_data),
        ("operators", check_operators),
        ("checker", check_checker),
        ("load", check_load),
        ("signature", check_signature),
        ("smoke", check_smoke),
        ("latency", check_latency),
    )
    for key, check in checks:
        if not run(key, check):
            break
    return result
