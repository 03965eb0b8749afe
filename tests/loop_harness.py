"""Harness of the learning-loop system tests (tests/test_learning_loop_system.py): a small plant of real parts.

- `Plant`: ONE mosquitto, ONE fleet service (`qc_cloud serve` embedded, as `make demo` runs it: SQLite + HTTP API
  on a free port) and N cells, each a whole cell as processes (CellRunner) with its own namespace, cell id, camera
  seed, state folder and a CellRecorder (the cell's own record of every verdict, with the camera's ground truth).
- Ground truth: the synthetic camera passes each part's label and defect type through to quality/decision
  (`ground_truth`, `defect_type`); the fleet service does not store them, so figures join the fleet's verdicts
  (HTTP API) with the cells' records by (cell, part id).
- The loop's steps as small functions: `train_model` (`qc_cloud train`), `label_review_queue` (an operator on the
  re-inspection station's pages), `build_dataset` (`qc_cloud dataset build`), `evaluate_candidate`
  (`qc_cloud models evaluate-candidate`, the gate), `start_rollout` (`qc_cloud rollout start`; the embedded fleet
  service's controller runs it), `escape_rates` (figures per model version and defect type).
Every CLI step runs as a subprocess: the real command, and torch's memory leaves with it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from qc_contract.synthetic import SyntheticPartGenerator

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params" / "demo.yaml"
SITE, LINE = "demo", "line1"  # demo.yaml's cloud_bridge site and line
GOOD = "good"


def log(message: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] {message}", flush=True)


def qc_cloud_run(*args: str, timeout: float = 900.0) -> subprocess.CompletedProcess:
    """Run `qc_cloud <args>` (python -m qc_cloud.cli); stdout and stderr captured."""
    cmd = [sys.executable, "-m", "qc_cloud.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def qc_cloud(*args: str, timeout: float = 900.0) -> str:
    """Run `qc_cloud <args>` and return its stdout; a failure raises with its output."""
    done = qc_cloud_run(*args, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"qc_cloud {' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


# --- data and models ---------------------------------------------------------------------------------


def write_parts(root: Path, counts: Mapping[str, int], size: int, seed: int) -> Path:
    """A generic-layout data set (good/, one folder per defect type) of synthetic parts: `counts` maps "good" or a
    defect type to a number of parts; every image a different part (distinct indices of one generator)."""
    generator = SyntheticPartGenerator(seed=seed, width=size, height=size)
    index = 0
    for kind, n in counts.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            part = generator.part_with(index, None if kind == GOOD else kind)
            cv2.imwrite(str(root / kind / f"{kind}-{seed}-{i:04d}.png"), part.image)
            index += 1
    return root


@dataclass(frozen=True)
class TrainSettings:
    """Tiny training: a few epochs at a small input, enough for the loop to show, not a production model."""

    input_size: int = 96
    phase1_epochs: int = 6
    phase2_epochs: int = 1
    cache_draws: int = 1  # augmentation draws cached per image: the feature cache is most of a tiny run's time
    threads: int = 2

    def arguments(self) -> list[str]:
        return [
            "--input-size", str(self.input_size), "--phase1-epochs", str(self.phase1_epochs),
            "--phase2-epochs", str(self.phase2_epochs), "--cache-draws", str(self.cache_draws),
            "--threads", str(self.threads), "--no-progress",
        ]  # fmt: skip


def train_model(data: Path, out: Path, version: str, settings: TrainSettings = TrainSettings()) -> Path:
    """`qc_cloud train` on a data folder: the model package (manifest, model.onnx, report) in `out`."""
    started = time.monotonic()
    qc_cloud("train", "--data", str(data), "--out", str(out), "--version", version, *settings.arguments())
    log(f"trained {version} on {data.name} in {time.monotonic() - started:.0f} s")
    return out


def flipped_folder(source: Path, out: Path) -> Path:
    """A deliberately wrong data set: `source`'s good parts filed as defective ("defect") and its defective parts as
    good (a model trained on it is worse than any honest one)."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        target = out / ("defect" if folder.name == GOOD else GOOD)
        target.mkdir(parents=True, exist_ok=True)
        for image in folder.iterdir():
            shutil.copy2(image, target / f"{folder.name}__{image.name}")
    return out


def build_dataset(store: Path, *sources: str) -> dict:
    """`qc_cloud dataset build --out <store> <sources>`: a data set version; returns its JSON summary."""
    result = json.loads(qc_cloud("dataset", "build", "--out", str(store), *sources))
    log(f"data set {result['id']}: {result['counts']}")
    return result


