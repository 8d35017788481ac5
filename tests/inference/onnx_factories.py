"""Builders for ONNX test files, valid and hostile. Return bytes; write them where the test wants.

Models made with onnx.helper use IR version 10: onnx 1.23 defaults to IR 14, which the
installed ONNX Runtime (max IR 13) refuses.
"""

from __future__ import annotations

import functools
import io
import pickle
import random
import zipfile
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 17

_DATATYPE_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _elem_type(dtype: str | np.dtype | type) -> int:
    if isinstance(dtype, str) and dtype.upper() in _DATATYPE_TO_ONNX:
        return _DATATYPE_TO_ONNX[dtype.upper()]
    np_dtype = np.dtype(dtype)
    if np_dtype.kind in ("U", "S", "O"):
        return TensorProto.STRING
    return helper.np_dtype_to_tensor_dtype(np_dtype)


def _dims(shape: Sequence[int | str | None]) -> list[int | str]:
    # -1/None become symbolic dims ("N" for the batch axis), so ORT reports them as dynamic.
    dims: list[int | str] = []
    for index, dim in enumerate(shape):
        dynamic = dim is None or (isinstance(dim, int) and dim < 0)
        dims.append(("N" if index == 0 else f"d{index}") if dynamic else dim)
    return dims


def model_bytes(
    graph: onnx.GraphProto,
    *,
    opsets: dict[str, int] | None = None,
    ir_version: int = IR_VERSION,
    functions: Sequence[onnx.FunctionProto] = (),
) -> bytes:
    imports = [helper.make_opsetid(domain, version) for domain, version in (opsets or {"": OPSET}).items()]
    model = helper.make_model(
        graph,
        opset_imports=imports,
        ir_version=ir_version,
        producer_name="marketplace-tests",
        functions=list(functions),
    )
    return model.SerializeToString()


@functools.cache
def onnx_classifier_bytes() -> bytes:
    """LogisticRegression on iris via skl2onnx: input 'input' FP32 [-1, 4], outputs 'label'
    INT64 [-1] and 'probabilities' FP32 [-1, 3] (zipmap off, so outputs are tensors)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    proto = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
    )
    return proto.SerializeToString()


@functools.cache
def onnx_classifier_zipmap_bytes() -> bytes:
    """Same classifier with skl2onnx's default ZipMap: 'output_probability' is seq(map(...))."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, labels)
    return convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 4]))]).SerializeToString()


