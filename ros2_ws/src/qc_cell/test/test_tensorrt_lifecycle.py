"""The TensorRT backend's lifecycle: the node's pattern (load in one thread, run in another, close in a third),
hot swaps and failed loads leak no GPU or page-locked memory, one retained primary context per device that is
never detached, the builder settings (TF32 off for fp32, a batch-1 tuned profile, precision flags and their
absence in TensorRT 11), and engine names shared with build_trt_engine.sh.

Without a GPU the backend runs here against the fake TensorRT and pycuda in fake_gpu/ (the fake sits at the
library boundary only: the backend's code, the model, ONNX Runtime behind the fake engine and the engine cache
are real). Each fake test runs once per TensorRT release of JetPack 6: 8.6 (JetPack 6.0: named tensors beside
the deprecated bindings, explicit batch only on request) and 10.3 (6.1/6.2: named tensors only); none may call
a deprecated API. The tests marked gpu repeat the thread pattern on a device and skip elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qc_cell.inference.backends import (
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    availability,
    create_backend,
    tensorrt_backend,
)
from qc_cell.inference.backends.engine_cache import calibration_digest
from qc_cell.inference.synthetic_models import expected_probability, uniform_image, write_package
from qc_contract.model_manifest import Manifest
from qc_contract.preprocess import preprocess_batch

FAKE_GPU = Path(__file__).resolve().parent / "fake_gpu"
REPO = Path(__file__).resolve().parents[4]
BUILD_SCRIPT = REPO / "ros2_ws" / "src" / "qc_cloud" / "scripts" / "build_trt_engine.sh"


def _drop_gpu_modules() -> None:
    for name in [m for m in sys.modules if m == "tensorrt" or m.startswith(("tensorrt.", "pycuda"))]:
        del sys.modules[name]


# The TensorRT of each JetPack 6 release: 6.0 (L4T r36.3) ships 8.6.2, 6.1 and 6.2 (r36.4) ship 10.3.
JETPACK6_TENSORRT = ("8.6.2", "10.3.0")


@pytest.fixture(params=JETPACK6_TENSORRT, ids=lambda version: f"trt{version}")
def fake_gpu(monkeypatch, request):
    """The fake tensorrt (as the release in request.param) and pycuda.driver importable, a fresh ledger, no
    primary context retained yet. Afterwards: no deprecated TensorRT API was called."""
    monkeypatch.setenv("FAKE_TENSORRT_VERSION", request.param)
    _drop_gpu_modules()
    monkeypatch.syspath_prepend(str(FAKE_GPU))
    monkeypatch.setattr(tensorrt_backend, "_PRIMARY_CONTEXTS", {})
    import pycuda.driver
    import tensorrt

    assert tensorrt.__version__ == request.param
    pycuda.driver.LEDGER.reset()
    yield SimpleNamespace(cuda=pycuda.driver, trt=tensorrt, ledger=pycuda.driver.LEDGER)
    deprecated = list(tensorrt.DEPRECATED_CALLS)
    _drop_gpu_modules()
    assert deprecated == [], f"TensorRT {request.param}: deprecated API called: {deprecated}"


def _package(tmp_path: Path) -> tuple[Path, Manifest]:
    package = tmp_path / "pkg"
    return package, write_package(package, "1.0.0")


def _backend(package: Path, manifest: Manifest, tmp_path: Path, **options) -> tensorrt_backend.TensorRTBackend:
    options = {"precision": "fp32", "max_batch": 4, "engine_cache_dir": str(tmp_path / "engines"), **options}
    return tensorrt_backend.TensorRTBackend(package / manifest.model_file, manifest, BackendOptions(**options))


def _in_thread(name: str, work):
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def assert_nothing_leaked(ledger) -> None:
    assert ledger.device == {}, f"device allocations still alive: {len(ledger.device)}"
    assert ledger.host == set(), f"page-locked host allocations still alive: {len(ledger.host)}"
    assert ledger.pushes == ledger.pops, f"unbalanced context pushes/pops per thread: {ledger.pushes} / {ledger.pops}"


def test_load_run_close_in_three_threads_share_one_context_and_free_everything(fake_gpu, tmp_path):
    package, manifest = _package(tmp_path)
    backend = _in_thread("loader", lambda: _backend(package, manifest, tmp_path))
    images = [uniform_image(level) for level in (0, 40, 200)]
    batch = preprocess_batch(images, manifest.preprocessing)
    scores = _in_thread("runner", lambda: backend.run(batch, ["logit"])["logit"])
    expected = [expected_probability(image, manifest.preprocessing) for image in images]
    np.testing.assert_allclose(1 / (1 + np.exp(-scores.reshape(-1))), expected, atol=1e-5)
    _in_thread("closer", backend.close)
    assert set(fake_gpu.ledger.pushes) == {"loader", "runner", "closer"}
    assert fake_gpu.ledger.retained == 1 and fake_gpu.ledger.detached == 0
    assert_nothing_leaked(fake_gpu.ledger)
    with pytest.raises(BackendError, match="closed"):
        backend.run(batch, ["logit"])
    backend.close()  # twice is harmless


def test_hot_swaps_reuse_the_context_and_leak_nothing(fake_gpu, tmp_path):
    package, manifest = _package(tmp_path)
    first = _backend(package, manifest, tmp_path)
    assert "built engine" in first.describe()
    for _ in range(3):  # the node's swap: the new model loads while the old one still serves, then the old closes
        second = _backend(package, manifest, tmp_path)
        assert "cached engine" in second.describe()
        _in_thread("swap", first.close)
        first = second
    first.close()
    assert fake_gpu.ledger.retained == 1 and fake_gpu.ledger.detached == 0
    assert_nothing_leaked(fake_gpu.ledger)


def test_allocation_failing_half_way_frees_what_was_allocated(fake_gpu, tmp_path, monkeypatch):
    package, manifest = _package(tmp_path)
    monkeypatch.setenv("FAKE_CUDA_FAIL_ALLOC_AFTER", "1")  # the input's buffers succeed, the output's fails
    with pytest.raises(fake_gpu.cuda.Error, match="out of memory"):
        _backend(package, manifest, tmp_path)
    assert_nothing_leaked(fake_gpu.ledger)


def test_a_failed_load_leaves_nothing_behind(fake_gpu, tmp_path):
    package, manifest = _package(tmp_path)
    wrong = Manifest.from_dict({**manifest.to_dict(), "input_name": "pixels"})
    with pytest.raises(BackendError, match="exactly 'pixels' expected"):
        _backend(package, wrong, tmp_path)
    assert_nothing_leaked(fake_gpu.ledger)


def test_fp32_engines_run_without_tf32_and_the_profile_is_tuned_for_batch_one(fake_gpu, tmp_path):
    package, manifest = _package(tmp_path)
    _backend(package, manifest, tmp_path, max_batch=8).close()
    built = fake_gpu.trt.BUILDS[-1]
    assert "TF32" not in built["flags"] and "FP16" not in built["flags"]
    (low, opt, high) = built["profile"]
    assert (low[0], opt[0], high[0]) == (1, 1, 8)
    _backend(package, manifest, tmp_path, precision="fp16", max_batch=8).close()
    assert "FP16" in fake_gpu.trt.BUILDS[-1]["flags"]


@pytest.mark.parametrize("fake_gpu", ["11.0.0"], indirect=True)
def test_tensorrt_11_refuses_reduced_precision_clearly_and_runs_fp32(fake_gpu, tmp_path):
    package, manifest = _package(tmp_path)
    with pytest.raises(BackendError, match="no FP16 builder flag"):
        _backend(package, manifest, tmp_path, precision="fp16")
    with pytest.raises(BackendError, match="no INT8 builder flag"):
        _backend(package, manifest, tmp_path, precision="int8", int8_calibration_dir=str(tmp_path))
    assert fake_gpu.trt.BUILDS == []  # refused before any build
    backend = _backend(package, manifest, tmp_path)
    batch = preprocess_batch([uniform_image(128)], manifest.preprocessing)
    assert backend.run(batch, ["logit"])["logit"].shape[0] == 1
    backend.close()
    assert_nothing_leaked(fake_gpu.ledger)


@pytest.mark.parametrize("fake_gpu", ["8.6.2"], indirect=True)
def test_tensorrt_8_6_runs_the_named_tensor_api_on_an_explicit_batch_network(fake_gpu, tmp_path):
    """JetPack 6.0's TensorRT has both APIs: the feature check picks the named tensors (the fixture checks that
    no deprecated binding call was made), and the network is created explicit-batch, without which 8.x's ONNX
    parser refuses it."""
    trt = fake_gpu.trt
    assert hasattr(trt.IExecutionContext, "execute_async_v2") and hasattr(trt.IExecutionContext, "execute_async_v3")
    package, manifest = _package(tmp_path)
    backend = _backend(package, manifest, tmp_path)
    assert backend.describe().startswith("tensorrt 8.6.2 fp32") and "named-tensor API" in backend.describe()
    assert fake_gpu.trt.BUILDS[-1]["network_flags"] & 1, "8.x network created without EXPLICIT_BATCH"
    images = [uniform_image(level) for level in (10, 250)]
    scores = backend.run(preprocess_batch(images, manifest.preprocessing), ["logit"])["logit"]
    expected = [expected_probability(image, manifest.preprocessing) for image in images]
    np.testing.assert_allclose(1 / (1 + np.exp(-scores.reshape(-1))), expected, atol=1e-5)
    backend.close()
    assert_nothing_leaked(fake_gpu.ledger)


@pytest.mark.parametrize("fake_gpu", ["8.4.1"], indirect=True)
def test_tensorrt_without_the_named_tensor_api_is_refused_clearly(fake_gpu, tmp_path):
    package, manifest = _package(tmp_path)
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8\.4\.1 lacks the named-tensor API .*8\.5 or newer"):
        _backend(package, manifest, tmp_path)
    assert fake_gpu.trt.BUILDS == [] and fake_gpu.ledger.retained == 0


def test_int8_calibration_images_are_part_of_the_keys(tmp_path):
    import cv2

    first, second = tmp_path / "a", tmp_path / "b"
    for folder, level in ((first, 40), (second, 41)):
        folder.mkdir()
        cv2.imwrite(str(folder / "part.png"), uniform_image(level))
    assert calibration_digest([first / "part.png"]) != calibration_digest([second / "part.png"])
    assert calibration_digest([first / "part.png"]) == calibration_digest([first / "part.png"])


def test_int8_engines_calibrate_on_the_images_and_the_caches_follow_them(fake_gpu, tmp_path):
    import cv2

    package, manifest = _package(tmp_path)
    images = tmp_path / "calibration"
    images.mkdir()
    for level in (30, 90, 220):
        cv2.imwrite(str(images / f"part{level}.png"), uniform_image(level))
    _backend(package, manifest, tmp_path, precision="int8", int8_calibration_dir=str(images)).close()
    cv2.imwrite(str(images / "part250.png"), uniform_image(250))  # another calibration set
    second = _backend(package, manifest, tmp_path, precision="int8", int8_calibration_dir=str(images))
    assert "built engine" in second.describe(), "an engine calibrated on other images was reused"
    second.close()
    assert len(list((tmp_path / "engines").glob("*.calibration"))) == 2
    assert "INT8" in fake_gpu.trt.BUILDS[-1]["flags"]
    assert_nothing_leaked(fake_gpu.ledger)


FAKE_TRTEXEC = """#!/usr/bin/env python3
import os, sys
sys.path.insert(0, os.environ["FAKE_GPU"])
import tensorrt
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
name, low = args["--minShapes"].split(":")
opt, high = args["--optShapes"].split(":")[1], args["--maxShapes"].split(":")[1]
dims = [[int(d) for d in s.split("x")] for s in (low, opt, high)]
with open(os.environ["TRTEXEC_ARGS"], "w") as f:
    f.write("\\n".join(sys.argv[1:]))
