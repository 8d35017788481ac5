"""KServe V2 parsing, signature checks and response encoding (pure functions; no database, no server).

Binary requests are built with Triton's own client helpers (tritonclient.http), so the wire format is the
one real clients send, not our idea of it.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.http import _utils as triton_utils

from inference import protocol
from marketplace.errors import ApplicationError

SIGNATURE = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ],
}
LIMIT = 1_000_000


def _parse(payload: dict | bytes, signature: dict = SIGNATURE, header_length: str | None = None, **kwargs):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return protocol.request_parse(
        body=body, header_length=header_length, signature=signature, max_elements=kwargs.get("max_elements", LIMIT)
    )


def _error(payload, signature: dict = SIGNATURE, **kwargs) -> ApplicationError:
    with pytest.raises(ApplicationError) as info:
        _parse(payload, signature, **kwargs)
    return info.value


def _features(shape=(2, 4), data=None, datatype="FP32", **extra) -> dict:
    if data is None:
        data = list(range(int(np.prod(shape))))
    return {"inputs": [{"name": "features", "shape": list(shape), "datatype": datatype, "data": data, **extra}]}


def test_flat_and_nested_data_give_the_same_row_major_tensor():
    flat = _parse(_features(data=[1, 2, 3, 4, 5, 6, 7, 8.5]))
    nested = _parse(_features(data=[[1, 2, 3, 4], [5, 6, 7, 8.5]]))
    for parsed in (flat, nested):
        array = parsed.inputs["features"]
        assert array.dtype == np.float32 and array.shape == (2, 4)
        assert array[1, 3] == np.float32(8.5) and array[0, 1] == 2
        assert parsed.units == 2
        assert parsed.output_names is None and parsed.binary_default is False


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("BOOL", [True, False], np.array([True, False])),
        ("INT8", [-128, 127], np.array([-128, 127], dtype=np.int8)),
        ("INT16", [-5, 5], np.array([-5, 5], dtype=np.int16)),
        ("INT32", [-5, 5], np.array([-5, 5], dtype=np.int32)),
        ("INT64", [-(2**62), 2**62], np.array([-(2**62), 2**62], dtype=np.int64)),
        ("UINT8", [0, 255], np.array([0, 255], dtype=np.uint8)),
        ("UINT16", [0, 65535], np.array([0, 65535], dtype=np.uint16)),
        ("UINT32", [0, 2**32 - 1], np.array([0, 2**32 - 1], dtype=np.uint32)),
        ("UINT64", [0, 2**64 - 1], np.array([0, 2**64 - 1], dtype=np.uint64)),
        ("FP16", [0.5, 1], np.array([0.5, 1], dtype=np.float16)),
        ("FP32", [0.25, 3], np.array([0.25, 3], dtype=np.float32)),
        ("FP64", [0.1, 2], np.array([0.1, 2], dtype=np.float64)),
        ("BYTES", ["héllo", ""], np.array(["héllo", ""], dtype=object)),
    ],
)
def test_every_datatype_parses_from_json(datatype, data, expected):
    signature = {"inputs": [{"name": "x", "datatype": datatype, "shape": [-1]}], "outputs": []}
    parsed = _parse({"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]}, signature)
    array = parsed.inputs["x"]
    assert array.dtype == expected.dtype
    assert array.tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", np.array([[True, False, True]])),
        ("INT8", np.array([[-3, 0, 7]], dtype=np.int8)),
        ("UINT16", np.array([[1, 2, 65535]], dtype=np.uint16)),
        ("INT64", np.array([[-(2**40), 0, 2**40]], dtype=np.int64)),
        ("FP16", np.array([[0.5, -1.25, 2.0]], dtype=np.float16)),
        ("FP32", np.array([[0.5, -1.25, 2.0]], dtype=np.float32)),
        ("FP64", np.array([[0.1, -1e300, 2.0]], dtype=np.float64)),
        ("BYTES", np.array([["a", "ü€", ""]], dtype=object)),
    ],
)
def test_binary_tensor_extension_as_tritonclient_sends_it(datatype, values):
    signature = {"inputs": [{"name": "x", "datatype": datatype, "shape": [-1, 3]}], "outputs": []}
    tensor = httpclient.InferInput("x", list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=True)
    body, json_size = triton_utils._get_inference_request(
        inputs=[tensor], request_id="", outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
        priority=0, timeout=None, custom_parameters=None,
    )  # fmt: skip
    assert json_size is not None  # really the binary form
    parsed = _parse(body, signature, header_length=str(json_size))
    array = parsed.inputs["x"]
    assert array.shape == values.shape
    assert array.tolist() == values.tolist()
    # No requested outputs: Triton's client asks for every output in binary.
    assert parsed.binary_default is True


def test_binary_and_json_inputs_mix_in_one_request():
    signature = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "b", "datatype": "INT32", "shape": [-1]},
        ],
        "outputs": [],
    }
    raw = np.array([[1, 2], [3, 4]], dtype="<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {"name": "b", "shape": [2], "datatype": "INT32", "data": [7, 8]},
                {"name": "a", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}},
            ]
        }
    ).encode()
    parsed = _parse(head + raw, signature, header_length=str(len(head)))
    assert list(parsed.inputs) == ["a", "b"]  # signature order
    assert parsed.inputs["a"].tolist() == [[1, 2], [3, 4]]
    assert parsed.units == 2


def test_requested_outputs_and_their_binary_flags():
    payload = _features()
    payload["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}]
    parsed = _parse(payload)
    assert parsed.output_names == ["probabilities", "label"]
    assert parsed.output_is_binary("probabilities") and not parsed.output_is_binary("label")


@pytest.mark.parametrize(
    ("payload", "code", "field", "text"),
    [
        (_features(datatype="FP64"), "invalid_input", "features", "expected datatype FP32, got FP64"),
        (_features(datatype="FLOAT"), "invalid_input", "features", "unknown datatype 'FLOAT'"),
        (_features(shape=(2, 5)), "invalid_input", "features",
         "expected shape [-1, 4], got [2, 5] (dimension 1 must be 4)"),
        (_features(shape=(8,)), "invalid_input", "features", "rank 1, the model needs rank 2"),
        (_features(shape=(2, 4), data=[1, 2, 3]), "invalid_input", "features",
         "'data' has 3 elements; shape [2, 4] needs 8"),
        (_features(shape=(2, 4), data=[[1, 2, 3, 4], [5, 6]]), "invalid_input", "features", "ragged"),
        (_features(shape=(1, 4), data=["a", "b", "c", "d"]), "invalid_input", "features", "FP32 data must be numbers"),
        (_features(shape=(-1, 4)), "invalid_input", "features", "must not be negative"),
        ({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}, "invalid_input", "nope",
         "no input of this name (its inputs: 'features')"),
        ({**_features(), "outputs": [{"name": "logits"}]}, "invalid_output", "logits", "no output of this name"),
    ],
)  # fmt: skip
def test_signature_mismatches_are_400_naming_the_input(payload, code, field, text):
    error = _error(payload)
    assert error.status == 400
    assert error.code == code
    assert text in error.message, error.message
    assert error.message.startswith(("Input '" + field, "Output '" + field))
    assert list(error.fields) == [field]


def test_missing_input_is_named():
    signature = {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1]}, {"name": "b", "datatype": "FP32", "shape": [-1]}],
        "outputs": [],
    }
    error = _error({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}, signature)
    assert error.status == 400 and error.fields == {"b": ["missing; the model needs it."]}


def test_integer_values_are_range_checked_and_floats_rejected():
    signature = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [-1]}], "outputs": []}
    assert (
        "out of range for UINT8"
        in _error({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [256]}]}, signature).message
    )
    assert (
        "must be integers"
        in _error({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [1.5]}]}, signature).message
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b"",
        json.dumps({"inputs": []}).encode(),
        json.dumps({"inputs": [{"shape": [1]}]}).encode(),
    ],
)
def test_malformed_requests_are_400(body):
    error = _error(body)
    assert error.status == 400 and error.code == "malformed_request"


def test_element_limit_is_checked_before_decoding():
    error = _error(_features(shape=(3, 4)), max_elements=10)
    assert error.status == 400 and error.code == "too_many_elements"
    assert "12 elements; the limit is 10" in error.message


def test_binary_size_errors():
    raw = np.zeros((2, 4), dtype="<f4").tobytes()
    head = json.dumps(
        {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    error = _error(head + raw[:16], header_length=str(len(head)))
    assert "binary data is 16 bytes; shape [2, 4] of FP32 needs 32 bytes" in error.message
    error = _error(head + raw[:8], header_length=str(len(head)))
    assert "only 8 bytes of binary data are left" in error.message
    error = _error(head + raw, header_length=str(len(head) + 10_000))
    assert error.code == "malformed_request"


def test_bytes_binary_must_be_utf8_and_complete():
    signature = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}], "outputs": []}
    raw = struct.pack("<I", 2) + b"\xff\xfe"
    head = json.dumps(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    assert "not valid UTF-8" in _error(head + raw, signature, header_length=str(len(head))).message
    raw = struct.pack("<I", 10) + b"abc"
    head = head.replace(b'"binary_data_size": 6', f'"binary_data_size": {len(raw)}'.encode())
    assert "runs past the end" in _error(head + raw, signature, header_length=str(len(head))).message


def test_units_count_rows_or_one_without_a_batch_dimension():
    assert _parse(_features(shape=(5, 4))).units == 5
    fixed = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}], "outputs": []}
    assert _parse({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [3]}]}, fixed).units == 1


def _decode_with_tritonclient(body: bytes, headers: dict[str, str]) -> httpclient.InferResult:
    class _Response:
        def __init__(self) -> None:
            self.offset = 0

        def get(self, name: str):
            return headers.get(name)

        def read(self, length: int = -1) -> bytes:
            start = self.offset
            self.offset = len(body) if length == -1 else start + length
            return body[start : self.offset]

    return httpclient.InferResult(_Response(), verbose=False)


def test_responses_decode_with_tritonclient_in_json_and_binary():
    label = np.array([2, 0], dtype=np.int64)
    probabilities = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]], dtype=np.float32)
    words = np.array(["ja", "nein"], dtype=object)
    outputs = {"label": label, "probabilities": probabilities, "words": words}
    for binary in (False, True):
        request = protocol.InferRequest(
            id=None, inputs={}, output_names=None, binary_outputs={}, binary_default=binary, units=2
        )
        body, headers = protocol.response_encode(
            model_name="m", model_version="1.0.0", response_id="abc", outputs=outputs, request=request,
            usage={"units": 2, "queue_ms": 0.1, "compute_ms": 0.2},
        )  # fmt: skip
        assert (protocol.HEADER_LENGTH in headers) is binary
        assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
        result = _decode_with_tritonclient(body, headers)
        np.testing.assert_array_equal(result.as_numpy("label"), label)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
        assert [w.decode() if isinstance(w, bytes) else w for w in result.as_numpy("words").tolist()] == ["ja", "nein"]
        response = result.get_response()
        assert response["model_version"] == "1.0.0" and response["id"] == "abc"
        assert response["parameters"]["usage"]["units"] == 2


def test_error_payload_is_kserve_shaped_with_a_code():
    body = json.loads(protocol.error_payload(code="invalid_input", message="Input 'x': bad.", fields={"x": ["bad."]}))
    assert body == {"error": "Input 'x': bad.", "code": "invalid_input", "fields": {"x": ["bad."]}}


def test_an_output_the_protocol_cannot_carry_is_a_422_inference_failed():
    assert protocol.datatype_of(np.zeros(2, dtype=">f4")) == "FP32"  # byte order does not matter
    with pytest.raises(ApplicationError) as caught:
        protocol.datatype_of(np.zeros(2, dtype=np.complex64))
    assert (caught.value.status, caught.value.code) == (422, "inference_failed")
    assert "complex64" in caught.value.message
