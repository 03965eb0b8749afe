"""Every command in a fenced ```bash block of README.md and docs/*.md works, or is listed here with the reason it
cannot run on this machine.

Each command (one logical line: continuations joined, comments dropped) is one test, named after its file and
line. RULES says how each kind of command is checked: the first rule whose pattern matches the start of the
command wins. A command no rule matches fails until someone classifies it: a check that runs it here, or the
reason it cannot run here (ros2 launch, docker, the Jetson's hardware, root). A rule that no longer matches any
documented command fails too, so the list stays the docs' list.

How commands run: from the repository root, in bash, after `source scripts/env.sh` (as the README says), each in
its own shell with a timeout. Commands that write files get a temporary folder instead of the documented one;
commands that run until stopped run with arguments that stop them (the runner's --parts) or are checked through
their --help (every option the docs use must be one the command lists).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")


@dataclass(frozen=True)
class Command:
    """One documented command: where it is, and its text as a shell would read it."""

    path: str
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: `{self.text}`"


def _strip_comment(line: str) -> str:
    """The line without a trailing `# ...` comment (a `#` outside quotes, at the start or after a blank)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index].rstrip()
    return line.rstrip()


def commands_in(path: Path) -> list[Command]:
    """The commands of every ```bash block in one Markdown file, with the line each starts on."""
    lines = path.read_text().splitlines()
    commands: list[Command] = []
    in_bash, fence_indent = False, ""
    pending, pending_line = "", 0
    for number, raw in enumerate(lines, start=1):
        fence = FENCE.match(raw)
        if fence and not in_bash and fence["lang"] == "bash":
            in_bash, fence_indent = True, fence["indent"]
            continue
        if fence and in_bash and not fence["lang"]:
            in_bash = False
            continue
        if not in_bash:
            continue
        text = raw[len(fence_indent) :] if raw.startswith(fence_indent) else raw.lstrip()
        if not pending:
            pending_line = number
        continued = text.rstrip().endswith("\\")
        text = _strip_comment(text.rstrip().removesuffix("\\")) if continued else _strip_comment(text)
        pending = f"{pending} {text.strip()}".strip()
        if continued:
            continue
        if pending:
            commands.append(Command(str(path.relative_to(REPO)), pending_line, pending))
        pending = ""
    return commands


def documented_commands() -> list[Command]:
    return [command for path in DOC_FILES for command in commands_in(path)]


# ---- how commands run here -------------------------------------------------------------------------------------