blob = tensorrt.engine_bytes(args["--onnx"], dims)
open(args["--saveEngine"], "wb").write(blob)
"""


def test_build_script_engines_land_in_the_nodes_cache_under_its_names(fake_gpu, tmp_path):
    package, manifest = _package(tmp_path)
    trtexec = tmp_path / "trtexec"
    trtexec.write_text(FAKE_TRTEXEC)
    trtexec.chmod(0o755)
    cache = tmp_path / "engines"
    env = {
        **os.environ,
        "TRTEXEC": str(trtexec),
        "TRTEXEC_ARGS": str(tmp_path / "trtexec.args"),
        "FAKE_GPU": str(FAKE_GPU),
        "PYTHONPATH": os.pathsep.join([str(FAKE_GPU), os.environ.get("PYTHONPATH", "")]),
        "FAKE_TENSORRT_VERSION": fake_gpu.trt.__version__,
    }
    command = ["bash", str(BUILD_SCRIPT), str(package), "--precision", "fp32", "--max-batch", "4"]
    result = subprocess.run([*command, "--cache-dir", str(cache)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    trtexec_args = (tmp_path / "trtexec.args").read_text().split()
    spec = manifest.preprocessing
    assert "--noTF32" in trtexec_args
    assert f"--optShapes={manifest.input_name}:1x3x{spec.input_height}x{spec.input_width}" in trtexec_args
    [engine] = cache.glob("*.engine")
    backend = _backend(package, manifest, tmp_path)  # the node, same settings, same cache
    assert backend.describe().endswith(f"cached engine {engine.name}"), backend.describe()
    backend.close()
    assert fake_gpu.trt.BUILDS == []  # the node built nothing: it loaded the script's engine


@pytest.mark.gpu
@pytest.mark.skipif(not availability("tensorrt")[0], reason=f"TensorRT not usable: {availability('tensorrt')[1]}")
def test_gpu_load_run_close_in_three_threads(tmp_path):
    """The node's real pattern on a device: no `invalid device context`, and the memory comes back."""
    import pycuda.driver as cuda

    package, manifest = _package(tmp_path)
    options = BackendOptions(precision="fp32", max_batch=2, engine_cache_dir=str(tmp_path / "engines"))
    free_before = None
    for _ in range(3):  # hot swaps: loaded, used and closed by three different threads each time
        backend = _in_thread("loader", lambda: create_backend("tensorrt", package / "model.onnx", manifest, options))
        if free_before is None:
            with tensorrt_backend.CudaContext.for_device(0).active():
                free_before = cuda.mem_get_info()[0]
        batch = preprocess_batch([uniform_image(100)], manifest.preprocessing)
        _in_thread("runner", lambda: backend.run(batch, ["logit"]))  # noqa: B023 (joined before the next turn)
        _in_thread("closer", backend.close)
    with tensorrt_backend.CudaContext.for_device(0).active():
        assert cuda.mem_get_info()[0] >= free_before - (16 << 20)  # no engine or buffer left behind
