"""What the listing page's playground shows: a form per version built from its signature, prefilled with the
publisher's sample input, and the same request as curl and Python snippets.

The playground runs through the metered ``/v2`` infer view itself (a signed-in session stands where an API key
would), so this module only prepares what the page renders; it decides nothing about entitlement.
"""

from __future__ import annotations

import json
import math
import pprint
from dataclasses import dataclass, field
from typing import Any

from django.urls import reverse

# A prefilled sample larger than this (JSON characters) is left out of the page: a 1 MB image tensor in a
# textarea helps nobody and makes the listing page heavy.
SAMPLE_MAX_CHARS = 20_000
# Without a sample, dynamic dimensions are 1 and the form is prefilled with zeros, up to this many elements.
PLACEHOLDER_MAX_ELEMENTS = 1_024
API_KEY_VARIABLE = "MARKETPLACE_API_KEY"


@dataclass
class PlaygroundField:
    name: str
    datatype: str
    shape: list[Any]
    value: str  # JSON text of a nested list ("" when too large to show)
    note: str = ""  # why the field is empty, when it is


@dataclass
class PlaygroundVersion:
    version: str
    fields: list[PlaygroundField]
    outputs: list[dict[str, Any]]
    infer_path: str
    body: dict[str, Any] | None  # the sample request (None when a field could not be prefilled)
    snippets: dict[str, str] = field(default_factory=dict)

    def as_data(self) -> dict[str, Any]:
        """What the page's script needs to rebuild the form when another version is picked."""
        return {
            "version": self.version,
            "infer_path": self.infer_path,
            "inputs": [
                {"name": f.name, "datatype": f.datatype, "shape": f.shape, "value": f.value, "note": f.note}
                for f in self.fields
            ],
            "outputs": self.outputs,
        }


def nested_shape(value: Any) -> list[int]:
    """The shape of a rectangular nested list (``[[1, 2], [3, 4]]`` → ``[2, 2]``); a scalar is ``[]``."""
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _placeholder(datatype: str, shape: list[Any]) -> Any:
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    if math.prod(dims) > PLACEHOLDER_MAX_ELEMENTS:
        return None
    zero: Any = "" if datatype == "BYTES" else (False if datatype == "BOOL" else 0)
    value: Any = zero
    for dim in reversed(dims):
        value = [value] * dim
    return json.loads(json.dumps(value))  # independent lists


def _field(spec: dict[str, Any], sample: dict[str, Any]) -> tuple[PlaygroundField, Any]:
    name, datatype, shape = str(spec.get("name", "")), str(spec.get("datatype", "")), list(spec.get("shape") or [])
    if name in sample:
        text = json.dumps(sample[name], separators=(", ", ": "))
        if len(text) > SAMPLE_MAX_CHARS:
            note = "The publisher's sample for this input is too large to show here; paste your own."
            return PlaygroundField(name, datatype, shape, "", note), None
        return PlaygroundField(name, datatype, shape, text), sample[name]
    value = _placeholder(datatype, shape)
    if value is None:
        return PlaygroundField(name, datatype, shape, "", "No sample for this input; paste a nested list."), None
    return PlaygroundField(name, datatype, shape, json.dumps(value, separators=(", ", ": "))), value


def request_body(fields: list[PlaygroundField], values: list[Any]) -> dict[str, Any]:
    """The KServe V2 JSON request for these inputs (the shape read from each nested list)."""
    return {
        "inputs": [
            {"name": f.name, "shape": nested_shape(v), "datatype": f.datatype, "data": v}
            for f, v in zip(fields, values, strict=True)
        ]
    }


def snippets(*, url: str, body: dict[str, Any]) -> dict[str, str]:
    """``curl`` and Python ``requests`` for the same call; the key comes from an environment variable."""
    compact = json.dumps(body, separators=(",", ":"))
    curl = (
        f"curl -sS {url} \\\n"
        f'  -H "Authorization: Bearer ${API_KEY_VARIABLE}" \\\n'
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d '{compact.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'"
    )
    literal = pprint.pformat(body, width=96, sort_dicts=False).replace("\n", "\n    ")
    python = (
        "import os\n\nimport requests\n\n"
        "response = requests.post(\n"
        f"    {url!r},\n"
        f'    headers={{"Authorization": f"Bearer {{os.environ[{API_KEY_VARIABLE!r}]}}"}},\n'
        f"    json={literal},\n"
        "    timeout=30,\n"
        ")\n"
        "response.raise_for_status()\n"
        'for output in response.json()["outputs"]:\n'
        '    print(output["name"], output["shape"], output["data"])\n'
    )
    return {"curl": curl, "python": python}


def playground_version(*, listing_slug: str, version: Any, absolute: Any = None) -> PlaygroundVersion:
    """The form of one version. ``absolute`` turns a path into a full URL for the snippets."""
    signature = version.signature or {}
    sample = version.sample_input if isinstance(version.sample_input, dict) else {}
    pairs = [_field(spec, sample) for spec in signature.get("inputs") or [] if isinstance(spec, dict)]
    fields = [f for f, _ in pairs]
    values = [v for _, v in pairs]
    path = reverse("inference:version-infer", kwargs={"listing": listing_slug, "version": version.version})
    outputs = [
        {"name": t.get("name"), "datatype": t.get("datatype"), "shape": t.get("shape")}
        for t in signature.get("outputs") or []
        if isinstance(t, dict)
    ]
    complete = bool(fields) and all(v is not None for v in values)
    body = request_body(fields, values) if complete else None
    result = PlaygroundVersion(version=version.version, fields=fields, outputs=outputs, infer_path=path, body=body)
    if body is not None:
        result.snippets = snippets(url=absolute(path) if absolute else path, body=body)
    return result
