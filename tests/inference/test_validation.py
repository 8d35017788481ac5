"""ONNX artifact validation: real onnx / ONNX Runtime on files built by onnx_factories, real
sandbox subprocesses. No database."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from inference import runtime, sandbox, validation
from inference.validation import artifact_validate
from tests.inference import onnx_factories as factories

MEMORY_MB = 1024
TIMEOUT_S = 20.0
STEP_KEYS = [key for key, _ in validation.STEPS]


def _validate(
    tmp_path: Path,
    data: bytes,
    *,
    name: str = "model.onnx",
    expected_size: int | None = -1,
    expected_sha256: str | None = "auto",
    max_bytes: int = 10 * 1024 * 1024,
    **kwargs,
) -> dict:
    path = tmp_path / name
    path.write_bytes(data)
    report = artifact_validate(
        path=path,
        expected_size=len(data) if expected_size == -1 else expected_size,
        expected_sha256=hashlib.sha256(data).hexdigest() if expected_sha256 == "auto" else expected_sha256,
        max_bytes=max_bytes,
        memory_limit_mb=kwargs.pop("memory_limit_mb", MEMORY_MB),
        timeout_s=kwargs.pop("timeout_s", TIMEOUT_S),
        **kwargs,
    )
    json.dumps(report)  # the worker stores it as JSON
    assert [step["key"] for step in report["steps"]] == STEP_KEYS
    return report


def _failed_at(report: dict, key: str, reason_part: str) -> dict:
    assert report["ok"] is False
    failed = [step for step in report["steps"] if step["status"] == "failed"]
    assert [step["key"] for step in failed] == [key], report["steps"]
    assert reason_part in report["reason"], report["reason"]
    assert failed[0]["detail"] == report["reason"]
    after = report["steps"][STEP_KEYS.index(key) + 1 :]
    assert all(step["status"] == "skipped" for step in after)
    assert all(step["status"] == "passed" for step in report["steps"][: STEP_KEYS.index(key)])
    return failed[0]


# --- valid models ----------------------------------------------------------------------------------


def test_classifier_passes_with_signature_metrics_and_live_steps(tmp_path):
    seen: list[dict] = []
    report = _validate(tmp_path, factories.onnx_classifier_bytes(), on_step=seen.append)

    assert report["ok"] is True and report["reason"] is None
    assert seen == report["steps"]
    assert all(step["status"] == "passed" and step["duration_ms"] >= 0 for step in report["steps"])
    assert report["sha256"] == hashlib.sha256(factories.onnx_classifier_bytes()).hexdigest()
    assert report["signature"] == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    metrics = report["metrics"]
    assert metrics["batchable"] is True
    assert metrics["provider"] == "CPUExecutionProvider"
    for key in ("cold_load_ms", "p50_ms_b1", "p95_ms_b1", "p50_ms_b8", "p95_ms_b8"):
        assert isinstance(metrics[key], float) and metrics[key] > 0, key
    assert metrics["p50_ms_b1"] <= metrics["p95_ms_b1"]
    model = report["model"]
    assert model["producer_name"] == "skl2onnx"
    assert model["opsets"]["ai.onnx.ml"] == 1 and "ai.onnx" in model["opsets"]
    assert model["node_count"] >= 1 and model["parameter_bytes"] > 0
    assert report["smoke"] == {
        "input_source": "synthesized",
        "outputs": {
            "label": {"datatype": "INT64", "shape": [1]},
            "probabilities": {"datatype": "FP32", "shape": [1, 3]},
        },
    }


def test_regressor_runs_publisher_sample_input(tmp_path):
    sample = {"features": [[5.1, 3.5, 1.4], [6.3, 3.3, 6.0]]}
    report = _validate(tmp_path, factories.onnx_regressor_bytes(), sample_input=sample)

    assert report["ok"] is True, report["reason"]
    assert report["smoke"]["input_source"] == "sample"
    assert report["smoke"]["outputs"] == {"variable": {"datatype": "FP32", "shape": [2, 1]}}
    assert report["signature"]["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}]


def test_fixed_batch_model_is_not_batchable(tmp_path):
    report = _validate(tmp_path, factories.onnx_identity_bytes("FP32", (1, 4)))

    assert report["ok"] is True, report["reason"]
    assert report["signature"]["inputs"][0]["shape"] == [1, 4]
    assert report["metrics"]["batchable"] is False
    assert report["metrics"]["p50_ms_b8"] is None and report["metrics"]["p95_ms_b8"] is None
    assert report["metrics"]["p50_ms_b1"] > 0


def test_string_model_gets_synthesized_text_input(tmp_path):
    report = _validate(tmp_path, factories.onnx_identity_bytes("BYTES", (-1,)))

    assert report["ok"] is True, report["reason"]
    assert report["signature"]["inputs"] == [{"name": "x", "datatype": "BYTES", "shape": [-1]}]
    assert report["smoke"]["outputs"] == {"y": {"datatype": "BYTES", "shape": [1]}}


# --- size and integrity ----------------------------------------------------------------------------


def test_wrong_sha256_fails(tmp_path):
    report = _validate(tmp_path, factories.onnx_classifier_bytes(), expected_sha256="0" * 64)
    _failed_at(report, "sha256", "SHA-256")
    assert "0" * 64 in report["reason"]


def test_file_over_max_bytes_fails(tmp_path):
    data = factories.onnx_classifier_bytes()
    report = _validate(tmp_path, data, max_bytes=len(data) - 1)
    _failed_at(report, "size", "over the")


def test_size_not_matching_declared_size_fails(tmp_path):
    data = factories.onnx_classifier_bytes()
    report = _validate(tmp_path, data, expected_size=len(data) + 10)
    _failed_at(report, "size", f"declared {len(data) + 10} bytes")


def test_empty_file_fails(tmp_path):
    _failed_at(_validate(tmp_path, b""), "size", "empty")


# --- format ----------------------------------------------------------------------------------------


def test_truncated_onnx_fails(tmp_path):
    report = _validate(tmp_path, factories.truncated_bytes())
    _failed_at(report, "format", "incomplete")


def test_random_bytes_fail(tmp_path):
    report = _validate(tmp_path, factories.random_bytes())
    _failed_at(report, "format", "not an ONNX model")


def test_pickle_renamed_onnx_is_named(tmp_path):
    report = _validate(tmp_path, factories.pickle_bytes())
    _failed_at(report, "format", "The file is a Python pickle, not an ONNX model")
    assert "torch.onnx.export" in report["reason"]


def test_zip_renamed_onnx_is_named(tmp_path):
    report = _validate(tmp_path, factories.zip_bytes())
    _failed_at(report, "format", "zip archive (containing 'model.onnx')")


@pytest.mark.parametrize(
    ("data", "reason_part"),
    [
        (factories.torch_checkpoint_bytes(), "PyTorch checkpoint"),
        (factories.html_bytes(), "HTML page"),
        (factories.hdf5_bytes(), "HDF5"),
        (factories.safetensors_bytes(), "safetensors"),
        (b"hello, this is a README\n", "text"),
    ],
)
def test_model_parse_names_other_formats(data, reason_part):
    with pytest.raises(validation.StepFailed, match=reason_part):
        validation.model_parse(data)


def test_model_parse_accepts_onnx():
    proto = validation.model_parse(factories.onnx_regressor_bytes())
    assert proto.graph.input[0].name == "features"


# --- external data -----------------------------------------------------------------------------------


def test_external_data_escaping_with_dotdot_fails(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    model_dir = tmp_path / "upload"
    model_dir.mkdir()
    report = _validate(model_dir, factories.onnx_external_data_bytes("../secret.bin"))
    step = _failed_at(report, "external_data", "escapes the model's folder")
    assert "'../secret.bin'" in step["detail"]


def test_external_data_absolute_path_fails(tmp_path):
    report = _validate(tmp_path, factories.onnx_external_data_bytes("/etc/passwd"))
    _failed_at(report, "external_data", "absolute path '/etc/passwd'")


def test_external_data_symlink_fails(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"\0" * 16)
    model_dir = tmp_path / "upload"
    model_dir.mkdir()
    os.symlink(outside / "secret.bin", model_dir / "weights.bin")
    report = _validate(model_dir, factories.onnx_external_data_bytes("weights.bin"))
    _failed_at(report, "external_data", "'weights.bin', which is a symbolic link")


def test_external_data_in_a_sibling_file_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    proto = onnx.load_model_from_string(factories.onnx_external_data_bytes("weights.bin"))
    problem = validation.external_data_problem(proto, source_dir=tmp_path)
    assert problem is not None and "separate file 'weights.bin'" in problem


# --- operators -----------------------------------------------------------------------------------


def test_custom_op_domain_fails(tmp_path):
    report = _validate(tmp_path, factories.onnx_custom_domain_bytes("com.evil", "Backdoor"))
    _failed_at(report, "operators", "'Backdoor' from the custom domain 'com.evil'")


def test_custom_op_inside_if_branch_is_found():
    proto = onnx.load_model_from_string(factories.onnx_custom_domain_in_subgraph_bytes("com.microsoft"))
    problem = validation.operator_problem(proto)
    assert problem is not None and "'com.microsoft'" in problem and "subgraph of If" in problem


def test_local_function_calls_are_allowed_but_their_bodies_are_checked():
    allowed = onnx.load_model_from_string(factories.onnx_local_function_bytes())
    assert validation.operator_problem(allowed) is None
    hidden = onnx.load_model_from_string(factories.onnx_local_function_bytes(body_domain="com.evil"))
    problem = validation.operator_problem(hidden)
    assert problem is not None and "'com.evil'" in problem and "function 'local.fns:Double'" in problem


# --- runtime behaviour in the sandbox --------------------------------------------------------------


@pytest.mark.parametrize(
    "dims",
    [
        (200_000, 200_000),  # 160 GB: more than any machine would grant
        (20_000, 20_000),  # 1.6 GB: this machine could grant it, so only RLIMIT_AS stops it
    ],
)
def test_huge_allocation_fails_on_memory_without_hurting_the_caller(tmp_path, dims):
    started = time.monotonic()
    report = _validate(tmp_path, factories.onnx_huge_allocation_bytes(dims), timeout_s=TIMEOUT_S)

    assert report["ok"] is False
    failed = next(step for step in report["steps"] if step["status"] == "failed")
    assert failed["key"] in ("load", "smoke")
    assert f"more memory than the {MEMORY_MB} MB validation limit" in report["reason"]
    assert time.monotonic() - started < TIMEOUT_S


def test_endless_loop_is_killed_at_the_timeout(tmp_path):
    started = time.monotonic()
    report = _validate(tmp_path, factories.onnx_slow_loop_bytes(), timeout_s=3)

    _failed_at(report, "smoke", "took longer than 3 s")
    assert time.monotonic() - started < 6


def test_sample_input_with_wrong_name_fails_naming_it(tmp_path):
    report = _validate(tmp_path, factories.onnx_regressor_bytes(), sample_input={"pixels": [[1.0, 2.0, 3.0]]})
    _failed_at(report, "smoke", "'pixels'")
    assert "'features'" in report["reason"]


def test_sample_input_with_wrong_shape_fails(tmp_path):
    report = _validate(tmp_path, factories.onnx_regressor_bytes(), sample_input={"features": [[1.0, 2.0]]})
    _failed_at(report, "smoke", "has shape [1, 2], but the model expects [-1, 3]")


def test_ir_version_newer_than_runtime_fails_at_load(tmp_path):
    report = _validate(tmp_path, factories.onnx_identity_bytes(ir_version=14))
    _failed_at(report, "load", "IR version 14")


def test_zipmap_output_is_refused_with_a_hint(tmp_path):
    report = _validate(tmp_path, factories.onnx_classifier_zipmap_bytes())
    _failed_at(report, "signature", "'zipmap': False")


def test_failing_on_step_callback_stops_the_sandbox_and_cleans_up(tmp_path):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    path = tmp_path / "model.onnx"
    path.write_bytes(factories.onnx_classifier_bytes())

    def on_step(step: dict) -> None:
        if step["key"] == "format":
            raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        artifact_validate(
            path=path,
            expected_size=None,
            expected_sha256=None,
            max_bytes=10**7,
            memory_limit_mb=MEMORY_MB,
            timeout_s=TIMEOUT_S,
            on_step=on_step,
            work_dir=work_dir,
        )
    assert list(work_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("returncode", "timed_out", "messages", "reason_part"),
    [
        (-9, True, [], "took longer than 7 s"),
        (-24, False, [], "took longer than 7 s"),  # SIGXCPU: RLIMIT_CPU
        (-9, False, [], "more memory than the 512 MB"),  # the kernel OOM killer
        (-11, False, [], "stopped by SIGSEGV"),
        (3, False, [{"type": "error", "kind": "memory"}], "more memory than the 512 MB"),
        (0, False, [], None),
    ],
)
def test_sandbox_outcome_reasons(returncode, timed_out, messages, reason_part):
    outcome = sandbox.SandboxOutcome(
        timeout_s=7, memory_limit_mb=512, returncode=returncode, timed_out=timed_out, messages=messages
    )
    reason = outcome.failure_reason()
    assert reason is None if reason_part is None else reason_part in reason


# --- runtime wrapper -----------------------------------------------------------------------------


def test_runtime_session_reports_the_provider_that_runs_and_signature():
    handle = runtime.session_create(model_bytes_or_path=factories.onnx_identity_bytes("INT32", (-1, 2)))
    assert handle.provider in handle.providers
    assert handle.provider in runtime.available_providers()
    assert runtime.session_signature(handle) == {
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "INT32", "shape": [-1, 2]}],
    }
    out = runtime.session_run(handle, {"x": np.array([[1, 2]], dtype=np.int32)})
    assert out["y"].tolist() == [[1, 2]]
    with pytest.raises(runtime.RuntimeFailure, match="Unknown input 'z'") as excinfo:
        runtime.session_run(handle, {"z": np.zeros((1, 2), dtype=np.int32)})
    assert excinfo.value.kind == "input"
    with pytest.raises(runtime.RuntimeFailure) as excinfo:
        runtime.session_run(handle, {"x": np.zeros((1, 2), dtype=np.float32)})
    assert excinfo.value.kind == "input" and "[ONNXRuntimeError]" not in excinfo.value.message


def test_runtime_load_error_is_translated():
    with pytest.raises(runtime.RuntimeFailure) as excinfo:
        runtime.session_create(model_bytes_or_path=b"not a model", prefer_gpu=False)
    assert excinfo.value.kind == "load"
    assert "[ONNXRuntimeError]" not in excinfo.value.message and ".cc:" not in excinfo.value.message


@pytest.mark.parametrize(
    ("onnx_type", "datatype", "np_dtype"),
    [
        ("tensor(float)", "FP32", np.float32),
        ("tensor(float16)", "FP16", np.float16),
        ("tensor(double)", "FP64", np.float64),
        ("tensor(int64)", "INT64", np.int64),
        ("tensor(uint8)", "UINT8", np.uint8),
        ("tensor(bool)", "BOOL", np.bool_),
        ("tensor(string)", "BYTES", np.object_),
        (onnx.TensorProto.INT8, "INT8", np.int8),
    ],
)
def test_datatype_mapping(onnx_type, datatype, np_dtype):
    assert runtime.onnx_type_to_datatype(onnx_type) == datatype
    assert runtime.datatype_to_numpy(datatype) == np.dtype(np_dtype)


def test_non_tensor_types_are_refused():
    with pytest.raises(runtime.RuntimeFailure) as excinfo:
        runtime.onnx_type_to_datatype("seq(map(int64,tensor(float)))")
    assert excinfo.value.kind == "type"


def test_runtime_datatypes_round_trip_through_numpy():
    for datatype in runtime.DATATYPES:
        assert runtime.numpy_to_datatype(runtime.datatype_to_numpy(datatype)) == datatype
    with pytest.raises(runtime.RuntimeFailure):
        runtime.datatype_to_numpy("BF16")
