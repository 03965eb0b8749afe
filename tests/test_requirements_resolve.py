"""Every requirement set resolves for every target that installs it: JetPack 6 (aarch64 / Python 3.10, the image
and `make setup` on a system Humble), the x86 image (x86_64 / Python 3.12), and this machine. The resolutions
ask PyPI (pip's own resolver, dry run), so they are marked slow; the pin checks are static."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from requirement_sets import (
    CONSTRAINTS,
    JETPACK6,
    JETSON_IMAGE,
    JETSON_SYSTEM_ROS,
    REPO,
    X86_IMAGE,
    X86_IMAGE_SET,
    InstallSet,
    Target,
    _pip,
    conflicting_pins,
    find_python,
    major,
    requirements_for,
    resolve,
)

DOCKER = REPO / "docker"
CROSS = [(JETSON_IMAGE, JETPACK6), (JETSON_SYSTEM_ROS, JETPACK6), (X86_IMAGE_SET, X86_IMAGE)]
IDS = ["jetson-image", "jetson-make-setup", "x86-image"]


def dockerfile_requirement_files(dockerfile: Path) -> list[str]:
    """The requirement files an image copies in for its pip install (everything but the constraints)."""
    copied = re.findall(r"^COPY\s+(.+?)\s+/opt/qc/requirements/", dockerfile.read_text(), re.MULTILINE)
    files = [f for line in copied for f in line.split() if f.endswith(".txt")]
    return [f for f in files if Path(f).name != CONSTRAINTS.name]


@pytest.mark.parametrize(
    ("dockerfile", "install", "target"),
    [("Dockerfile.jetson", JETSON_IMAGE, JETPACK6), ("Dockerfile", X86_IMAGE_SET, X86_IMAGE)],
)
def test_each_image_installs_the_set_that_is_resolved_here(dockerfile, install, target):
    assert dockerfile_requirement_files(DOCKER / dockerfile) == [f"requirements/{f}" for f in install.files]


@pytest.mark.parametrize(("dockerfile", "target"), [("Dockerfile.jetson", JETPACK6), ("Dockerfile", X86_IMAGE)])
def test_no_package_is_pinned_twice_in_an_image(dockerfile, target):
    files = tuple(str(Path(f).relative_to("requirements")) for f in dockerfile_requirement_files(DOCKER / dockerfile))
    requirements = requirements_for(InstallSet(dockerfile, files, system_opencv=True), target)
    assert conflicting_pins(requirements) == {}


@pytest.mark.parametrize(("install", "target"), CROSS, ids=IDS)
def test_no_package_is_pinned_twice_in_a_set(install, target):
    assert conflicting_pins(requirements_for(install, target)) == {}


def test_the_jetson_gets_pycuda_and_jetson_gpio_from_one_pin_each():
    names = [canonicalize_name(r.name) for r in requirements_for(JETSON_IMAGE, JETPACK6)]
    assert names.count("pycuda") == 1 and names.count("jetson-gpio") == 1
    x86 = [canonicalize_name(r.name) for r in requirements_for(X86_IMAGE_SET, X86_IMAGE)]
    assert "pycuda" not in x86 and "jetson-gpio" not in x86


def _interpreter(target: Target) -> str:
    python = find_python(target.python)
    if python is None:
        pytest.skip(f"no Python {target.python} interpreter here (PATH or pyenv): cannot resolve for {target.name}")
    return python


@pytest.mark.slow
@pytest.mark.parametrize(("install", "target"), CROSS, ids=IDS)
def test_requirement_set_resolves_for_its_target(install, target):
    resolution = resolve(install, target, _interpreter(target))
    # The images and the system ROS 2 keep NumPy 1.x (the apt-built rclpy, cv_bridge and OpenCV).
    assert major(resolution.installed["numpy"]) == 1
    assert "opencv-python-headless" not in resolution.installed
    if target.machine == "aarch64":
        assert {"pycuda", "jetson-gpio"} <= set(resolution.source_built)
    if "dev.txt" in install.files:
        assert {"pytest", "hypothesis", "check-jsonschema", "onnx"} <= set(resolution.installed)


@pytest.mark.slow
def test_make_setup_set_resolves_on_this_machine():
    """`make setup` without a system ROS 2 (edge, dev, cloud, fleet) on this interpreter: the real resolution."""
    args = [
        a for f in ("edge.txt", "dev.txt", "cloud.txt", "fleet.txt") for a in ("-r", str(REPO / "requirements" / f))
    ]
    result = _pip(sys.executable, "install", "--dry-run", "--ignore-installed", "--quiet", *args)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_edge_and_dev_requirements_resolve_in_a_python310_venv(tmp_path):
    """Humble's Python is 3.10: a real venv on a 3.10 interpreter resolves edge + dev with the NumPy 1.x
    constraint, as `make setup` installs them on JetPack 6 (dry run: onnxruntime and friends are large)."""
    python = _interpreter(JETPACK6)
    venv = tmp_path / "venv310"
    created = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    # As scripts/setup.sh does with a system ROS 2: edge.txt without the OpenCV wheel (apt's python3-opencv).
    edge = tmp_path / "edge-system-ros.txt"
    lines = (REPO / "requirements" / "edge.txt").read_text().splitlines()
    edge.write_text("".join(f"{line}\n" for line in lines if not re.match(r"\s*opencv-(contrib-)?python", line, re.I)))
    report = tmp_path / "report.json"
    args = ["-r", str(edge), "-r", str(REPO / "requirements" / "dev.txt"), "-c", str(CONSTRAINTS)]
    result = _pip(str(venv / "bin" / "python"), "install", "--dry-run", "--quiet", "--report", str(report), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    assert chosen["hypothesis"] == "6.168.5" and chosen["check-jsonschema"] == "0.38.2"
    assert major(chosen["numpy"]) == 1


def test_setup_for_a_python_that_is_not_here_says_so_and_exits_3():
    """`make test-py310` turns exit 3 into a skip with the reason; nothing is created before the check."""
    # Without the distribution/interpreter a sourced env.sh may have chosen (make test-jazzy exports QC_ROS_DISTRO).
    env = {k: v for k, v in os.environ.items() if k not in ("QC_ROS_DISTRO", "QC_PYTHON")}
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh"), "--python", "3.99"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 3 and "no Python 3.99 (PATH or pyenv)" in result.stderr
    assert not (REPO / ".venv-py399").exists()