def evaluate_candidate(candidate: Path, current: Path, out: Path, *data: str) -> tuple[int, dict]:
    """`qc_cloud models evaluate-candidate`: (exit status: 0 promotable, 3 blocked, report.json)."""
    done = qc_cloud_run(
        "models", "evaluate-candidate", "--candidate", str(candidate), "--current", str(current), "--out", str(out),
        *data,
    )  # fmt: skip
    if done.returncode not in (0, 3):
        raise RuntimeError(f"evaluate-candidate failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    log(f"gate on {candidate.name}: exit {done.returncode}, blocked by {blocking_figures(report)}")
    return done.returncode, report


def blocking_figures(report: Mapping) -> list[str]:
    """The gate's blocking checks as "figure on slice" strings (empty when promotable)."""
    return [
        f"{b.get('figure', b)} on {b.get('slice', '?')}" if isinstance(b, Mapping) else str(b)
        for b in report["gate"]["blocked_by"]
    ]


def make_keys(folder: Path) -> tuple[Path, Path]:
    """A model-signing key pair (`qc_cloud keys generate`, unencrypted: a throw-away test key)."""
    qc_cloud("keys", "generate", "--out", str(folder), "--unencrypted")
    return folder / "model-signing.key", folder / "model-signing.pub"


def start_rollout(plan: Mapping, folder: Path, package: Path, previous: Path, key: Path, fleet_dir: Path) -> int:
    """`qc_cloud rollout start` of `package` with `plan` (written as YAML), artifacts in `folder`/artifacts by
    file:// URL, the fleet service's data folder; returns the rollout id. The service's controller runs it."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.yaml").write_text(yaml.safe_dump(dict(plan), sort_keys=False))
    out = qc_cloud(
        "rollout", "start", str(folder / "plan.yaml"), "--package", str(package), "--previous", str(previous),
        "--key", str(key), "--artifact-dir", str(folder / "artifacts"), "--by", "loop-test",
        "--data-dir", str(fleet_dir),
    )  # fmt: skip
    log(out.strip().replace("\n", "; "))
    return int(re.search(r"rollout (\d+) of", out).group(1))


# --- the re-inspection station, as an operator uses it -----------------------------------------------


class Station:
    """The dashboard's re-inspection pages over real HTTP, logged in as one user (cookie session + CSRF)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        import httpx

        self.client = httpx.Client(base_url=url, timeout=30.0, follow_redirects=False)
        page = self.client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = self.client.post("/login", data={"username": username, "password": password, "csrf_token": token})
        if r.status_code != 303 or "error" in r.headers.get("location", ""):
            raise RuntimeError(f"login as {username} failed: {r.status_code} {r.headers.get('location')}")
        self.csrf = re.search(r'name="csrf_token" value="([^"]+)"', self.client.get("/fleet").text).group(1)

    def queue(self, order: str = "uncertain") -> list[tuple[str, str]]:
        """(cell/record_id path, part id) of the first page of unlabelled samples, most uncertain (or newest) first."""
        text = self.client.get("/review", params={"order": order}).text
        return [
            (path, html.unescape(part))
            for path, part in re.findall(r'href="/review/([^"?]+)\?[^"]*">([^<]+)</a>', text)
        ]

    def label(self, path: str, answer: str, defect_type: str = "") -> None:
        data = {"answer": answer, "defect_type": defect_type, "csrf_token": self.csrf, "then": "stay"}
        r = self.client.post(f"/review/{path}", data=data)
        if r.status_code != 303:
            raise RuntimeError(f"label {path} -> {r.status_code}: {r.text[:300]}")

    def close(self) -> None:
        self.client.close()


def add_operator(fleet_dir: Path, username: str, password_file: Path) -> None:
    """A dashboard user with role operator (`qc_cloud users add`)."""
    qc_cloud("users", "add", username, "--role", "operator", "--password-file", str(password_file),
             "--data-dir", str(fleet_dir))  # fmt: skip


def label_review_queue(
    station: Station,
    truth: Callable[[str, str], tuple[str, str] | None],
    limit: int = 1000,
    order: str = "uncertain",
) -> Counter:
    """An operator works through the station's queue: for each sample shown, the answer the part's true look
    calls for (truth(cell, part_id) -> ("good", "") or ("defective", type)), until the queue is empty or
    `limit` labels. Returns the answers given per defect type ("good" for good parts)."""
    given: Counter = Counter()
    skipped: set[str] = set()
    while sum(given.values()) < limit:
        items = [(p, part) for p, part in station.queue(order) if p not in skipped]
        if not items:
            break
        for path, part_id in items:
            cell = "/".join(path.split("/")[:3])
            answer = truth(cell, part_id)
            if answer is None:  # the test's own record does not know the part (should not happen)
                skipped.add(path)
                continue
            station.label(path, *answer)
            given[answer[1] or GOOD] += 1
            if sum(given.values()) >= limit:
                break
    return given


# --- the plant ---------------------------------------------------------------------------------------


@dataclass
class CellHandle:
    name: str  # cell id in the fleet: site/line/cell
    runner: object
    recorder: object

    @property
    def cell(self) -> str:
        return self.name.split("/")[-1]


@dataclass
class Plant:
    """Broker + fleet service + cells, started and stopped together (a context manager)."""

    root: Path
    cells: list[str]
    model: Path  # the model every cell starts with (inference.model_path)
    public_key: Path
    camera: dict = field(default_factory=dict)  # camera_driver overrides for every cell
    bridge: dict = field(default_factory=dict)  # cloud_bridge overrides for every cell
    fleet: dict = field(default_factory=dict)  # fleet service settings (e.g. rollout_interval_s)
    handles: list[CellHandle] = field(default_factory=list)

    def cell_overrides(self, cell: str, index: int, broker_url: str) -> dict[str, dict]:
        state = self.root / cell / "state"
        return {
            # A seed per cell: the cells see different parts.
            "camera_driver": {"seed": 1000 + index, "state_dir": str(state / "camera"), **self.camera},
            "inference": {"model_path": str(self.model), "model_store_dir": str(state / "models")},
            "cloud_bridge": {
                "broker_url": broker_url,
                "cell": cell,
                "outbox_path": str(state / "outbox.sqlite3"),
                "update_dir": str(state / "updates"),
                "updates_enabled": True,
                "update_public_keys": str(self.public_key),
                "update_url_schemes": ["file"],
                **self.bridge,
            },
        }

    def __enter__(self) -> Plant:
        from qc_cell.bringup.cell_runner import CellRunner
        from qc_cell.bringup.demo import DEMO_FLAGS
        from qc_cell.bringup.local_broker import Mosquitto
        from qc_cell.bringup.recorder import CellRecorder
        from qc_cloud.fleet.embedded import EmbeddedFleet

        self.broker = Mosquitto(persistence=True)
        self.broker.__enter__()
        self.fleet_dir = self.root / "fleet"
        self.fleet = EmbeddedFleet(
            self.fleet_dir, self.broker.url, client_id=f"qc-loop-fleet-{os.getpid()}", **self.fleet
        )
        try:
            for index, cell in enumerate(self.cells):
                # Namespaces unique per test run (the ROS domain is shared by the test session).
                runner = CellRunner(
                    PARAMS,
                    namespace=f"{cell}_{os.getpid()}",
                    overrides=self.cell_overrides(cell, index, self.broker.url),
                    flags=DEMO_FLAGS,
                    run_dir=self.root / cell,
                    on_status=lambda line, c=cell: None,
                )
                runner.start()
                self.handles.append(CellHandle(f"{SITE}/{LINE}/{cell}", runner, CellRecorder(runner.observer)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.runner.stop()
        if getattr(self, "fleet", None) is not None:
            self.fleet.stop()
        self.broker.__exit__(None, None, None)

    # -- waiting ------------------------------------------------------------------------------------

    def tick(self) -> None:
        for handle in self.handles:
            handle.runner.tick()

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Tick the cells until `condition()` holds; returns the seconds it took, raises with `what` on timeout."""
        started = last = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; {self.progress()}")
            self.tick()
            if time.monotonic() - last > 10:
                log(f"waiting for {what}: {self.progress()}")
                last = time.monotonic()
            time.sleep(0.2)
        return time.monotonic() - started

    def progress(self) -> str:
        return "; ".join(
            f"{h.cell}: {len(h.recorder.snapshot().decisions)} parts "
            f"{dict(Counter(d.model_version for d in h.recorder.snapshot().decisions.values()))}"
            for h in self.handles
        )

    def parts_by_model(self, version: str) -> dict[str, int]:
        """Parts each cell decided with model `version` (from the cells' records)."""
        return {
            h.cell: sum(d.model_version == version for d in h.recorder.snapshot().decisions.values())
            for h in self.handles
        }

    # -- ground truth and figures --------------------------------------------------------------------

    def truth(self, cell: str, part_id: str) -> tuple[str, str] | None:
        """What an operator looking at the part would answer, from the camera's ground truth in the cell's record."""
        for h in self.handles:
            if h.name == cell:
                d = h.recorder.snapshot().decisions.get(part_id)
                if d is None:
                    return None
                return ("defective", d.defect_type or "defect") if d.ground_truth == 2 else ("good", "")
        return None

    def fleet_parts(self) -> dict[tuple[str, str], list[dict]]:
        """Every part record the fleet service stored, read through its HTTP API by keyset pagination (stable while
        the cells add parts; offset pages would shift and show a record twice), keyed by (cell, part id); a list of
        distinct records, so a part stored twice shows as two."""
        stored: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
        cursor: str | None = None
        while True:
            page = self.fleet.get("/api/v1/parts", limit=1000, cursor=cursor)
            for item in page["items"]:
                stored[(item["cell"], item["part_id"])][item["record_id"]] = item
            cursor = page["next_cursor"]
            if cursor is None:
                return {key: list(records.values()) for key, records in stored.items()}


VERDICTS = ("NORMAL", "REINSPECT", "DEFECTIVE", "NOT_INSPECTED")


def escape_rates(plant: Plant, stored: Mapping[tuple[str, str], list[dict]]) -> dict[str, dict[str, dict]]:
    """Per model version and true defect type: parts, escapes (a defective part the fleet stored as NORMAL) and
    the escape rate; "good" carries the false-reject figures instead (verdict DEFECTIVE or NOT_INSPECTED)."""
    table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for h in plant.handles:
        for part_id, d in h.recorder.snapshot().decisions.items():
            items = stored.get((h.name, part_id))
            if not items:
                continue
            verdict, version = items[0]["verdict"], items[0]["model_version"] or "(none)"
            kind = (d.defect_type or "defect") if d.ground_truth == 2 else GOOD
            table[version][kind]["parts"] += 1
            table[version][kind][verdict] += 1
    figures: dict[str, dict[str, dict]] = {}
    for version, kinds in table.items():
        figures[version] = {}
        for kind, c in sorted(kinds.items()):
            row = {"parts": c["parts"], **{v: c[v] for v in VERDICTS if c[v]}}
            if kind == GOOD:
                row["false_reject_rate"] = round((c["DEFECTIVE"] + c["NOT_INSPECTED"]) / c["parts"], 3)
            else:
                row["escape_rate"] = round(c["NORMAL"] / c["parts"], 3)
            figures[version][kind] = row
    return figures


def figures_table(figures: Mapping[str, Mapping[str, dict]]) -> str:
    """The per-model figures as a Markdown table (for docs/learning-loop.md)."""
    lines = ["| model | true type | parts | NORMAL | REINSPECT | DEFECTIVE | NOT_INSPECTED | escape / false-reject |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for version, kinds in sorted(figures.items()):
        for kind, row in kinds.items():
            rate = row.get("escape_rate", row.get("false_reject_rate"))
            counts = " | ".join(str(row.get(v, 0)) for v in VERDICTS)
            lines.append(f"| {version} | {kind} | {row['parts']} | {counts} | {rate:.1%} |")
    return "\n".join(lines)


def one_verdict_per_part(plant: Plant, stored: Mapping[tuple[str, str], list[dict]], until_ns: int) -> dict:
    """Every part each camera captured before `until_ns` (camera/parts stamps): exactly one verdict in the cell
    (quality/decision) and exactly one record in the fleet service, with the same verdict. Returns the counts and
    the faults found (empty lists when all is well)."""
    names = {0: "NORMAL", 1: "REINSPECT", 2: "DEFECTIVE", 3: "NOT_INSPECTED"}
    out = {"parts": 0, "without_verdict": [], "duplicate_verdicts": [], "not_in_fleet": [], "stored_twice": [],
           "verdict_mismatch": []}  # fmt: skip
    for h in plant.handles:
        record = h.recorder.snapshot()
        out["duplicate_verdicts"] += record.duplicate_decisions
        for part_id, captured in record.parts.items():
            if captured > until_ns:
                continue
            out["parts"] += 1
            d = record.decisions.get(part_id)
            if d is None:
                out["without_verdict"].append(part_id)
                continue
            items = stored.get((h.name, part_id), [])
            if not items:
                out["not_in_fleet"].append(part_id)
            elif len(items) > 1:
                out["stored_twice"].append(part_id)
            elif items[0]["verdict"] != names[d.verdict]:
                out["verdict_mismatch"].append((part_id, names[d.verdict], items[0]["verdict"]))
    return out
