"""Backend conformance: every backend gives the same answers for the same model package, through the same
interface. Runs on every backend available here; TensorRT (tests marked gpu) skips without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from qc_cell.inference.backends import (
    BACKEND_NAMES,
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    availability,
    create_backend,
    resolve_backend,
)
from qc_cell.inference.backends.engine_cache import EngineCache, EngineKey, load_or_create_key
from qc_cell.inference.backends.input_shape import resolve_max_batch
from qc_cell.inference.model import LoadedModel
from qc_cell.inference.synthetic_models import expected_probability, uniform_image, write_package
from qc_contract.model_manifest import Manifest
from qc_contract.preprocess import preprocess_batch

LEVELS = (0, 40, 128, 200, 255)


def _backend_param(name: str):
    marks = [pytest.mark.gpu] if name == "tensorrt" else []
    usable, why = availability(name)
    if not usable:
        marks.append(pytest.mark.skip(reason=f"{name} not usable on this machine: {why}"))
    return pytest.param(name, marks=marks, id=name)


BACKENDS = [_backend_param(name) for name in BACKEND_NAMES]


def _options(name: str, tmp_path, **kw) -> BackendOptions:
    precision = "fp32"  # conformance compares against exact NumPy math; fp16 is checked separately
    return BackendOptions(precision=precision, engine_cache_dir=str(tmp_path / "engines"), **kw)


def _load(name, package, tmp_path, **kw):
    manifest = Manifest.load(package)
    backend = create_backend(name, package / manifest.model_file, manifest, _options(name, tmp_path, **kw))
    return manifest, backend


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kind", ["brightness", "softmax", "probability"])
def test_scores_match_the_known_weights_at_every_batch_size(backend_name, kind, tmp_path):
    package = tmp_path / "pkg"
    write_package(package, "1.0.0", kind=kind)
    manifest, backend = _load(backend_name, package, tmp_path, max_batch=4)
    model = LoadedModel(package, manifest, backend)
    try:
        assert backend.name == backend_name and backend.max_batch == 4
        images = [uniform_image(level) for level in LEVELS[:4]]
        expected = [expected_probability(im, manifest.preprocessing, kind) for im in images]
        for size in (1, 3, 4):
            scores = model.score(preprocess_batch(images[:size], manifest.preprocessing))
            np.testing.assert_allclose(scores.probabilities, expected[:size], atol=1e-5)
            assert scores.problems == [None] * size
            assert scores.inference_ms > 0
    finally:
        model.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_features_output_and_heatmap(backend_name, tmp_path):
    package = tmp_path / "pkg"
    write_package(package, "1.0.0", input_hw=(16, 24))
    manifest, backend = _load(backend_name, package, tmp_path, max_batch=2)
    model = LoadedModel(package, manifest, backend)
    try:
        image = uniform_image(90)
        image[:, 32:] = 250  # right half bright: the CAM must be hotter there
        scores = model.score(preprocess_batch([image, uniform_image(10)], manifest.preprocessing), want_features=True)
        assert scores.features is not None and scores.features.shape == (2, 4, 16, 24)
        cam = model.heatmap(scores.features[0])
        assert cam.shape == (16, 24) and cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
        assert cam[:, 14:].mean() > cam[:, :10].mean()
        assert model.score(preprocess_batch([image], manifest.preprocessing)).features is None  # not asked for
    finally:
        model.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_nan_outputs_are_flagged_per_part(backend_name, tmp_path):
    package = tmp_path / "pkg"
    write_package(package, "1.0.0", kind="nan_when_dark", golden_levels=(200,))
    manifest, backend = _load(backend_name, package, tmp_path, max_batch=3)
    model = LoadedModel(package, manifest, backend)
    try:
        batch = preprocess_batch([uniform_image(0), uniform_image(230), uniform_image(5)], manifest.preprocessing)
        scores = model.score(batch)
        assert scores.problems == ["nan_output", None, "nan_output"]
        assert np.isnan(scores.probabilities[[0, 2]]).all()
        assert 0.5 < scores.probabilities[1] < 1.0
    finally:
        model.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_fixed_batch_model_serves_one_at_a_time(backend_name, tmp_path):
    package = tmp_path / "pkg"
    write_package(package, "1.0.0", dynamic_batch=False)
    _, backend = _load(backend_name, package, tmp_path, max_batch=8)
    try:
        assert backend.max_batch == 1
        with pytest.raises(BackendError, match=r"batch of 2 outside 1\.\.1"):
            backend.run(np.zeros((2, 3, 32, 32), np.float32), ["logit"])
    finally:
        backend.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_model_with_the_wrong_input_shape_is_refused_at_load(backend_name, tmp_path):
    package = tmp_path / "pkg"
    write_package(package, "1.0.0", input_hw=(48, 48))  # exported at 48x48 ...
    manifest = Manifest.load(package)
    wrong = Manifest.from_dict(
        {**manifest.to_dict(), "preprocessing": {**manifest.to_dict()["preprocessing"], "input_height": 32}}
    )  # ... but the manifest says 32x48
    with pytest.raises(BackendError, match=r"manifest says \(N, 3, 32, 48\)"):
        create_backend(backend_name, package / "model.onnx", wrong, _options(backend_name, tmp_path))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_model_file_gives_a_clear_error(backend_name, damage, tmp_path):
    package = tmp_path / "pkg"
    write_package(package, "1.0.0")
    model_file = package / "model.onnx"
    data = model_file.read_bytes()
    model_file.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not onnx" * 50, "empty": b""}[damage])
    with pytest.raises(BackendError, match=r"model\.onnx"):
        create_backend(backend_name, model_file, Manifest.load(package), _options(backend_name, tmp_path))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_wrong_input_batches_are_refused_before_the_runtime(backend_name, tmp_path):
    package = tmp_path / "pkg"
    write_package(package, "1.0.0")
    _, backend = _load(backend_name, package, tmp_path, max_batch=2)
    try:
        with pytest.raises(BackendError, match="float32 NCHW"):
            backend.run(np.zeros((1, 3, 32, 32), np.float64), ["logit"])
        with pytest.raises(BackendError, match="does not match"):
            backend.run(np.zeros((1, 3, 32, 16), np.float32), ["logit"])
        with pytest.raises(BackendError, match="batch of 3"):
            backend.run(np.zeros((3, 3, 32, 32), np.float32), ["logit"])
    finally:
        backend.close()


def test_manifest_output_name_must_exist(tmp_path):
    package = tmp_path / "pkg"
    manifest = write_package(package, "1.0.0")
    wrong = Manifest.from_dict({**manifest.to_dict(), "output": {**manifest.to_dict()["output"], "name": "score"}})
    backend = create_backend("onnxruntime", package / "model.onnx", wrong, BackendOptions())
    with pytest.raises(BackendError, match="no output 'score'"):
        LoadedModel(package, wrong, backend)
    backend.close()


def test_onnxruntime_refuses_reduced_precision(tmp_path):
    package = tmp_path / "pkg"
    manifest = write_package(package, "1.0.0")
    with pytest.raises(BackendError, match="fp32 only"):
        create_backend("onnxruntime", package / "model.onnx", manifest, BackendOptions(precision="fp16"))


def test_auto_says_which_backend_and_why():
    choice = resolve_backend("auto", "fp16")
    trt_usable, why = availability("tensorrt")
    if trt_usable:
        assert (choice.name, choice.precision) == ("tensorrt", "fp16")
    else:
        assert (choice.name, choice.precision) == ("onnxruntime", "fp32")
        assert why in choice.message and "fp16 requested" in choice.message


def test_an_explicit_backend_that_is_unusable_is_an_error_not_a_fallback():
    if availability("tensorrt")[0]:
        pytest.skip("TensorRT is usable here")
    with pytest.raises(BackendUnavailableError, match="tensorrt requested but unusable"):
        resolve_backend("tensorrt", "fp16")
    with pytest.raises(BackendError, match="fp32 only"):
        resolve_backend("onnxruntime", "int8")


@pytest.mark.parametrize(
    ("declared", "wanted", "expected"),
    [(["batch", 3, 32, 32], 4, 4), ([None, 3, 32, 32], 2, 2), ([1, 3, 32, 32], 8, 1), ([-1, 3, "h", "w"], 3, 3)],
)
def test_input_shape_resolution(declared, wanted, expected):
    assert resolve_max_batch(declared, "input", (3, 32, 32), wanted) == expected


@pytest.mark.parametrize(
    ("declared", "message"),
    [([4, 3, 32, 32], "fixed batch of 4"), ([1, 1, 32, 32], "axis 1"), ([1, 3, 32], "4-D NCHW")],
)
def test_input_shape_mismatches(declared, message):
    with pytest.raises(BackendError, match=message):
        resolve_max_batch(declared, "input", (3, 32, 32), 4)


def test_engine_cache_key_and_atomic_store(tmp_path):
    key = EngineKey("ab" * 32, "10.3.0", "Orin (nvgpu)", "fp16", 4, (3, 224, 224), "8.7")
    name = key.file_name()
    assert name.startswith("abababababab_trt10.3.0_orin-nvgpu_fp16_b4_") and name.endswith(".engine")
    # Every part of the key changes the file: an engine is never reused across TensorRT, GPU or precision.
    for changed in (
        EngineKey("cd" * 32, "10.3.0", "Orin (nvgpu)", "fp16", 4, (3, 224, 224), "8.7"),
        EngineKey("ab" * 32, "8.6.2", "Orin (nvgpu)", "fp16", 4, (3, 224, 224), "8.7"),
        EngineKey("ab" * 32, "10.3.0", "Xavier", "fp16", 4, (3, 224, 224), "7.2"),
        EngineKey("ab" * 32, "10.3.0", "Orin (nvgpu)", "int8", 4, (3, 224, 224), "8.7"),
        EngineKey("ab" * 32, "10.3.0", "Orin (nvgpu)", "fp16", 1, (3, 224, 224), "8.7"),
    ):
        assert changed.file_name() != name
    cache = EngineCache(tmp_path / "engines", load_or_create_key(tmp_path / "engines" / ".engine_hmac.key"))
    assert cache.load(key) is None
    path = cache.store(key, b"engine-bytes")
    assert cache.load(key) == b"engine-bytes" and path.with_suffix(".json").is_file()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temp files left
    cache.discard(key)
    assert cache.load(key) is None


@pytest.mark.gpu
@pytest.mark.skipif(not availability("tensorrt")[0], reason=f"TensorRT not usable: {availability('tensorrt')[1]}")
def test_tensorrt_fp16_engine_is_cached_and_close_to_fp32(tmp_path):
    package = tmp_path / "pkg"
    manifest = write_package(package, "1.0.0")
    cache_dir = tmp_path / "engines"
    options = BackendOptions(precision="fp16", max_batch=2, engine_cache_dir=str(cache_dir))
    first = create_backend("tensorrt", package / "model.onnx", manifest, options)
    assert "built engine" in first.describe()
    batch = preprocess_batch([uniform_image(40), uniform_image(200)], manifest.preprocessing)
    fp16 = LoadedModel(package, manifest, first).score(batch).probabilities
    first.close()
    second = create_backend("tensorrt", package / "model.onnx", manifest, options)
    assert "cached engine" in second.describe()
    np.testing.assert_allclose(LoadedModel(package, manifest, second).score(batch).probabilities, fp16, atol=1e-3)
    second.close()
    assert len(list(cache_dir.glob("*.engine"))) == 1
    expected = [expected_probability(uniform_image(level), manifest.preprocessing) for level in (40, 200)]
    np.testing.assert_allclose(fp16, expected, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not availability("tensorrt")[0], reason=f"TensorRT not usable: {availability('tensorrt')[1]}")
def test_tensorrt_rebuilds_a_cached_engine_that_fails_its_keyed_digest(tmp_path):
    package = tmp_path / "pkg"
    manifest = write_package(package, "1.0.0")
    options = _options("tensorrt", tmp_path)
    create_backend("tensorrt", package / "model.onnx", manifest, options).close()
    (engine,) = (tmp_path / "engines").glob("*.engine")
    engine.write_bytes(engine.read_bytes()[:-1] + b"\0")  # never handed to TensorRT's deserialiser
    again = create_backend("tensorrt", package / "model.onnx", manifest, options)
    assert "built engine" in again.describe(), again.describe()
    again.close()


@pytest.mark.gpu
@pytest.mark.skipif(not availability("tensorrt")[0], reason=f"TensorRT not usable: {availability('tensorrt')[1]}")
def test_tensorrt_runs_from_a_thread_other_than_the_loading_one(tmp_path):
    """The classic `invalid device context`: engine built in one thread, executed in another."""
    import threading

    package = tmp_path / "pkg"
    manifest = write_package(package, "1.0.0")
    backend = create_backend("tensorrt", package / "model.onnx", manifest, _options("tensorrt", tmp_path))
    results, errors = [], []

    def worker():
        try:
            results.append(backend.run(preprocess_batch([uniform_image(100)], manifest.preprocessing), ["logit"]))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
        t.join()
    backend.close()
    assert errors == [] and len(results) == 3
