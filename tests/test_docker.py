"""The container images, checked without a Docker engine (none on these machines): hadolint on every
Dockerfile, every COPY source present and inside the build context (.dockerignore), the entrypoint under
bash -n, shellcheck and in dry-run mode, the compose file against the compose-spec JSON schema and against
the images it builds, and the broker's authentication and ACL on a real mosquitto."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from qc_cell.bringup import params_file
from qc_cell.bringup.local_broker import free_port, mosquitto_binary

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = DOCKER / "compose.yaml"
LAUNCH = ["ros2", "launch", "qc_bringup", "inspection_cell.launch.py"]
VOLUMES = {  # named volume -> mount point in the cell containers
    "qc_models": "/var/lib/qc/models",
    "qc_outbox": "/var/lib/qc/outbox",
    "qc_engine_cache": "/var/lib/qc/engine_cache",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: `make setup` installs it (requirements/dev.txt)"
    return path


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- .dockerignore ------------------------------------------------------------------------------------------
class DockerIgnore:
    """The build context's .dockerignore, matched like Docker does: patterns in order, the last match wins,
    a pattern also matches everything below a directory it matches, `**` spans directories, `!` re-includes."""

    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line[1:].strip() if negate else line
            self.rules.append((negate, re.compile(self._regex(os.path.normpath(pattern).lstrip("/")))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out + "(?:/.*)?"  # the path itself, or anything below it

    def included(self, path: str) -> bool:
        included = True
        for negate, regex in self.rules:
            if regex.fullmatch(path):
                included = negate
        return included


def test_dockerignore_matcher_follows_docker_semantics(tmp_path):
    ignore_file = tmp_path / ".dockerignore"
    ignore_file.write_text("*\n!src/\nsrc/**/cache\n!keep.txt\n")
    ignore = DockerIgnore(ignore_file)
    assert ignore.included("src/a/b.py")
    assert not ignore.included("src/a/cache/x")
    assert not ignore.included("src/cache")
    assert ignore.included("keep.txt")
    assert not ignore.included("other/keep.txt")
    assert not ignore.included("README.md")


# ---- Dockerfiles --------------------------------------------------------------------------------------------
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped, as docker does."""
    result, current = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
            current = ""
    return result