@functools.cache
def onnx_regressor_bytes() -> bytes:
    """LinearRegression predicting iris petal width from the other three features:
    input 'features' FP32 [-1, 3], output 'variable' FP32 [-1, 1]."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LinearRegression

    features, _ = load_iris(return_X_y=True)
    model = LinearRegression().fit(features[:, :3], features[:, 3])
    proto = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, 3]))])
    return proto.SerializeToString()


def onnx_identity_bytes(
    dtype: str | np.dtype | type = "FP32",
    shape: Sequence[int | str | None] = (-1, 4),
    *,
    input_name: str = "x",
    output_name: str = "y",
    ir_version: int = IR_VERSION,
) -> bytes:
    """Identity on one input; dtype is an inference datatype ("FP32", "BYTES", ...) or a numpy
    dtype; -1/None dims are dynamic."""
    elem = _elem_type(dtype)
    dims = _dims(shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], [output_name])],
        "identity",
        [helper.make_tensor_value_info(input_name, elem, dims)],
        [helper.make_tensor_value_info(output_name, elem, dims)],
    )
    return model_bytes(graph, ir_version=ir_version)


# --- hostile or broken files ----------------------------------------------------------------------


def truncated_bytes(data: bytes | None = None) -> bytes:
    """A valid model cut in half, like an interrupted upload."""
    data = data if data is not None else onnx_classifier_bytes()
    return data[: len(data) // 2]


def random_bytes(size: int = 4096, *, seed: int = 1234) -> bytes:
    return random.Random(seed).randbytes(size)


def pickle_bytes() -> bytes:
    """What `pickle.dump` / an old torch.save writes."""
    return pickle.dumps({"weights": [0.1, 0.2, 0.3], "arch": "mlp"}, protocol=4)


def zip_bytes(members: dict[str, bytes] | None = None) -> bytes:
    """A zip archive; by default one holding a real model.onnx (the 'zipped upload' mistake)."""
    members = members if members is not None else {"model.onnx": onnx_identity_bytes()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def torch_checkpoint_bytes() -> bytes:
    """The zip layout torch.save has used since 1.6 (archive/data.pkl + archive/version)."""
    return zip_bytes({"archive/data.pkl": pickle_bytes(), "archive/version": b"3\n"})


def html_bytes() -> bytes:
    return b"<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body>Denied</body></html>\n"


def hdf5_bytes() -> bytes:
    return b"\x89HDF\r\n\x1a\n" + bytes(504)


def safetensors_bytes() -> bytes:
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    return len(header).to_bytes(8, "little") + header + bytes(8)


def onnx_external_data_bytes(location: str, *, tensor_name: str = "w") -> bytes:
    """y = x + w where initializer w claims its data lives in the external file `location`."""
    weight = TensorProto()
    weight.name = tensor_name
    weight.data_type = TensorProto.FLOAT
    weight.dims.extend([4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", tensor_name], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[weight],
    )
    return model_bytes(graph)


def onnx_custom_domain_bytes(domain: str = "com.evil", op_type: str = "Backdoor") -> bytes:
    """One node from a non-standard operator domain (what a custom-op library would implement)."""
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"], domain=domain)],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    return model_bytes(graph, opsets={"": OPSET, domain: 1})


def onnx_custom_domain_in_subgraph_bytes(domain: str = "com.evil") -> bytes:
    """The custom op hides in the else-branch of an If."""
    then_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 4])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Backdoor", ["x"], ["e"], domain=domain)],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "branchy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    return model_bytes(graph, opsets={"": OPSET, domain: 1})


def onnx_local_function_bytes(*, body_domain: str = "") -> bytes:
    """The graph calls a model-local function 'local.fns:Double'; its body uses `body_domain`."""
    body_op = "Add" if body_domain == "" else "FusedDouble"
    function = helper.make_function(
        "local.fns",
        "Double",
        ["a"],
        ["b"],
        [helper.make_node(body_op, ["a", "a"], ["b"], domain=body_domain)],
        opset_imports=[helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(body_domain, 1)] if body_domain else []),
    )
    graph = helper.make_graph(
        [helper.make_node("Double", ["x"], ["y"], domain="local.fns")],
        "with_function",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    opsets = {"": OPSET, "local.fns": 1}
    if body_domain:
        opsets[body_domain] = 1
    return model_bytes(graph, opsets=opsets, functions=[function])


def onnx_huge_allocation_bytes(dims: Sequence[int] = (200_000, 200_000)) -> bytes:
    """A ~150-byte model whose ConstantOfShape (shape from an initializer) asks for
    prod(dims) * 4 bytes: 160 GB by default. x is added so the graph has an input."""
    shape = numpy_helper.from_array(np.array(dims, dtype=np.int64), name="shape")
    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
            ),
            helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[shape],
    )
    return model_bytes(graph)


def onnx_slow_loop_bytes(iterations: int = 10**12) -> bytes:
    """A Loop that adds 1 `iterations` times: tiny file, effectively endless run."""
    one = numpy_helper.from_array(np.array([1.0], dtype=np.float32), name="one")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        initializer=[one],
    )
    trip = numpy_helper.from_array(np.array(iterations, dtype=np.int64), name="trip")
    cond = numpy_helper.from_array(np.array(True), name="cond")
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[trip, cond],
    )
    return model_bytes(graph)
