"""CUDA's nvcc on PATH (issue 16, fault 5b): pycuda builds from source on the Jetson and needs nvcc, which JetPack
installs under /usr/local/cuda/bin but leaves off PATH. scripts/cuda_env.sh is the one place that puts it there
(CUDA_HOME, default /usr/local/cuda); scripts/env.sh and scripts/setup.sh both source it. A fake CUDA home with
an executable bin/nvcc stands in for the toolkit; the scripts themselves run for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_ENV = REPO / "scripts" / "cuda_env.sh"
ENV_SH = REPO / "scripts" / "env.sh"
SETUP_SH = REPO / "scripts" / "setup.sh"
BASE_PATH = "/usr/bin:/bin"  # no nvcc on it (checked below)


def _cuda_home(root: Path, *, executable: bool = True) -> Path:
    nvcc = root / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n")
    nvcc.chmod(0o755 if executable else 0o644)
    return root


def _source(shell: str, script: Path, env: dict[str, str], then: str = "") -> dict[str, str]:
    """Source a script in `shell` under `set -eu`, run `then`, and return the resulting environment."""
    command = f'set -eu; . "{script}"; {then} echo "--env--"; env'
    result = subprocess.run([shell, "-c", command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{shell}: sourcing {script.name} failed: {result.stderr}"
    head, _, tail = result.stdout.partition("--env--\n")
    variables = dict(line.split("=", 1) for line in tail.splitlines() if "=" in line)
    variables["__output__"] = head
    return variables


def _clean_env(**extra: str) -> dict[str, str]:
    env = {"PATH": BASE_PATH, "HOME": os.environ.get("HOME", "/root"), **extra}
    assert shutil.which("nvcc", path=BASE_PATH) is None, "this machine has an nvcc on /usr/bin: the tests need none"
    return env


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_a_cuda_home_with_nvcc_puts_nvcc_on_path(tmp_path, shell):
    home = _cuda_home(tmp_path / "cuda-12.6")
    after = _source(shell, CUDA_ENV, _clean_env(CUDA_HOME=str(home)), then="command -v nvcc; nvcc --version;")
    assert after["__output__"].splitlines() == [
        str(home / "bin" / "nvcc"),
        "Cuda compilation tools, release 12.6, V12.6.68",
    ]
    assert after["PATH"] == f"{home}/bin:{BASE_PATH}"
    assert after["CUDA_HOME"] == str(home)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_without_nvcc_nothing_changes(tmp_path, shell):
    empty = tmp_path / "no-cuda"
    empty.mkdir()
    after = _source(shell, CUDA_ENV, _clean_env(CUDA_HOME=str(empty)), then="command -v nvcc || echo none;")
    assert after["__output__"].strip() == "none"
    assert after["PATH"] == BASE_PATH
    not_executable = _cuda_home(tmp_path / "broken", executable=False)
    after = _source(shell, CUDA_ENV, _clean_env(CUDA_HOME=str(not_executable)))
    assert after["PATH"] == BASE_PATH


def test_sourcing_again_adds_cuda_once(tmp_path):
    home = _cuda_home(tmp_path / "cuda")
    after = _source("bash", CUDA_ENV, _clean_env(CUDA_HOME=str(home)), then=f'. "{CUDA_ENV}";')
    assert after["PATH"].split(":").count(f"{home}/bin") == 1


def test_the_default_cuda_home_is_jetpacks_usr_local_cuda(tmp_path):
    """CUDA_HOME unset: /usr/local/cuda, where JetPack installs the toolkit. A private mount namespace lays a
    tmpfs over /usr/local with a fake toolkit in it (root only); nothing outside the namespace sees it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a fake /usr/local/cuda in a private namespace")
    staged = _cuda_home(tmp_path / "cuda")
    script = (
        "mount -t tmpfs tmpfs /usr/local && mkdir -p /usr/local/cuda/bin && "
        f"cp -p '{staged}/bin/nvcc' /usr/local/cuda/bin/nvcc && "
        f'set -eu && . "{CUDA_ENV}" && command -v nvcc && echo "PATH=$PATH" && echo "CUDA_HOME=$CUDA_HOME"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and ("unshare" in result.stderr or "mount" in result.stderr):
        pytest.skip(f"no private mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "/usr/local/cuda/bin/nvcc",
        f"PATH=/usr/local/cuda/bin:{BASE_PATH}",
        "CUDA_HOME=/usr/local/cuda",
    ]


def test_env_sh_finds_nvcc_of_a_cuda_home(tmp_path):
    """`source scripts/env.sh` (the interactive environment, and the tests' own) with a CUDA toolkit."""
    home = _cuda_home(tmp_path / "cuda")
    env = _clean_env(CUDA_HOME=str(home), QC_PYTHON="3.99")  # a set-up that needs no system ROS 2
    after = _source("bash", ENV_SH, env, then="command -v nvcc;")
    assert after["__output__"].strip() == str(home / "bin" / "nvcc")
    assert after["CUDA_HOME"] == str(home)
    empty = tmp_path / "none"
    empty.mkdir()
    after = _source("bash", ENV_SH, _clean_env(CUDA_HOME=str(empty), QC_PYTHON="3.99"), then="command -v nvcc || :;")
    assert after["__output__"].strip() == "" and f"{empty}" not in after["PATH"]


def test_setup_sh_takes_nvcc_from_the_same_place():
    """setup.sh sources cuda_env.sh at its top (so pip's pycuda build sees nvcc) and has no CUDA path of its own."""
    text = SETUP_SH.read_text()
    source = re.search(r'^\. "\$ROOT/scripts/cuda_env\.sh"$', text, re.M)
    assert source, "setup.sh does not source scripts/cuda_env.sh"
    assert source.start() < text.index("install_python_dependencies() {")
    assert "/usr/local/cuda" not in "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r'^\. "\$_qc_root/scripts/cuda_env\.sh"$', ENV_SH.read_text(), re.M)


def test_cuda_env_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: `make setup` installs it (requirements/dev.txt)"
    result = subprocess.run([shellcheck, str(CUDA_ENV), str(SETUP_SH)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