def copy_sources(dockerfile: Path) -> list[str]:
    """Sources of COPY/ADD from the build context (not --from=<stage>)."""
    sources = []
    for keyword, args in instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        if any(flag.startswith("--from=") for flag in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"{dockerfile.name}: COPY needs a source and a destination: {args}"
        sources += paths[:-1]
    return sources


def test_there_are_two_dockerfiles():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.jetson"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run(
        [tool("hadolint"), "--config", str(DOCKER / ".hadolint.yaml"), "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_config_still_catches_problems(tmp_path):
    """The config must not silence hadolint: a sloppy Dockerfile still fails (untagged base, root user...)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    result = subprocess.run(
        [tool("hadolint"), "--config", str(DOCKER / ".hadolint.yaml"), "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3006", "DL3009", "DL3013", "DL3015"} <= codes, codes
    assert result.returncode != 0


def test_every_hadolint_ignore_is_explained():
    config = DOCKER / ".hadolint.yaml"
    ignored = yaml.safe_load(config.read_text()).get("ignored", [])
    lines = config.read_text().splitlines()
    for rule in ignored:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[index - 1].strip().startswith("#"), f"{rule} is ignored without a comment saying why"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    ignore = DockerIgnore(REPO / ".dockerignore")
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing?"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"{dockerfile.name}: COPY {source}: no such path in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        sent = [f for f in files if ignore.included(f.relative_to(REPO).as_posix())]
        assert sent, f"{dockerfile.name}: COPY {source}: excluded from the build context by .dockerignore"


def test_workspace_symlinks_resolve_inside_the_copied_tree():
    """ros2_ws/src/qc_interfaces/msg -> ../../../msg etc.: the target must be copied beside ros2_ws too."""
    ignore = DockerIgnore(REPO / ".dockerignore")
    links = [p for p in (REPO / "ros2_ws" / "src").rglob("*") if p.is_symlink()]
    assert {p.relative_to(REPO).as_posix() for p in links} >= {
        "ros2_ws/src/qc_interfaces/msg",
        "ros2_ws/src/qc_bringup/launch",
        "ros2_ws/src/qc_bringup/params",
    }
    copied = set()
    for dockerfile in DOCKERFILES:
        copied |= {s.rstrip("/") for s in copy_sources(dockerfile)}
    for link in links:
        target = link.resolve().relative_to(REPO).as_posix()
        assert target in copied, f"{link.relative_to(REPO)} -> {target}, which the Dockerfiles do not COPY"
        assert ignore.included(target + "/x"), f"{target} is excluded by .dockerignore"


def test_build_stage_installs_the_launch_file_and_the_params_files(tmp_path):
    """The images' build stage, for qc_bringup: the COPY layout (msg/, launch/, params/ beside ros2_ws/src) and
    colcon build on the interpreter that runs colcon. `ros2 launch qc_bringup inspection_cell.launch.py` and the
    images' default QC_PARAMS_FILE need real files in share/qc_bringup, not the source tree's symlinks (which
    dangle once installed)."""
    context = tmp_path / "src"
    for folder in ("msg", "launch", "params"):
        shutil.copytree(REPO / folder, context / folder, symlinks=True)
    package = Path("ros2_ws/src/qc_bringup")
    shutil.copytree(REPO / package, context / package, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    install = tmp_path / "install"
    result = subprocess.run(
        [sys.executable, tool("colcon"), "--log-base", str(tmp_path / "log"), "build", "--base-paths", "src",
         "--build-base", str(tmp_path / "build"), "--install-base", str(install), "--packages-select", "qc_bringup",
         "--cmake-args", "-DBUILD_TESTING=OFF"],
        cwd=context / "ros2_ws", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    share = install / "qc_bringup" / "share" / "qc_bringup"
    for relative in ("launch/inspection_cell.launch.py", "params/cell.yaml", "params/jetson.yaml", "params/demo.yaml"):
        folder = share / relative.split("/")[0]
        assert not folder.is_symlink() and (share / relative).is_file(), (
            f"share/qc_bringup/{relative} is not installed as a file ({folder} -> "
            f"{os.readlink(folder) if folder.is_symlink() else 'missing'}): install the directories the "
            "symlinks point to, e.g. get_filename_component(REALPATH) in ros2_ws/src/qc_bringup/CMakeLists.txt"
        )


def test_secrets_and_local_state_stay_out_of_the_build_context():
    ignore = DockerIgnore(REPO / ".dockerignore")
    for path in (
        "docker/mosquitto/passwd",
        "docker/mosquitto/cell_password",
        "docker/.env",
        ".git/config",
        ".venv/bin/python",
        "ros2_ws/build/qc_cell/x",
        "ros2_ws/install/setup.bash",
        "ros2_ws/src/qc_cell/qc_cell/__pycache__/x.pyc",
        "ros2_ws/src/qc_cell/test/test_healthcheck.py",
        "reports/run/report.json",
    ):
        assert not ignore.included(path), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_edge_images_never_get_the_cloud_tools(dockerfile):
    runs = " ".join(args for keyword, args in instructions(dockerfile) if keyword == "RUN")
    builds = re.findall(r"colcon build[^&]*", runs)
    assert builds and all("--packages-skip qc_cloud" in b for b in builds), builds
    assert "cloud.txt" not in dockerfile.read_text() and "torch" not in runs


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_non_root_user_with_healthcheck_and_entrypoint(dockerfile):
    stages = instructions(dockerfile)
    final = stages[max(i for i, (keyword, _) in enumerate(stages) if keyword == "FROM") :]
    last = {keyword: args for keyword, args in final}
    assert last["USER"] not in ("root", "0", "0:0"), f"the image runs as {last['USER']}"
    assert last["ENTRYPOINT"] == '["/opt/qc/bin/entrypoint.sh"]'
    assert last["HEALTHCHECK"].endswith('CMD ["/opt/qc/bin/entrypoint.sh", "healthcheck"]')
    assert last["STOPSIGNAL"] == "SIGINT"
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    for mount in VOLUMES.values():
        assert mount in runs, f"{dockerfile.name} does not create {mount} for the cell's user"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_user_keeps_its_device_groups(dockerfile):
    """`USER uid:gid` makes Docker set that one group and ignore the user's supplementary groups (moby's
    getUser: additional groups from /etc/group only when no group is given), so video (/dev/video*, on Orin the
    GPU's nodes) and dialout would never apply. The uid alone keeps them."""
    stages = instructions(dockerfile)
    user = [args for keyword, args in stages if keyword == "USER"][-1]
    assert ":" not in user, f"{dockerfile.name}: USER {user} names a group; the user's video/dialout would not apply"
    useradd = re.search(r"useradd [^&]*--groups (\S+)[^&]* qc\b", " ".join(a for k, a in stages if k == "RUN"))
    assert useradd and {"video", "dialout"} <= set(useradd.group(1).split(","))
    uid = dict(a.split("=", 1) for k, a in stages if k == "ARG" and a.startswith("QC_UID="))["QC_UID"]
    assert interpolate(user, {"QC_UID": uid}) == uid


def test_the_jetson_guide_says_how_the_user_keeps_its_groups(compose):
    """docs/jetson.md once said the user is in `video` while `USER uid:gid` dropped it: the guide now names the
    fix the files make (the uid alone on USER, the host's gpio GID added by compose) and the groups it keeps."""
    guide = " ".join((REPO / "docs" / "jetson.md").read_text().split())
    assert "the image's `USER` is the UID alone" in guide and "`USER uid:gid` would drop them" in guide
    assert "groups `video`, `dialout`, and on the Jetson `gpio`" in guide
    assert "compose also adds it at run time (`group_add`)" in guide
    assert "GPIO_GID" in compose["services"]["cell"]["group_add"][0]


def test_jetson_image_tells_the_nvidia_runtime_to_expose_the_gpu():
    env = " ".join(args for keyword, args in instructions(DOCKER / "Dockerfile.jetson") if keyword == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=all" in env


# ---- entrypoint ---------------------------------------------------------------------------------------------
def test_entrypoint_is_executable_and_parses():
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh must be executable (git mode 755)"
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_entrypoint_passes_shellcheck():
    result = subprocess.run([tool("shellcheck"), str(ENTRYPOINT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def fake_ros(tmp_path):
    """Stand-ins for /opt/ros/<distro>/setup.bash and the workspace's setup.bash that record being sourced."""
    log = tmp_path / "sourced.log"
    ros = tmp_path / "ros_setup.bash"
    ws = tmp_path / "ws_setup.bash"
    ros.write_text(f'echo ros >> "{log}"\nexport QC_FAKE_ROS=sourced\n')
    ws.write_text(f'echo workspace >> "{log}"\n')
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("QC_")  # a developer's QC_* settings must not leak into these expectations
    }
    env |= {"QC_ROS_SETUP": str(ros), "QC_WS_SETUP": str(ws), "QC_STATE_DIR": str(tmp_path / "state")}
    return env, log, tmp_path / "state"


def run_entrypoint(env: dict[str, str], *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ENTRYPOINT), *args], env={**env, **extra_env}, capture_output=True, text=True, timeout=120
    )


def planned_command(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "dry run, would run: " in line]
    assert len(lines) == 1, result.stdout
    return shlex.split(lines[0].split("dry run, would run: ", 1)[1])


def test_dry_run_prints_the_launch_command_from_the_environment(fake_ros):
    env, log, _ = fake_ros
    jetson = str(REPO / "params" / "jetson.yaml")
    result = run_entrypoint(
        env,
        QC_DRY_RUN="1",
        QC_PARAMS_FILE=jetson,
        QC_NAMESPACE="cell1",
        QC_BACKEND="tensorrt",
        QC_LOG_LEVEL="warn",
        QC_USE_BRIDGE="true",
    )
    assert planned_command(result) == [
        *LAUNCH,
        "namespace:=cell1",
        f"params_file:={jetson}",
        "backend:=tensorrt",
        "log_level:=warn",
        "use_bridge:=true",
    ]
    assert log.read_text().split() == ["ros", "workspace"], "ROS first, then the workspace"


def test_command_line_arguments_override_the_environment_and_parameters_are_merged(fake_ros):
    env, _, state = fake_ros
    jetson = REPO / "params" / "jetson.yaml"
    result = run_entrypoint(
        env,
        "launch",
        "namespace:=cell2",
        "source:=synthetic",
        "inference.threads=4",
        "--dry-run",
        QC_PARAMS_FILE=str(jetson),
        QC_NAMESPACE="cell1",
        QC_SET="# volumes\n  inference.model_store_dir=/var/lib/qc/models  \n\n",
    )
    merged = state / "params.yaml"
    assert planned_command(result) == [*LAUNCH, "namespace:=cell2", f"params_file:={merged}", "source:=synthetic"]
    expected = params_file.load(jetson)
    expected.setdefault("inference", {}).update({"model_store_dir": "/var/lib/qc/models", "threads": 4})
    expected["cloud_bridge"]["model_store_dir"] = "/var/lib/qc/models"  # derived from inference's (issue 18)
    assert params_file.load(merged) == expected
    # The health check reuses exactly what was launched.
    hc_args = (state / "healthcheck.args").read_text().split("\0")[:-1]
    assert hc_args == ["--params-file", str(merged), "--namespace", "cell2"]


CELL_PARAMS = str(REPO / "params" / "cell.yaml")


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        ((), {"QC_PARAMS_FILE": "/no/such/params.yaml"}, "params file /no/such/params.yaml does not exist"),
        ((), {}, "no params file"),
        (("use_bridge:=sometimes",), {"QC_PARAMS_FILE": CELL_PARAMS}, "use_bridge 'sometimes' must be true, false"),
        (("log_level:=loud",), {"QC_PARAMS_FILE": CELL_PARAMS}, "log_level 'loud' must be one of"),
        (("launch", "nonsense"), {"QC_PARAMS_FILE": CELL_PARAMS}, "unexpected argument 'nonsense'"),
        (("camera.fps=30",), {"QC_PARAMS_FILE": CELL_PARAMS}, "unknown node 'camera'"),
        ((), {"QC_ROS_SETUP": "/opt/ros/nowhere/setup.bash"}, "/opt/ros/nowhere/setup.bash not found"),
    ],
)
def test_bad_configuration_fails_before_launching(fake_ros, args, extra_env, message):
    env, _, _ = fake_ros
    result = run_entrypoint(env, *args, "--dry-run", **extra_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr
    assert "would run" not in result.stdout


def test_healthcheck_that_cannot_run_is_unhealthy_not_docker_reserved_2(fake_ros):
    env, _, _ = fake_ros
    result = run_entrypoint(env, "healthcheck", QC_ROS_SETUP="/opt/ros/nowhere/setup.bash")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "/opt/ros/nowhere/setup.bash not found" in result.stderr


def test_other_commands_run_in_the_sourced_environment(fake_ros):
    env, _, _ = fake_ros
    result = run_entrypoint(env, "bash", "-c", 'echo "ros is $QC_FAKE_ROS"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ros is sourced"


def test_healthcheck_mode_checks_the_cell_that_was_launched(fake_ros):
    env, _, _ = fake_ros
    launched = run_entrypoint(env, "namespace:=hc_cell", "--dry-run", QC_PARAMS_FILE=CELL_PARAMS)
    assert launched.returncode == 0, launched.stderr
    # Nothing publishes /diagnostics in this test's ROS domain: the check must say the cell's node is silent.
    result = run_entrypoint(env, "healthcheck", "--window", "1", "--nodes", "decision")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "/hc_cell/decision: no status on /diagnostics" in result.stdout


# ---- params overlay and image self-check (the helpers the images ship) -------------------------------------
def test_params_overlay_parses_values_as_yaml_scalars():
    overlay = params_file  # docker/params_overlay.py parses overrides with it, as the cell runner does
    assert overlay.parse_override("inference.threads=4") == ("inference", "threads", 4)
    assert overlay.parse_override("decision.enabled=true") == ("decision", "enabled", True)
    assert overlay.parse_override('cloud_bridge.cell="007"') == ("cloud_bridge", "cell", "007")
    assert overlay.parse_override("camera_driver.roi=[0, 0, 640, 480]") == ("camera_driver", "roi", [0, 0, 640, 480])
    assert overlay.parse_override("cloud_bridge.username=") == ("cloud_bridge", "username", "")
    for bad, message in [
        ("threads=4", "expected node.parameter=value"),
        ("inference.threads", "expected node.parameter=value"),
        ("camera.fps=30", "unknown node"),
        ("inference.table={a: 1}", "scalar or a flat list"),
        ("inference.x=[unclosed", "not valid YAML"),
    ]:
        with pytest.raises(overlay.OverrideError, match=message):
            overlay.parse_override(bad)


def test_params_overlay_writes_the_merged_overlay_and_refuses_unknown_parameters(tmp_path, capsys):
    overlay = load_module(DOCKER / "params_overlay.py")
    out = tmp_path / "merged.yaml"
    demo = str(REPO / "params" / "demo.yaml")
    assert overlay.main(["--params-file", demo, "--out", str(out), "--state-dir", str(tmp_path / "state")]) == 0
    merged = params_file.load(out)
    assert merged == params_file.with_state_dir(params_file.load(demo), tmp_path / "state")
    assert merged["cloud_bridge"]["outbox_path"] == f"{tmp_path}/state/outbox.sqlite3"
    assert overlay.main(["--params-file", demo, "--out", str(out), "--set", "decision.no_such_param=3"]) == 2
    assert "decision has no parameter 'no_such_param'" in capsys.readouterr().err


def test_image_self_check_rejects_the_pip_opencv_wheel():
    """check_image.py runs at build time; here, in the dev venv, it must flag what an image must not have."""
    result = subprocess.run(
        [sys.executable, str(DOCKER / "check_image.py"), "--no-ros"], capture_output=True, text=True, timeout=120
    )
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("check_image: ")
    failures = [line for line in lines if line.startswith("FAIL")]
    assert result.returncode == (1 if failures else 0)
    if importlib.util.find_spec("cv2") and _installed("opencv-python-headless"):
        assert any(line.startswith("FAIL  opencv: ") for line in failures), result.stdout


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


# ---- compose ------------------------------------------------------------------------------------------------
def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and $$ with the given environment (default: none)."""
    env = env or {}

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{(\w+)(:?-([^}]*))?\}", substitute, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_against_the_compose_spec_schema(tmp_path):
    checker = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*checker, str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"  # the same check must reject a broken file
    broken.write_text(COMPOSE.read_text().replace("    runtime: nvidia\n", "    runtime: [nvidia]\n"))
    result = subprocess.run([*checker, str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, "the schema check accepted a broken compose file"


def test_compose_has_the_cells_and_the_broker(compose):
    services = compose["services"]
    assert set(services) == {"cell", "cell-x86", "mosquitto"}
    assert services["cell"]["profiles"] == ["jetson"] and services["cell-x86"]["profiles"] == ["x86"]
    assert services["cell"]["runtime"] == "nvidia"
    for name in ("cell", "cell-x86"):
        assert services[name]["network_mode"] == "host", "ROS 2 discovery needs the host network"
        assert services[name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("service", ["cell", "cell-x86"])
def test_compose_builds_with_arguments_the_dockerfile_declares(compose, service):
    build = compose["services"][service]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO, "the build context is the repository root (.dockerignore lives there)"
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file()
    declared = {}
    for keyword, args in instructions(dockerfile):
        if keyword == "ARG":
            name, _, default = args.partition("=")
            declared.setdefault(name, default)
    for name, value in build["args"].items():
        assert name in declared, f"compose passes build arg {name}, which {dockerfile.name} does not declare"
        assert interpolate(value) == declared[name], f"{name}: compose default differs from {dockerfile.name}"
    assert "ROS_DISTRO" in build["args"]
    if service == "cell":
        assert {"L4T_VERSION", "GPIO_GID"} <= set(build["args"])


@pytest.mark.parametrize("service", ["cell", "cell-x86"])
def test_cell_volumes_survive_restarts_and_the_params_point_into_them(compose, service):
    assert set(VOLUMES) <= set(compose["volumes"]), "the volumes must be named (declared at the top level)"
    spec = compose["services"][service]
    mounts = {}
    for volume in spec["volumes"]:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            mounts[source] = target
    for name, target in VOLUMES.items():
        assert mounts.get(name) == target, f"{service}: volume {name} not mounted at {target}"
    overrides = dict(
        line.split("=", 1) for line in interpolate(spec["environment"]["QC_SET"]).splitlines() if line.strip()
    )
    assert overrides["inference.model_store_dir"].startswith(VOLUMES["qc_models"])
    assert overrides["inference.engine_cache_dir"].startswith(VOLUMES["qc_engine_cache"])
    assert overrides["cloud_bridge.outbox_path"].startswith(VOLUMES["qc_outbox"] + "/")
    assert overrides["cloud_bridge.update_dir"].startswith(VOLUMES["qc_models"] + "/"), "update state must persist"
    assert overrides["cloud_bridge.password_file"] == "/run/secrets/mqtt_password"
    assert spec["secrets"] == ["mqtt_password"]
    assert overrides["cloud_bridge.username"] == overrides["cloud_bridge.cell"], "the ACL keys on username = cell id"


@pytest.mark.parametrize("service", ["cell", "cell-x86"])
def test_relative_model_paths_resolve_to_the_mounted_models(compose, service):
    """params name the model package relative to their own folder (params/, ../models/default); in the container
    the params mounts and the models mount must reproduce that layout, and the overlay must find its base."""
    spec = compose["services"][service]
    binds = {v["target"]: interpolate(v["source"]) for v in spec["volumes"] if isinstance(v, dict)}
    container_file = PurePosixPath(interpolate(spec["environment"]["QC_PARAMS_FILE"]))
    host_file = (COMPOSE.parent / binds[str(container_file)]).resolve()
    base = yaml.safe_load(host_file.read_text()).get("extends")
    if base:  # an overlay: its base is mounted beside it, under the name it extends
        assert (COMPOSE.parent / binds[str(container_file.parent / base)]).resolve() == host_file.parent / base
    model_path = params_file.load(host_file)["inference"]["model_path"]
    relative = os.path.relpath(model_path, host_file.parent)  # as the params file names it (../models/default)
    in_container = PurePosixPath(os.path.normpath(container_file.parent / relative))
    assert in_container.is_relative_to("/opt/qc/models"), f"{in_container} is outside the models mount"
    mounted = (COMPOSE.parent / binds["/opt/qc/models"]).resolve() / in_container.relative_to("/opt/qc/models")
    assert mounted == Path(model_path) and (mounted / "manifest.json").is_file()


def test_compose_parameter_overrides_are_accepted_by_the_entrypoint(compose, fake_ros):
    env, _, state = fake_ros
    spec = compose["services"]["cell"]["environment"]
    result = run_entrypoint(
        env,
        "--dry-run",
        QC_PARAMS_FILE=str(REPO / "params" / "jetson.yaml"),
        **{key: interpolate(str(value)) for key, value in spec.items() if key != "QC_PARAMS_FILE"},
    )
    command = planned_command(result)
    assert "namespace:=cell1" in command and "use_bridge:=true" in command
    merged = params_file.load(state / "params.yaml")
    assert merged["cloud_bridge"]["broker_url"] == "mqtt://127.0.0.1:1883"
    assert merged["inference"]["engine_cache_dir"] == "/var/lib/qc/engine_cache"


def test_jetson_cell_gets_the_devices_it_needs(compose):
    cell = compose["services"]["cell"]
    devices = [interpolate(d) for d in cell["devices"]]
    assert "/dev/video0:/dev/video0" in devices
    assert any(d.startswith("/dev/gpiochip") for d in devices)
    argus = [v for v in cell["volumes"] if isinstance(v, dict) and v["target"] == "/tmp/argus_socket"]
    assert argus and argus[0]["bind"]["create_host_path"] is False
    assert interpolate(cell["group_add"][0]) == "999"


def test_jetson_cell_names_the_board_for_jetson_gpio(compose):
    """Docker masks /proc/device-tree: Jetson.GPIO needs JETSON_MODEL_NAME, and the cell keeps the shared
    environment (the merge of x-cell's environment) beside it."""
    environment = compose["services"]["cell"]["environment"]
    model = {"JETSON_MODEL_NAME": "JETSON_ORIN_NANO"}
    assert interpolate(environment["JETSON_MODEL_NAME"], model) == "JETSON_ORIN_NANO"
    assert "QC_SET" in environment and "QC_SET" in compose["services"]["cell-x86"]["environment"]
    assert "JETSON_MODEL_NAME" not in compose["services"]["cell-x86"]["environment"]


# Every Orin board compatible that Jetson.GPIO 2.1.13 maps (lib/python/Jetson/GPIO/gpio_pin_data.py:
# compats_jetson_orins, compats_jetson_orins_nx, compats_jetson_orins_nano), with the model it returns. JetPack 6
# runs on the Orin family only. The device tree lists the board first, then the module and the SoC.
JETSON_GPIO_ORIN_COMPATS = {
    "JETSON_ORIN": [f"nvidia,p3737-0000+p3701-000{m}" for m in "04851"],
    "JETSON_ORIN_NX": [
        f"nvidia,{carrier}+p3767-000{m}{super_}"
        for m in "01"
        for carrier in ("p3509-0000", "p3768-0000")
        for super_ in ("", "-super")
        if not (super_ and carrier == "p3509-0000")
    ],
    "JETSON_ORIN_NANO": [
        f"nvidia,{carrier}+p3767-000{m}{super_}"
        for m in "345"
        for carrier in ("p3509-0000", "p3768-0000")
        for super_ in ("", "-super")
    ],
}
ORIN_COMPATIBLES = {
    f"{board}\0nvidia,{board.split('+')[1].removesuffix('-super')}\0nvidia,tegra234\0": model
    for model, boards in JETSON_GPIO_ORIN_COMPATS.items()
    for board in boards
}


def test_the_model_table_is_jetson_gpios():
    """The table above has what Jetson.GPIO maps: 5 AGX Orin, 6 Orin NX and 12 Orin Nano boards. Where
    Jetson.GPIO is installed (the Jetson, aarch64), its own tables are compared too."""
    assert [len(boards) for boards in JETSON_GPIO_ORIN_COMPATS.values()] == [5, 6, 12]
    spec = importlib.util.find_spec("Jetson")
    if spec is None or not spec.submodule_search_locations:
        return  # not on this machine (requirements/edge.txt installs it on aarch64 only)
    pin_data = Path(next(iter(spec.submodule_search_locations))) / "GPIO" / "gpio_pin_data.py"
    module = load_module(pin_data)  # by path: importing Jetson.GPIO itself probes the board
    library = {
        "JETSON_ORIN": module.compats_jetson_orins,
        "JETSON_ORIN_NX": module.compats_jetson_orins_nx,
        "JETSON_ORIN_NANO": module.compats_jetson_orins_nano,
    }
    assert {m: sorted(b) for m, b in library.items()} == {m: sorted(b) for m, b in JETSON_GPIO_ORIN_COMPATS.items()}


@pytest.mark.parametrize(("compatible", "model"), ORIN_COMPATIBLES.items(), ids=lambda v: v.split("\0")[0])
def test_jetson_model_name_is_derived_from_the_hosts_device_tree(tmp_path, compatible, model):
    script = DOCKER / "jetson_model_name.sh"
    (tmp_path / "compatible").write_bytes(compatible.encode())
    result = subprocess.run([str(script), str(tmp_path / "compatible")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == model, result.stderr


def test_jetson_model_name_passes_shellcheck():
    script = DOCKER / "jetson_model_name.sh"
    result = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_jetson_model_name_refuses_a_board_it_does_not_know(tmp_path):
    (tmp_path / "compatible").write_bytes(b"nvidia,p3450-0000\0nvidia,jetson-nano\0nvidia,tegra210\0")
    result = subprocess.run(
        [str(DOCKER / "jetson_model_name.sh"), str(tmp_path / "compatible")], capture_output=True, text=True
    )
    assert result.returncode == 1 and "set JETSON_MODEL_NAME by hand" in result.stderr


# ---- Jetson: the ROS 2 distribution (JetPack 6 = Ubuntu 22.04 jammy: Humble) ------------------------------------
CHECK_ROS_DISTRO = DOCKER / "check_ros_distro.sh"


def _check_ros_distro(tmp_path: Path, distro: str | None, codename: str = "jammy", *args: str):
    os_release = tmp_path / "os-release"
    os_release.write_text(f'NAME="Ubuntu"\nVERSION_ID="22.04"\nUBUNTU_CODENAME={codename}\n')
    env = {k: v for k, v in os.environ.items() if k != "ROS_DISTRO"}
    if distro is not None:
        env["ROS_DISTRO"] = distro
    return subprocess.run(
        [str(CHECK_ROS_DISTRO), *args, str(os_release)], env=env, capture_output=True, text=True, timeout=60
    )


def test_ros_distro_check_passes_shellcheck():
    result = subprocess.run([tool("shellcheck"), str(CHECK_ROS_DISTRO)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("distro", ["jazzy", "kilted", "rolling"])
def test_ros_distro_check_refuses_a_distribution_without_jetpack6_binaries(tmp_path, distro):
    result = _check_ros_distro(tmp_path, distro)
    assert result.returncode == 1, result.stdout
    assert f"'{distro}' has binary packages for Ubuntu noble, not for this image's Ubuntu jammy" in result.stderr
    assert "JetPack 6 (Ubuntu jammy 22.04) needs ROS_DISTRO=humble" in result.stderr


def test_ros_distro_check_accepts_humble_on_jetpack6(tmp_path):
    result = _check_ros_distro(tmp_path, "humble")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "check_ros_distro: ROS 2 humble on Ubuntu jammy"


@pytest.mark.parametrize(
    ("distro", "status", "message"),
    [
        (None, 2, "ROS_DISTRO is not set"),
        ("", 2, "ROS_DISTRO is not set"),
        ("galactic", 1, "unknown ROS 2 distribution 'galactic'"),
    ],
    ids=["unset", "empty", "unknown"],
)
def test_ros_distro_check_refuses_a_missing_or_unknown_distribution(tmp_path, distro, status, message):
    result = _check_ros_distro(tmp_path, distro)
    assert result.returncode == status and message in result.stderr, result.stderr


def test_ros_distro_check_asks_apt_for_the_distributions_packages(tmp_path):
    """--apt (run after the ROS apt source is installed): without ros-<distro>-ros-base in apt, refused. Here
    apt has no ROS 2 source at all, so the real apt-cache answers no."""
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache on this machine")
    if subprocess.run(["apt-cache", "show", "ros-humble-ros-base"], capture_output=True).returncode == 0:
        pytest.skip("this machine's apt has ros-humble-ros-base: the refusal cannot be shown here")
    result = _check_ros_distro(tmp_path, "humble", "jammy", "--apt")
    assert result.returncode == 1
    assert "apt has no ros-humble-ros-base for Ubuntu jammy" in result.stderr, result.stderr


def _run_lines(dockerfile: Path) -> list[str]:
    """The Dockerfile's RUN instructions, continuation lines joined, comments inside them dropped."""
    runs, current = [], None
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if current is None and not stripped.startswith("RUN "):
            continue
        if current is not None and stripped.startswith("#"):
            continue  # a comment line inside a RUN (Docker drops it)
        part = stripped[4:] if current is None else stripped
        continued = part.endswith("\\")
        current = (current or "") + " " + part.removesuffix("\\").strip()
        if not continued:
            runs.append(current.strip())
            current = None
    return runs


def test_jetson_image_refuses_a_ros_distro_without_binaries_before_installing_it():
    """Dockerfile.jetson runs the check first (before any download) and with --apt after the ROS apt source is
    in, before it installs ros-${ROS_DISTRO}-*; and it copies the script there from the build context."""
    dockerfile = DOCKER / "Dockerfile.jetson"
    assert "check_ros_distro.sh" in " ".join(copy_sources(dockerfile))
    [ros_run] = [run for run in _run_lines(dockerfile) if '"ros-${ROS_DISTRO}-ros-base"' in run]
    steps = [step.strip() for step in ros_run.split("&&")]
    assert steps[0] == "/opt/qc/bin/check_ros_distro.sh", steps[0]
    apt_check = steps.index("/opt/qc/bin/check_ros_distro.sh --apt")
    source = next(i for i, step in enumerate(steps) if "ros2-apt-source.deb" in step and "install" in step)
    install = next(i for i, step in enumerate(steps) if '"ros-${ROS_DISTRO}-ros-base"' in step)
    assert source < apt_check < install
    assert re.search(r"^ARG ROS_DISTRO=humble$", dockerfile.read_text(), re.M)


# What a Jetson reader is told about ROS 2: JetPack 6 is Ubuntu 22.04, which ROS 2 Jazzy has no packages for.
JETSON_WORDS = re.compile(r"jetson|jetpack|l4t|22\.04|jammy|aarch64|arm64", re.I)
NOT_A_JETSON_CLAIM = re.compile(r"x86|no (ubuntu )?22\.04 packages|humble only|not on jetpack", re.I)


def _markdown_units(text: str):
    """(heading of the section, unit) for each heading, each sentence of a paragraph, and each clause of a table
    cell prefixed with its column's header (so a cell is read with the column it sits in). Code is skipped."""
    heading, paragraph, table, in_code = "", [], [], False

    def flush():
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(paragraph)):
            if sentence:
                yield heading, sentence
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table]
        for row in rows[1:]:
            if not all(set(cell) <= set("-: ") for cell in row):
                for column, cell in zip(rows[0], row, strict=False):
                    for clause in re.split(r"[,;] ", cell):
                        yield heading, f"{column}: {clause}"
        paragraph.clear()
        table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            yield from flush()
            in_code = not in_code
        elif in_code:
            continue
        elif stripped.startswith("#"):
            yield from flush()
            heading = stripped
            yield heading, stripped
        elif stripped.startswith("|"):
            if paragraph:
                yield from flush()
            table.append(stripped)
        elif not stripped:
            yield from flush()
        else:
            if table:
                yield from flush()
            paragraph.append(stripped)
    yield from flush()


@pytest.mark.parametrize("page", ["README.md", "docs/jetson.md"])
def test_the_jetson_docs_offer_ros2_humble_only_for_jetpack6(page):
    """No heading, sentence or table cell puts Jazzy on the Jetson (the README once said "Humble on JetPack 6,
    or Jazzy"). In docs/jetson.md every Jazzy is about the x86 image or says Jazzy has no 22.04 packages; in
    the README, so is every Jazzy of a section about the Jetson (a heading naming Jetson, JetPack, 22.04...)."""
    text = (REPO / page).read_text()
    whole_page_is_jetson = page == "docs/jetson.md"
    claims = [
        unit
        for heading, unit in _markdown_units(text)
        if re.search(r"jazzy", unit, re.I)
        and (whole_page_is_jetson or JETSON_WORDS.search(heading))
        and not NOT_A_JETSON_CLAIM.search(unit)
    ]
    assert claims == [], f"{page} offers Jazzy for the Jetson: {claims}"
    humble = [u for _, u in _markdown_units(text) if re.search(r"JetPack 6", u) and re.search(r"\bHumble\b", u)]
    assert humble, f"{page} never says that JetPack 6 runs ROS 2 Humble"


def test_jetson_cell_may_run_its_actuation_thread_at_the_requested_realtime_priority(compose):
    """A non-root user gets SCHED_FIFO only up to its rtprio limit (CAP_SYS_NICE does not reach it)."""
    requested = params_file.load(REPO / "params" / "jetson.yaml")["reject_actuator"]["scheduler_rt_priority"]
    assert requested > 0
    rtprio = compose["services"]["cell"]["ulimits"]["rtprio"]
    limit = rtprio if isinstance(rtprio, int) else rtprio["soft"]
    assert int(limit) >= requested


def test_compose_bind_mounts_exist_or_are_documented_credentials(compose):
    credentials = set((DOCKER / "mosquitto" / ".gitignore").read_text().split())
    guide = (REPO / "docs" / "jetson.md").read_text()
    sources = [compose["secrets"]["mqtt_password"]["file"]]
    for service in compose["services"].values():
        sources += [v["source"] for v in service.get("volumes", []) if isinstance(v, dict) and v["type"] == "bind"]
    for source in sources:
        source = interpolate(source)
        if source.startswith("/"):
            continue  # a path on the Jetson (/tmp/argus_socket)
        path = (COMPOSE.parent / source).resolve()
        if path.name in credentials:
            assert f"docker/mosquitto/{path.name}" in guide, f"docs/jetson.md must say how to create {path.name}"
        else:
            assert path.exists(), f"compose mounts {source}, which does not exist"


def test_broker_config_requires_authentication(compose):
    broker = compose["services"]["mosquitto"]
    targets = {v["target"]: v for v in broker["volumes"] if isinstance(v, dict)}
    conf = (COMPOSE.parent / targets["/mosquitto/config/mosquitto.conf"]["source"]).read_text()
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#"))
    assert settings["allow_anonymous"] == "false"
    assert settings["password_file"] in targets and settings["acl_file"] in targets
    assert "mosquitto_data:/mosquitto/data" in broker["volumes"]
    assert settings["persistence_location"].rstrip("/") == "/mosquitto/data"


# ---- the broker's authentication and ACL, on a real mosquitto ------------------------------------------------
USERS = {"cell1": "cell1-secret", "cell2": "cell2-secret", "cloud": "cloud-secret", "release": "release-secret",
         "verifier": "verifier-secret"}  # fmt: skip


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """mosquitto with docker/mosquitto/{mosquitto.conf,acl} and a password file with two cells, the cloud's
    monitoring user, the release tool and the verifier.

    The only changes to the shipped config: paths into a temp dir, a free loopback port, `user root` (the
    test runs as whatever user; the container runs mosquitto as its own user)."""
    binary, passwd_tool = mosquitto_binary(), shutil.which("mosquitto_passwd")
    if binary is None or passwd_tool is None:
        pytest.fail("mosquitto and mosquitto_passwd are needed (make setup installs mosquitto)")
    work = tmp_path_factory.mktemp("broker")
    shutil.copy(DOCKER / "mosquitto" / "acl", work / "acl")
    for user, password in USERS.items():
        create = ["-c"] if user == "cell1" else []
        subprocess.run([passwd_tool, *create, "-b", str(work / "passwd"), user, password], check=True, timeout=30)
    port = free_port()
    conf = (DOCKER / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/config/", f"{work}/").replace("/mosquitto/data/", f"{work}/")
    conf = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", conf)
    conf = conf.replace("log_dest stdout", f"log_dest file {work}/mosquitto.log")
    (work / "mosquitto.conf").write_text(conf + "\nuser root\n")
    process = subprocess.Popen([binary, "-c", str(work / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    import socket
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"mosquitto exited: {process.stderr.read().decode()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"mosquitto did not listen on {port}")


class Client:
    """A paho client that records what it receives; connect() returns the broker's CONNACK reason."""

    def __init__(
        self, port: int, username: str | None = None, password: str | None = None, client_id: str = ""
    ) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.disconnected = threading.Event()
        self.client.on_disconnect = lambda *args: self.disconnected.set()
        if username is not None:
            self.client.username_pw_set(username, password)
        self.port = port
        self.connected = threading.Event()
        self.suback = threading.Event()
        self.reason: str | None = None
        self.received: list[tuple[str, bytes]] = []
        self.got = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.suback.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.reason = str(reason_code)
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        with self.got:
            self.received.append((message.topic, message.payload))
            self.got.notify_all()

    def connect(self) -> str:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return self.reason

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.suback.wait(10), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def wait_for(self, payload: bytes, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        with self.got:
            self.got.wait_for(lambda: any(p == payload for _, p in self.received), timeout)
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize(("username", "password"), [(None, None), ("cell1", "wrong"), ("intruder", "x")])
def test_broker_refuses_anonymous_and_bad_credentials(broker, username, password):
    client = Client(broker, username, password)
    try:
        assert client.connect() in ("Not authorized", "Bad user name or password")
    finally:
        client.close()


def test_acl_confines_a_cell_to_its_own_topics(broker):
    cloud, cell = Client(broker, "cloud", "cloud-secret"), Client(broker, "cell1", "cell1-secret")
    release = Client(broker, "release", "release-secret")  # only the release tool writes model updates
    try:
        assert cloud.connect() == "Success" and cell.connect() == "Success" and release.connect() == "Success"
        cloud.subscribe("qc/#")
        cell.subscribe("qc/#")  # allowed to ask, but it must only ever receive its own subtree
        # A cell writes its records, and cannot write as another cell (mosquitto drops the publish).
        cell.publish("qc/site/line2/cell2/part", b"forged")
        cell.publish("qc/site/line2/cell1/part", b"own record")
        got = cloud.wait_for(b"own record")
        assert ("qc/site/line2/cell1/part", b"own record") in got
        assert all(payload != b"forged" for _, payload in got), got
        # The cloud addresses model updates per cell; a cell sees only its own.
        release.publish("qc/site/line2/cell2/model/update", b"for cell2")
        release.publish("qc/site/line2/cell1/model/update", b"for cell1")
        got = cell.wait_for(b"for cell1")
        assert ("qc/site/line2/cell1/model/update", b"for cell1") in got
        assert all(payload not in (b"for cell2", b"forged") for _, payload in got), got
    finally:
        cloud.close()
        cell.close()
        release.close()


INBOUND = ("model/update", "model/chunk/2.0/0", "verify/response")


def test_a_cell_cannot_write_its_own_inbound_topics(broker):
    """Only the release tool writes model/update and chunks, only the verifier verify/response: a
    compromised cell cannot feed itself (or, retained, its successor) an update or a verdict."""
    cell, cell2 = Client(broker, "cell1", "cell1-secret"), Client(broker, "cell2", "cell2-secret")
    release, verifier = Client(broker, "release", "release-secret"), Client(broker, "verifier", "verifier-secret")
    try:
        assert all(c.connect() == "Success" for c in (cell, cell2, release, verifier))
        cell.subscribe("qc/site/line2/cell1/#")
        cell2.subscribe("qc/#")  # another cell listening everywhere it may
        for suffix in INBOUND:
            cell.publish(f"qc/site/line2/cell1/{suffix}", b"self-made " + suffix.encode())
        release.publish("qc/site/line2/cell1/model/update", b"genuine update")
        verifier.publish("qc/site/line2/cell1/verify/response", b"genuine verdict")
        got = cell.wait_for(b"genuine verdict")
        assert ("qc/site/line2/cell1/model/update", b"genuine update") in got, got
        assert all(not payload.startswith(b"self-made") for _, payload in got), got
        # Another cell reads none of cell1's topics, in or out.
        cell.publish("qc/site/line2/cell1/part", b"cell1 record")
        time.sleep(0.5)
        assert cell2.received == [], cell2.received
    finally:
        for c in (cell, cell2, release, verifier):
            c.close()


def test_the_monitoring_user_reads_but_cannot_publish_updates(broker):
    cloud, cell = Client(broker, "cloud", "cloud-secret"), Client(broker, "cell1", "cell1-secret")
    try:
        assert cloud.connect() == "Success" and cell.connect() == "Success"
        cell.subscribe("qc/site/line2/cell1/model/update")
        cloud.publish("qc/site/line2/cell1/model/update", b"from the dashboard")
        time.sleep(0.5)
        assert cell.received == []
    finally:
        cloud.close()
        cell.close()


def test_client_ids_are_tied_to_user_names(broker):
    """Before: any logged-in client connecting with a cell's client id took over its connection and session."""
    cell = Client(broker, "cell1", "cell1-secret", client_id="qc-site-line2-cell1")
    intruder = Client(broker, "cloud", "cloud-secret", client_id="qc-site-line2-cell1")
    try:
        assert cell.connect() == "Success"
        assert intruder.connect() == "Success"
        assert not cell.disconnected.wait(1.0), "the cell's connection was taken over"
        intruder.close()
        impostor = Client(broker, "cell2", "cell2-secret", client_id="cell1")
        try:
            assert impostor.connect() == "Success"
            assert not cell.disconnected.wait(1.0), "another user took the cell's id"
        finally:
            impostor.close()
    finally:
        cell.close()
