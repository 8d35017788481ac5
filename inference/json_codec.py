"""JSON for the /v2 hot path (request bodies, responses, usage records): orjson, about ten times faster than the
standard library on these bodies (a request body 8.9 → 1.5 µs to parse, a response 10.5 → 0.6 µs to write: a one-off
in-process measurement on the benchmark's tiny model, docs/benchmarks.md), with the standard library wherever orjson
would answer differently:

- reading: ``NaN``/``Infinity`` literals and integers over 64 bits, which the standard library accepts and orjson
  refuses; a body neither accepts raises the standard library's error, whose message the 400 quotes;
- writing: non-finite floats (orjson writes ``null``; the protocol's clients read ``NaN`` as Python writes it), and
  anything orjson cannot serialise.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def json_loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def json_dumps(value: Any, *, finite: bool = True) -> bytes:
    """Compact JSON as bytes. ``finite=False`` when the value may hold NaN or ±Infinity: they are written as the
    standard library writes them."""
    if finite:
        try:
            return orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError: a type it does not know, an integer over 64 bits
            pass
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()