def run_shell(script: str, timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a bash script after `source scripts/env.sh`, from cwd; the output is stdout and stderr together."""
    env_sh = shlex.quote(str(REPO / "scripts" / "env.sh"))
    return subprocess.run(
        ["bash", "-c", f"source {env_sh} >/dev/null && {script}"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def expect_success(command: Command, script: str, timeout: float = 120, cwd: Path = REPO) -> str:
    result = run_shell(script, timeout, cwd)
    ran = "" if script == command.text else f"\n  run here as: {script}"
    assert result.returncode == 0, (
        f"{command} failed with exit status {result.returncode}{ran}\n--- output (last 3000 chars):\n"
        f"{result.stdout[-3000:]}"
    )
    return result.stdout


def _placeholder_free(words: list[str]) -> list[str]:
    """The words without the docs' usage notation: [optional parts], `...`, and the `--` that passes extra args."""
    kept, depth = [], 0
    for word in words:
        depth += word.count("[")
        if depth == 0 and word not in ("...", "--"):
            kept.append(word)
        depth -= word.count("]")
    return kept


def options_of(words: list[str]) -> list[str]:
    """Every --option the docs use in a command, optional [--parts] included, up to a bare `--` (what follows it
    goes to another program)."""
    options: set[str] = set()
    for word in words:
        if word.strip("[]") == "--":
            break
        options.update(re.findall(r"(?<![\w-])--[a-z][\w-]*", word))
    return sorted(options)


def check_options_against_help(program_words: int, resolve: Callable[[str], str] = lambda word: word):
    """A command that needs what this machine lacks (a TLS broker, torch training, trtexec, a running cell) is
    checked through its --help: its first `program_words` words plus --help must succeed, and list every option
    the docs use with it."""

    def check(command: Command, tmp_path: Path) -> None:
        words = shlex.split(command.text)
        program = [resolve(words[0]), *words[1:program_words]]
        script = shlex.join([*program, "--help"])
        help_text = expect_success(command, script, timeout=60)
        missing = [option for option in options_of(words[program_words:]) if option not in help_text]
        assert not missing, f"{command}: {shlex.join(program)} --help does not list {missing}:\n{help_text}"
        assert not re.search(r"^\s*(set -|usage\(\)|\w+\(\) \{)", help_text, re.M), (
            f"{command}: the --help of {shlex.join(program)} shows shell code:\n{help_text}"
        )

    return check


def check_options_against_help_after_env(program_words: int):
    """check_options_against_help for a command that starts with VAR=value settings (dropped for --help)."""

    def check(command: Command, tmp_path: Path) -> None:
        words = shlex.split(command.text)
        while words and re.match(r"^[A-Z_]+=", words[0]):
            words.pop(0)
        check_options_against_help(program_words)(Command(command.path, command.line, shlex.join(words)), tmp_path)

    return check


def run_as_documented(timeout: float = 120) -> Callable[[Command, Path], None]:
    def check(command: Command, tmp_path: Path) -> None:
        expect_success(command, command.text, timeout=timeout)

    return check


def check_make_target(command: Command, tmp_path: Path) -> None:
    """`make X` runs set-up and whole suites, which CI runs itself (.ci/run: make setup, make test, make
    test-jazzy): here make must know the target and its prerequisites (`make -n`), and the command the
    target ends in must start (its --help)."""
    words = shlex.split(command.text)
    target = next(word for word in words[1:] if "=" not in word)
    plan = expect_success(command, f"make -n --no-print-directory {shlex.quote(target)}", timeout=60)
    modules = re.findall(r"python -m ([\w.]+)", plan)
    for module in modules:
        expect_success(command, f"python -m {module} --help", timeout=60)


def check_directory(command: Command, tmp_path: Path) -> None:
    folder = REPO / shlex.split(command.text)[1]
    assert folder.is_dir(), f"{command}: no folder {folder.relative_to(REPO)} in the repository"


def check_runner_runs_to_verdicts(command: Command, tmp_path: Path) -> None:
    """The runner runs until Ctrl-C: here it stops itself after 3 verdicts (--parts), its logs in a temp folder,
    and must exit 0 with 3 verdicts in its final line."""
    script = f"{command.text} --parts 3 --duration 240 --run-dir {shlex.quote(str(tmp_path / 'run'))}"
    output = expect_success(command, script, timeout=300)
    assert "Traceback" not in output, f"{command} printed a traceback:\n{output[-3000:]}"
    final = re.search(r"^\[cell\] final: parts=(\d+)", output, re.M)
    assert final and int(final[1]) >= 3, (
        f"{command} gave no 3 verdicts within 240 s (run here as: {script})\n--- output:\n{output[-3000:]}"
    )


def check_synthetic_parts(command: Command, tmp_path: Path) -> None:
    """Writes a data set: a small one here, into a temp folder."""
    words = _placeholder_free(shlex.split(command.text))
    out = tmp_path / "parts"
    settings = {"--out": str(out), "--train-good": "2", "--test-good": "1", "--test-per-defect": "1"}
    for index, word in enumerate(words[:-1]):
        if word in settings:
            words[index + 1] = settings[word]
    expect_success(command, shlex.join([*words, "--size", "96"]), timeout=120)
    assert (out / "train" / "good" / "000.png").is_file(), f"{command} wrote no train/good/000.png into {out}"


def check_keys_generate(command: Command, tmp_path: Path) -> None:
    """Writes a key pair: into a temp folder here, encrypted with a passphrase from a temp file."""
    words = shlex.split(command.text)
    words[words.index("--out") + 1] = str(tmp_path / "qc-keys")
    if "--passphrase-file" in words:
        (tmp_path / "passphrase").write_text("documented passphrase\n")
        words[words.index("--passphrase-file") + 1] = str(tmp_path / "passphrase")
    expect_success(command, shlex.join(words), timeout=60)
    assert (tmp_path / "qc-keys" / "model-signing.pub").is_file(), f"{command} wrote no model-signing.pub"


def check_benchmark_briefly(command: Command, tmp_path: Path) -> None:
    """A benchmark that prints figures: one second per configuration and one image size here."""
    words = shlex.split(command.text.split("&&", 1)[-1])
    words[words.index("--seconds") + 1] = "1"
    expect_success(command, shlex.join([*words, "--sizes", "640x480"]), timeout=300)


def check_colcon_build_with_the_meta(command: Command, tmp_path: Path) -> None:
    """The hand-run colcon build of the workspace, on a temp copy (ros2_ws/src with the top-level folders its
    symlinks point to, and colcon.meta), so the real build and install folders are left alone."""
    copy = tmp_path / "repo"
    for folder in ("msg", "launch", "params"):
        shutil.copytree(REPO / folder, copy / folder, symlinks=True)
    shutil.copytree(REPO / "ros2_ws" / "src", copy / "ros2_ws" / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
    shutil.copy2(REPO / "colcon.meta", copy / "colcon.meta")
    expect_success(command, command.text, timeout=600, cwd=copy)
    assert (copy / "ros2_ws" / "install" / "qc_interfaces").is_dir(), f"{command} installed no qc_interfaces"


@dataclass(frozen=True)
class Rule:
    """How the commands that start with `pattern` (a regular expression) are checked. `check` None: they cannot
    run here, and `reason` says why."""

    pattern: str
    reason: str
    check: Callable[[Command, Path], None] | None = None
    slow: bool = False

    def matches(self, command: Command) -> bool:
        return re.match(self.pattern, command.text) is not None


def not_here(pattern: str, reason: str) -> Rule:
    return Rule(pattern, reason)


TRT_SCRIPT = "ros2_ws/src/qc_cloud/scripts/build_trt_engine.sh"

RULES: list[Rule] = [
    # ---- run here ----
    Rule(r"make (demo|test|setup)\b", "make target: make -n, and the module it runs with --help", check_make_target),
    Rule(r"source scripts/env\.sh$", "sourced in a fresh shell", run_as_documented()),
    Rule(r"cd docker/mosquitto$", "the folder exists", check_directory),
    Rule(r"python -m qc_cell\.bringup\.cell_runner ", "runs to 3 verdicts", check_runner_runs_to_verdicts, slow=True),
    Rule(r"qc_synthetic_parts ", "a small data set into a temp folder", check_synthetic_parts),
    Rule(r"qc_cloud keys generate ", "a key pair into a temp folder", check_keys_generate),
    Rule(
        r"qc_cloud (watch|gaps|publish-model|verifier) ",
        "needs a TLS broker, its database or a trained cloud model: --help",
        check_options_against_help(2),
    ),
    Rule(
        r"(QC_FLEET_[A-Z_]+=\S+ )?qc_cloud (serve|broker-config)\b",
        "the fleet service runs until stopped (tested by test_fleet_*.py); broker-config writes to /etc: --help",
        check_options_against_help_after_env(2),
    ),
    Rule(
        r"qc_cloud (users|dataset export) ",
        "needs the fleet database (the dashboard's tests run them): --help",
        check_options_against_help(2),
    ),
    Rule(
        r"python -m qc_cloud\.cli (dataset|train|evaluate|export) ",
        "needs a data set and minutes of torch training: --help",
        check_options_against_help(4),
    ),
    Rule(
        r"python -m qc_cloud\.cli models evaluate-candidate ",
        "needs model packages and a data set version or the fleet database: --help",
        check_options_against_help(5),
    ),
    Rule(
        r"qc_cloud (dataset build|models evaluate-candidate) ",
        "needs the fleet database, data set folders and model packages (test_learning_loop_data.py runs them): --help",
        check_options_against_help(3),
    ),
    Rule(
        r"build_trt_engine\.sh ",
        "needs trtexec (TensorRT, Jetson): --help",
        check_options_against_help(1, lambda word: str(REPO / TRT_SCRIPT)),
    ),
    Rule(
        r"source scripts/env\.sh && python bench/", "one second per configuration", check_benchmark_briefly, slow=True
    ),
    Rule(
        r"nice -n 10 python bench/bench_(image_transport|demosaic)\.py ",
        "megapixel frames for tens of seconds per configuration: --help",
        check_options_against_help(5),
    ),
    Rule(
        r"qc_cloud rollout (start|status|abort) ",
        "needs the fleet database, a signing key and model packages (test_fleet_rollout*.py run them): --help",
        check_options_against_help(3),
    ),
    Rule(
        r"nice -n 10 python bench/bench_edge_cloud\.py ",
        "trains two models and streams 1,000 parts per set-up for minutes: --help",
        check_options_against_help(5),
    ),
    Rule(
        r"OMP_NUM_THREADS=1 nice -n \d+ python -u bench/bench_(recipes|pooling)\.py ",
        "trains several models on generated data sets for tens of minutes: --help",
        check_options_against_help_after_env(6),
    ),
    Rule(
        r"\(cd ros2_ws && colcon build --metas \.\./colcon\.meta\)$",
        "on a temp copy of the workspace",
        check_colcon_build_with_the_meta,
        slow=True,
    ),
    # ---- cannot run here ----
    not_here(r"echo 'postgresql\+psycopg://", "writes a secret into /etc for a PostgreSQL server of a plant"),
    not_here(r"source /opt/ros/", "a system ROS 2 install (the Jetson); this machine has ROS 2 from PyPI"),
    not_here(
        r"ros2 launch ",
        "ros2 launch is not on PyPI (launch, launch_ros, ros2cli); the launch file is "
        "checked by tests/test_launch_file.py and the runner above runs the same graph",
    ),
    not_here(
        r"\(cd ros2_ws && \.\./\.venv/bin/python \"\$\(command -v colcon\)\" build ",
        "the system-ROS build (Jetson): /usr/bin/python3 is the system ROS 2's interpreter",
    ),
    not_here(r"(sudo |.*\| *sudo |apt-mark |dpkg-query )", "root changes to the Jetson's packages and devices"),
    not_here(r"curl .*ros-apt-source", "downloads the ROS apt source package for Ubuntu 22.04 (Jetson)"),
    not_here(r"getent group gpio", "the gpio group exists on the Jetson after the step above"),
    not_here(r"gst-launch-1\.0 nvarguscamerasrc", "a CSI camera and NVIDIA's GStreamer plugins (Jetson)"),
    not_here(r"python docker/check_image\.py --jetson --gpu", "CUDA and TensorRT (Jetson)"),
    not_here(
        r"docker ",
        "Docker and arm64 images for the Jetson; the Dockerfiles, compose file and entrypoint "
        "are checked by tests/test_docker.py",
    ),
    not_here(r"(touch passwd|printf .* > cell_password)$", "a deployment's broker credentials (docker/mosquitto)"),
    not_here(r"[A-Z_]+=\S*$", "a line of docker/.env (compose settings), not a command"),
]


def rule_for(command: Command) -> Rule | None:
    return next((rule for rule in RULES if rule.matches(command)), None)


def _params() -> list:
    params = []
    for command in documented_commands():
        rule = rule_for(command)
        marks = [pytest.mark.slow] if rule is not None and rule.slow else []
        params.append(pytest.param(command, id=f"{command.where} {command.text[:50]}", marks=marks))
    return params


@pytest.mark.parametrize("command", _params())
def test_documented_command_works_here(command: Command, tmp_path: Path) -> None:
    rule = rule_for(command)
    if rule is None:
        pytest.fail(
            f"{command} is not classified: add a Rule to RULES in tests/test_docs_commands.py, with a check that "
            "runs it here or the reason it cannot run here"
        )
    if rule.check is None:
        pytest.skip(f"{command.where}: cannot run here: {rule.reason}")
    rule.check(command, tmp_path)


def test_every_rule_matches_a_documented_command() -> None:
    commands = documented_commands()
    unused = [rule.pattern for rule in RULES if not any(rule.matches(command) for command in commands)]
    assert not unused, f"RULES in tests/test_docs_commands.py that match no documented command (remove them): {unused}"


def test_bash_blocks_are_found() -> None:
    """The parser sees the README's own blocks: the two commands and the runner."""
    texts = [command.text for command in commands_in(REPO / "README.md")]
    assert "make demo" in texts and "make test" in texts, texts
    assert any(text.startswith("python -m qc_cell.bringup.cell_runner") for text in texts), texts
