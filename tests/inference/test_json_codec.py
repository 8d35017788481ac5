"""The hot path's JSON: orjson where it answers as the standard library does, the standard library elsewhere."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference import protocol
from inference.json_codec import json_dumps, json_loads
from inference.protocol import InferRequest


def test_reading_accepts_what_the_standard_library_accepts():
    assert json_loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    special = json_loads(b'{"data": [NaN, Infinity, -Infinity, 18446744073709551616]}')["data"]
    assert math.isnan(special[0]) and special[1:3] == [math.inf, -math.inf] and special[3] == 2**64
    with pytest.raises(json.JSONDecodeError) as info:
        json_loads(b'{"inputs": [}')
    assert "Expecting value" in str(info.value)  # the standard library's message, which the 400 quotes


def test_writing_is_compact_and_keeps_non_finite_floats_and_big_integers():
    assert json_dumps({"a": [1, 0.5], "b": "é"}) == '{"a":[1,0.5],"b":"é"}'.encode()
    assert json_dumps({"x": [math.nan, math.inf]}, finite=False) == b'{"x":[NaN,Infinity]}'
    assert json_loads(json_dumps({"big": 2**70})) == {"big": 2**70}


def _request() -> InferRequest:
    return InferRequest(
        id=None, inputs={}, output_names=None, binary_outputs={}, binary_default=False, units=1, parameters={}
    )


@pytest.mark.parametrize("value", [0.1, math.nan, math.inf])
def test_a_response_with_non_finite_outputs_writes_them_as_python_does(value):
    outputs = {"y": np.array([[value, 1.0]], dtype=np.float32)}
    body, _headers = protocol.response_encode(
        model_name="m", model_version="1", response_id="r", outputs=outputs, request=_request(), usage={"units": 1}
    )
    data = json.loads(body)["outputs"][0]["data"]
    np.testing.assert_array_equal(np.asarray(data, dtype=np.float32), outputs["y"].ravel())
    assert (b"NaN" in body) == math.isnan(value) and (b"Infinity" in body) == math.isinf(value)
