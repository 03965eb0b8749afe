"""A cloud install needs neither ROS nor the edge: qc_contract and qc_cloud, installed alone into a clean venv
where neither rclpy nor qc_cell can be imported, give a working `qc_cloud` command line.

How, without network (no test has one), and without touching the development venv:
1. `python -m venv --without-pip` creates an empty venv: its own site-packages, no system site-packages, and
   none of this environment's PYTHONPATH (the subprocesses run with a minimal environment).
2. The third-party packages come from this interpreter's site-packages, minus ROS: a folder of symbolic links to
   every entry there except what a ROS 2 distribution installed (the `ros-*` wheels: rclpy, rcl, rosidl_*, the
   message packages, ...; found through importlib.metadata), any qc_* package, and *.pth files. One .pth file in
   the new venv puts that folder on its path. (Under a system ROS, rclpy comes from /opt/ros through PYTHONPATH,
   which is cleared, so it is left out the same way.)
3. Copies of ros2_ws/src/qc_contract and ros2_ws/src/qc_cloud (so the build leaves nothing in the source tree)
   are installed with `pip install --no-deps --no-index --no-build-isolation`: from source, with the setuptools
   already there, no index asked.
4. The proof: in the venv `import rclpy` and `import qc_cell` fail, qc_contract and qc_cloud are the installed
   copies, `qc_cloud --help` lists the commands, `qc_cloud keys generate` writes a key pair, and `qc_cloud
   publish-model --chunks` signs a model package and publishes it to a real broker, where this test receives a
   manifest that verifies against the generated key and chunks that reassemble into the artifact it describes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from qc_cell.bringup.local_broker import Mosquitto, Subscriber
from qc_cell.inference.synthetic_models import write_package
from qc_contract import schemas, update_manifest

SRC = Path(__file__).resolve().parents[2]  # ros2_ws/src
CELL = ["--site", "plant1", "--line", "line2", "--cell", "cell3"]

pytestmark = pytest.mark.slow


def ros_entries() -> set[str]:
    """Top-level site-packages entries installed by ROS 2 distributions (the ros-* wheels)."""
    entries: set[str] = set()
    for dist in importlib.metadata.distributions():
        if (dist.metadata["Name"] or "").lower().replace("_", "-").startswith("ros-"):
            entries.update(f.parts[0] for f in dist.files or () if f.parts[0] != "..")
    return entries


def link_dependencies(folder: Path) -> Path:
    """A folder of links to this interpreter's site-packages entries, ROS and qc_* left out."""
    folder.mkdir()
    excluded = ros_entries()
    for site_dir in map(Path, site.getsitepackages()):
        for entry in sorted(site_dir.iterdir()) if site_dir.is_dir() else ():
            name = entry.name
            if name in excluded or name.startswith("qc_") or name.endswith(".pth") or name == "__pycache__":
                continue
            if not (folder / name).exists():
                (folder / name).symlink_to(entry)
    return folder


def run(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cloud_venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cloud_install")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(root), "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8"}
    python = str(venv / "bin" / "python")
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env, root)
    assert purelib.returncode == 0, purelib.stderr
    deps = link_dependencies(root / "host_site_packages")
    (Path(purelib.stdout.strip()) / "host_dependencies.pth").write_text(f"{deps}\n")
    sources = []
    for package in ("qc_contract", "qc_cloud"):
        copy = root / "src" / package
        shutil.copytree(SRC / package, copy, ignore=shutil.ignore_patterns("test", "__pycache__", "*.egg-info"))
        sources.append(str(copy))
    pip = [python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "-q"]
    installed = run([*pip, "--disable-pip-version-check", *sources], env, root, timeout=300)
    assert installed.returncode == 0, f"pip install failed:\n{installed.stdout}\n{installed.stderr}"
    return venv, env


def test_neither_ros_nor_the_edge_can_be_imported_there(cloud_venv):
    venv, env = cloud_venv
    python = str(venv / "bin" / "python")
    for module in ("rclpy", "qc_cell", "qc_interfaces"):
        result = run([python, "-c", f"import {module}"], env, venv)
        assert result.returncode != 0 and f"No module named '{module}'" in result.stderr, (module, result.stderr)
    for module in ("qc_contract", "qc_cloud"):
        where = run([python, "-c", f"import {module}; print({module}.__file__)"], env, venv)
        assert where.returncode == 0, where.stderr
        assert Path(where.stdout.strip()).is_relative_to(venv), f"{module} is not the installed copy: {where.stdout}"


def test_the_cloud_command_line_works_there(cloud_venv, tmp_path):
    venv, env = cloud_venv
    env = {**env, "QC_SIGNING_KEY_PASSPHRASE": "install-test passphrase"}  # never on the command line
    qc_cloud = str(venv / "bin" / "qc_cloud")
    help_text = run([qc_cloud, "--help"], env, tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert all(command in help_text.stdout for command in ("keys", "publish-model", "train", "watch")), help_text.stdout

    keys = run([qc_cloud, "keys", "generate", "--out", str(tmp_path / "keys")], env, tmp_path)
    assert keys.returncode == 0, keys.stdout + keys.stderr
    package = tmp_path / "pkg"
    write_package(package, "5.0.0")
    with Mosquitto() as broker:
        cloud = Subscriber("127.0.0.1", broker.port, "qc/plant1/line2/cell3/model/#")
        try:
            argv = [qc_cloud, "publish-model", str(package), "--key", str(tmp_path / "keys" / "model-signing.key"),
                    "--chunks", "--chunk-size", "4096", "--broker", broker.url, *CELL]  # fmt: skip
            published = run(argv, env, tmp_path)
            assert published.returncode == 0, published.stdout + published.stderr
            manifests = cloud.snapshot("/model/update")
            assert len(manifests) == 1, f"manifests received: {len(manifests)}"
            manifest = manifests[0].json()
            count = manifest["artifact"]["chunks"]["count"]
            assert cloud.wait_for(lambda: len(cloud.snapshot()) == 1 + count), "not every chunk arrived"
        finally:
            cloud.close()
    schemas.validator("model_update").validate(manifest)
    public = update_manifest.load_public_key(tmp_path / "keys" / "model-signing.pub")
    update_manifest.verify_signature(manifest, {manifest["key_id"]: public})
    chunks = {int(m.topic.rsplit("/", 1)[1]): m.payload for m in cloud.snapshot() if "/model/chunk/" in m.topic}
    artifact = b"".join(chunks[i] for i in range(count))
    assert (len(artifact), hashlib.sha256(artifact).hexdigest()) == (manifest["size"], manifest["sha256"])
    assert manifest["version"] == "5.0.0"
