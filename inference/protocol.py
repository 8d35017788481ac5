"""The Open Inference Protocol (KServe V2) on the wire: parse requests into numpy arrays, check them
against a version's signature before any inference, and encode responses.

Both JSON tensors and the binary tensor data extension are supported: with an
``Inference-Header-Content-Length: N`` header the first N bytes of the body are the JSON and the rest
holds the raw tensors (little-endian, row-major) that inputs point at with
``"parameters": {"binary_data_size": k}``, in input order. BYTES elements travel as a 4-byte
little-endian length followed by the bytes. Responses are binary when the request asks for it
(``"binary_data": true`` on a requested output, or ``"binary_data_output": true`` in the request
parameters), with the same header on the response.

Pure functions, no Django models: the view passes the signature dict and the limits.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.datatypes import DATATYPE_TO_NUMPY
from inference.errors import InferenceFailed
from inference.json_codec import json_dumps, json_loads
from marketplace.errors import ApplicationError

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

_NUMPY_TO_DATATYPE = {dtype: name for name, dtype in DATATYPE_TO_NUMPY.items() if name != "BYTES"}
# Which kinds of JSON values numpy infers that a datatype accepts (ints are fine for floats, not the reverse).
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
# Request parameters Triton's client may send that change nothing here.
_IGNORED_REQUEST_PARAMETERS = {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start",
                               "sequence_end"}  # fmt: skip


class MalformedRequest(ApplicationError):
    status = 400
    code = "malformed_request"


class BodyTooLarge(ApplicationError):
    status = 413
    code = "body_too_large"


@dataclass
class InferRequest:
    """A parsed, checked request: ``inputs`` in signature order, ready for ONNX Runtime."""

    id: str | None
    inputs: dict[str, np.ndarray]
    output_names: list[str] | None  # None: every output
    binary_outputs: dict[str, bool]  # per requested output name; default for the rest in binary_default
    binary_default: bool
    units: int
    parameters: dict[str, Any] = field(default_factory=dict)

    def output_is_binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def _input_error(name: str, message: str, *, code: str = "invalid_input", status: int = 400) -> ApplicationError:
    return ApplicationError(f"Input '{name}': {message}", code=code, status=status, fields={name: [message]})


def _shape_text(shape: list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def signature_has_batch_dim(signature: dict) -> bool:
    """Whether units can be counted along the first dimension: the first input's first dim is dynamic."""
    inputs = signature.get("inputs") or []
    if not inputs:
        return False
    shape = inputs[0].get("shape") or []
    return bool(shape) and (shape[0] is None or (isinstance(shape[0], int) and shape[0] < 0))


def _shape_check(name: str, shape: Any, expected: list[int] | None) -> list[int]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise _input_error(name, "'shape' must be a list of integers.")
    if any(d < 0 for d in shape):
        raise _input_error(name, f"dimensions must not be negative, got {_shape_text(shape)}.")
    if expected is None:
        return shape
    if len(shape) != len(expected):
        raise _input_error(
            name,
            f"expected shape {_shape_text(expected)}, got {_shape_text(shape)} "
            f"(rank {len(shape)}, the model needs rank {len(expected)}).",
        )
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if isinstance(want, int) and want >= 0 and got != want:
            raise _input_error(
                name,
                f"expected shape {_shape_text(expected)}, got {_shape_text(shape)} (dimension {axis} must be {want}).",
            )
    return shape


