"""scripts/build_trt_engine.sh: the trtexec command it builds from a package, its refusal of a package whose
model does not match the manifest, and (on a machine with TensorRT) a real engine build.

Without a GPU, trtexec is replaced by a stand-in at the process boundary that records its arguments and
writes an engine file, as trtexec does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from qc_contract.model_manifest import TFLITE, Manifest, Preprocessing

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_trt_engine.sh"

FAKE_TRTEXEC = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_ARGS"
for a in "$@"; do case $a in --saveEngine=*) echo engine > "${a#--saveEngine=}" ;; esac; done
"""


def make_package(root: Path, model_bytes: bytes = b"onnx bytes", size: int = 96) -> Path:
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(model_bytes)
    Manifest(
        version="v-7",
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        size_bytes=len(model_bytes),
        architecture="efficientnet_lite0",
        preprocessing=Preprocessing(input_height=size, input_width=size, normalization=TFLITE),
    ).write(root)
    return root


@pytest.fixture
def fake_trtexec(tmp_path):
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(FAKE_TRTEXEC)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "TRTEXEC": str(exe), "FAKE_ARGS": str(tmp_path / "args.txt")}
    return env, tmp_path / "args.txt"


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_builds_the_trtexec_command_from_the_manifest(tmp_path, fake_trtexec):
    env, args_file = fake_trtexec
    package = make_package(tmp_path / "pkg")
    result = run([str(package), "--max-batch", "8", "--opt-batch", "2", "--", "--verbose"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    args = args_file.read_text().split("\n")
    assert f"--onnx={package}/model.onnx" in args
    assert "--minShapes=input:1x3x96x96" in args and "--optShapes=input:2x3x96x96" in args
    assert "--maxShapes=input:8x3x96x96" in args
    assert "--fp16" in args and "--memPoolSize=workspace:1024" in args and "--verbose" in args
    engine = tmp_path / "v-7_fp16_b8.engine"
    assert engine.read_text() == "engine\n", "engine moved into place under its final name"
    assert not list(tmp_path.glob("*.tmp.*"))


def test_fp32_and_explicit_output(tmp_path, fake_trtexec):
    env, args_file = fake_trtexec
    package = make_package(tmp_path / "pkg")
    out = tmp_path / "engines" / "m.engine"
    out.parent.mkdir()
    assert run([str(package), "--precision", "fp32", "--out", str(out)], env, tmp_path).returncode == 0
    assert "--fp16" not in args_file.read_text().split("\n") and out.is_file()


def test_refuses_a_model_that_does_not_match_the_manifest(tmp_path, fake_trtexec):
    env, args_file = fake_trtexec
    package = make_package(tmp_path / "pkg")
    (package / "model.onnx").write_bytes(b"tampered")
    result = run([str(package)], env, tmp_path)
    assert result.returncode != 0 and "does not match the manifest" in result.stderr
    assert not args_file.exists(), "trtexec must not run"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--precision", "int8"], "fp16 or fp32"), (["--max-batch", "0"], "positive"), (["--bogus"], "unknown")],
)
def test_bad_arguments(tmp_path, fake_trtexec, args, message):
    env, _ = fake_trtexec
    package = make_package(tmp_path / "pkg")
    result = run([str(package), *args], env, tmp_path)
    assert result.returncode != 0 and message in result.stderr


def test_not_a_package(tmp_path, fake_trtexec):
    env, _ = fake_trtexec
    result = run([str(tmp_path)], env, tmp_path)
    assert result.returncode != 0 and "not a model package" in result.stderr


@pytest.mark.gpu
def test_real_engine_build(tmp_path):
    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    if not Path(trtexec).is_file():
        pytest.skip("needs TensorRT's trtexec (a Jetson or an NVIDIA GPU machine)")
    from qc_cloud.training.export import export_onnx
    from qc_cloud.training.models import build_model

    model = build_model("efficientnet_lite0", input_size=96).eval()
    onnx_path = export_onnx(model, tmp_path / "model.onnx", input_size=96)
    package = make_package(tmp_path / "pkg", onnx_path.read_bytes(), size=96)
    result = run([str(package), "--max-batch", "2"], {**os.environ, "TRTEXEC": trtexec}, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "v-7_fp16_b2.engine").stat().st_size > 1000
    assert json.loads((package / "manifest.json").read_text())["version"] == "v-7"