def _bytes_elements_decode(name: str, raw: memoryview, count: int) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset, size = 0, len(raw)
    for index in range(count):
        if offset + 4 > size:
            raise _input_error(name, f"binary BYTES data holds fewer than the {count} elements the shape needs.")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > size:
            raise _input_error(name, f"binary BYTES element {index} runs past the end of its data.")
        try:
            out[index] = bytes(raw[offset : offset + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise _input_error(name, f"BYTES element {index} is not valid UTF-8.") from None
        offset += length
    if offset != size:
        raise _input_error(name, f"binary BYTES data holds more than the {count} elements the shape needs.")
    return out


def _binary_tensor_decode(name: str, datatype: str, shape: list[int], raw: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements_decode(name, raw, count).reshape(shape)
    dtype = DATATYPE_TO_NUMPY[datatype].newbyteorder("<")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise _input_error(
            name,
            f"binary data is {len(raw)} bytes; shape {_shape_text(shape)} of {datatype} needs {expected} bytes.",
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    # Native byte order for ONNX Runtime (a no-op on little-endian machines).
    return array.astype(DATATYPE_TO_NUMPY[datatype], copy=False)


def _json_tensor_decode(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(name, data)
        if len(flat) != count:
            raise _length_error(name, shape, len(flat))
        if not all(isinstance(item, str) for item in flat):
            raise _input_error(name, "BYTES data must be strings.")
        array = np.empty(count, dtype=object)
        array[:] = flat
        return array.reshape(shape)
    try:
        inferred = np.asarray(data)
    except ValueError:
        raise _input_error(name, "'data' is a ragged nested list; it must be flat or match the shape.") from None
    if inferred.size != count:
        raise _length_error(name, shape, inferred.size)
    dtype = DATATYPE_TO_NUMPY[datatype]
    if count and dtype.kind in "iu" and inferred.dtype.kind in "fO":
        # numpy turns ints that do not share one integer type (0 and 2**64 - 1) into float64; look closer.
        flat = _flatten(name, data)
        if all(type(v) is int for v in flat):
            info = np.iinfo(dtype)
            if min(flat) < info.min or max(flat) > info.max:
                raise _input_error(name, f"values out of range for {datatype} ({info.min}..{info.max}).")
            return np.array(flat, dtype=dtype).reshape(shape)
    if count:
        accepted = _ACCEPTED_KINDS[dtype.kind]
        if inferred.dtype.kind not in accepted:
            wanted = {"b": "booleans", "iu": "integers", "iuf": "numbers"}[accepted]
            raise _input_error(name, f"{datatype} data must be {wanted}.")
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = inferred.min(), inferred.max()
            if low < info.min or high > info.max:
                raise _input_error(name, f"values out of range for {datatype} ({info.min}..{info.max}).")
    return inferred.astype(dtype, copy=False).reshape(shape)


def _flatten(name: str, data: list) -> list:
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _length_error(name: str, shape: list[int], got: int) -> ApplicationError:
    return _input_error(
        name, f"'data' has {got} elements; shape {_shape_text(shape)} needs {math.prod(shape)}.", code="invalid_input"
    )


def request_parse(
    *,
    body: bytes,
    header_length: str | None,
    signature: dict,
    max_elements: int,
) -> InferRequest:
    """Parse a V2 infer request and check it against ``signature``. Raises a 400 ApplicationError that names
    the input and the reason, before anything runs."""
    binary = b""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise MalformedRequest(f"{HEADER_LENGTH} must be an integer.") from None
        if json_size < 0 or json_size > len(body):
            raise MalformedRequest(f"{HEADER_LENGTH} is {json_size} but the body has {len(body)} bytes.")
        binary, body = body[json_size:], body[:json_size]
    try:
        payload = json_loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise MalformedRequest("The request body must be a JSON object.")

    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequest("'id' must be a string.")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("'parameters' must be an object.")
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise MalformedRequest("'inputs' must be a non-empty list of tensors.")

    expected_inputs = {spec["name"]: spec for spec in signature.get("inputs") or []}
    expected_outputs = [spec["name"] for spec in signature.get("outputs") or []]

    # First pass: names, datatypes and shapes (cheap), and the total element count, before decoding data.
    checked: list[tuple[dict, str, str, list[int]]] = []
    seen: set[str] = set()
    total = 0
    for index, tensor in enumerate(raw_inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise MalformedRequest(f"inputs[{index}] must be an object with a 'name'.")
        name = tensor["name"]
        spec = expected_inputs.get(name)
        if spec is None:
            known = ", ".join(f"'{n}'" for n in expected_inputs) or "none"
            raise _input_error(name, f"the model has no input of this name (its inputs: {known}).")
        if name in seen:
            raise _input_error(name, "given more than once.")
        seen.add(name)
        datatype = tensor.get("datatype")
        if datatype not in DATATYPE_TO_NUMPY:
            raise _input_error(name, f"unknown datatype {datatype!r}.")
        if datatype != spec["datatype"]:
            raise _input_error(name, f"expected datatype {spec['datatype']}, got {datatype}.")
        shape = _shape_check(name, tensor.get("shape"), spec.get("shape"))
        total += math.prod(shape)
        checked.append((tensor, name, datatype, shape))
    missing = [n for n in expected_inputs if n not in seen]
    if missing:
        raise _input_error(missing[0], "missing; the model needs it.")
    if total > max_elements:
        raise ApplicationError(
            f"The request has {total} elements; the limit is {max_elements}. Send fewer rows per request.",
            code="too_many_elements",
            status=400,
            fields={name: [f"{math.prod(shape)} elements"] for _, name, _, shape in checked},
        )

    # Second pass: decode the data.
    inputs: dict[str, np.ndarray] = {}
    view = memoryview(binary)
    offset = 0
    for tensor, name, datatype, shape in checked:
        tensor_parameters = tensor.get("parameters") or {}
        if not isinstance(tensor_parameters, dict):
            raise _input_error(name, "'parameters' must be an object.")
        binary_size = tensor_parameters.get("binary_data_size")
        if binary_size is not None:
            if "data" in tensor:
                raise _input_error(name, "give either 'data' or binary data, not both.")
            if not isinstance(binary_size, int) or binary_size < 0:
                raise _input_error(name, "'binary_data_size' must be a non-negative integer.")
            if offset + binary_size > len(view):
                raise _input_error(
                    name,
                    f"'binary_data_size' is {binary_size} but only {len(view) - offset} bytes of binary data are left.",
                )
            inputs[name] = _binary_tensor_decode(name, datatype, shape, view[offset : offset + binary_size])
            offset += binary_size
        elif "data" in tensor:
            inputs[name] = _json_tensor_decode(name, datatype, shape, tensor["data"])
        else:
            raise _input_error(name, "no 'data' and no binary data.")
    if offset != len(view):
        raise MalformedRequest(f"{len(view) - offset} bytes of binary data are not claimed by any input.")
    # ONNX Runtime wants the inputs; keep signature order so batching sees one layout.
    inputs = {n: inputs[n] for n in expected_inputs}

    binary_default = bool(parameters.get("binary_data_output", False))
    output_names: list[str] | None = None
    binary_outputs: dict[str, bool] = {}
    raw_outputs = payload.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise MalformedRequest("'outputs' must be a list.")
        output_names = []
        for index, requested in enumerate(raw_outputs):
            if not isinstance(requested, dict) or not isinstance(requested.get("name"), str):
                raise MalformedRequest(f"outputs[{index}] must be an object with a 'name'.")
            name = requested["name"]
            if name not in expected_outputs:
                known = ", ".join(f"'{n}'" for n in expected_outputs)
                message = f"the model has no output of this name (its outputs: {known})."
                raise ApplicationError(
                    f"Output '{name}': {message}", code="invalid_output", status=400, fields={name: [message]}
                )
            output_parameters = requested.get("parameters") or {}
            if output_parameters.get("class_count"):
                message = "the classification extension (class_count) is not supported."
                raise ApplicationError(
                    f"Output '{name}': {message}", code="invalid_output", status=400, fields={name: [message]}
                )
            if "binary_data" in output_parameters:
                binary_outputs[name] = bool(output_parameters["binary_data"])
            if name not in output_names:
                output_names.append(name)
        if not output_names:
            output_names = None

    units = 1
    if signature_has_batch_dim(signature):
        first = next(iter(expected_inputs))
        units = max(1, int(inputs[first].shape[0]))
    return InferRequest(
        id=request_id,
        inputs=inputs,
        output_names=output_names,
        binary_outputs=binary_outputs,
        binary_default=binary_default,
        units=units,
        parameters={k: v for k, v in parameters.items() if k not in _IGNORED_REQUEST_PARAMETERS},
    )


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        return _NUMPY_TO_DATATYPE[array.dtype.newbyteorder("=")]
    except KeyError:
        raise InferenceFailed(
            f"The model returned a tensor of type {array.dtype}, which the protocol cannot carry."
        ) from None


def _bytes_element(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _binary_tensor_encode(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in array.ravel():
            raw = _bytes_element(value)
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray, datatype: str) -> list:
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    return array.ravel().tolist()


def response_encode(
    *,
    model_name: str,
    model_version: str,
    response_id: str,
    outputs: dict[str, np.ndarray],
    request: InferRequest,
    usage: dict[str, Any],
) -> tuple[bytes, dict[str, str]]:
    """The response body and the protocol headers (Content-Type, and Inference-Header-Content-Length when
    any output travels in binary)."""
    names = request.output_names if request.output_names is not None else list(outputs)
    tensors: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    finite = True
    for name in names:
        array = np.asarray(outputs[name])
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.output_is_binary(name):
            raw = _binary_tensor_encode(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            tensor["data"] = _json_data(array, datatype)
            finite = finite and (array.dtype.kind != "f" or bool(np.isfinite(array).all()))
        tensors.append(tensor)
    payload = {
        "model_name": model_name,
        "model_version": model_version,
        "id": response_id,
        "parameters": {"usage": usage},
        "outputs": tensors,
    }
    head = json_dumps(payload, finite=finite)
    if not buffers:
        return head, {"Content-Type": JSON_CONTENT_TYPE}
    return b"".join([head, *buffers]), {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(head))}


def error_payload(*, code: str, message: str, fields: dict[str, Any] | None = None) -> bytes:
    """The /v2 error body. ``error`` is the message string, as KServe V2 specifies and as Triton's client reads
    it (it puts ``body["error"]`` into the exception text, which breaks on anything but a string); ``code`` and
    ``fields`` carry the same structure as the rest of the API."""
    body: dict[str, Any] = {"error": message, "code": code}
    if fields:
        body["fields"] = fields
    return json.dumps(body, separators=(",", ":")).encode()
