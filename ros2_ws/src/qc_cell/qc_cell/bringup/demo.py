"""`make demo`: the whole cell on synthetic parts with ground truth, the default model on ONNX Runtime,
a local mosquitto broker, the sim ejector and the fleet service (`qc_cloud serve`, embedded: SQLite + HTTP API
on a free port) storing what the cell sends. Ends with a summary table and a report folder.

    python -m qc_cell.bringup.demo --parts 300
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from qc_cell.bringup import report as run_report
from qc_cell.bringup.cell_runner import CellRunner
from qc_cell.bringup.local_broker import Mosquitto, Subscriber
from qc_cell.bringup.recorder import CellRecorder
from qc_contract.model_manifest import Manifest, ManifestError

REPO = Path(__file__).resolve().parents[5]
# The namespace the RViz and rqt configs (ros2_ws/src/qc_bringup/config/) show, so they work during the demo.
NAMESPACE = "cell1"
# The demo's cell: the bridge to its local broker, and simulated process sensors (a simulator runs only when asked).
DEMO_FLAGS = {"use_bridge": True, "use_process_sim": True}


def demo_overrides(parts: int, broker_url: str, run_dir: Path) -> dict[str, dict]:
    """What the demo changes on top of params/demo.yaml: the part count, the broker it started, and
    state (model store, outbox, part-id counter) kept inside this run's folder."""
    return {
        "camera_driver": {"max_parts": parts, "state_dir": str(run_dir / "state")},
        "inference": {"model_store_dir": str(run_dir / "models")},
        "cloud_bridge": {"broker_url": broker_url, "outbox_path": str(run_dir / "outbox.sqlite3")},
    }


def start_fleet(out_dir: Path, broker_url: str):
    """The fleet service next to the cell, or None (with the reason printed) where its packages are missing."""
    try:
        from qc_cloud.fleet.embedded import EmbeddedFleet
    except ImportError as exc:
        print(f"[demo] fleet service not started: {exc} (requirements/fleet.txt)", flush=True)
        return None
    fleet = EmbeddedFleet(out_dir / "fleet", broker_url, client_id=f"qc-demo-fleet-{out_dir.name}")
    print(f"[demo] fleet service: {fleet.url} (OpenAPI {fleet.url}/docs; API tokens in "
          f"{out_dir / 'fleet' / 'api-tokens.txt'})", flush=True)  # fmt: skip
    login = demo_login(fleet)
    if login:
        print(f"[demo] dashboard: {fleet.url}/ (login: {login[0]} / {login[1]}; role admin)", flush=True)
    return fleet


def demo_login(fleet) -> tuple[str, str] | None:
    """A dashboard account for the demo (admin, random password, printed once), or None without argon2."""
    import secrets

    try:
        from qc_cloud.dashboard import accounts
    except ImportError as exc:
        print(f"[demo] dashboard accounts unavailable: {exc} (requirements/fleet.txt)", flush=True)
        return None
    password = secrets.token_urlsafe(9)
    with fleet.service.engine.begin() as conn:
        if any(u["username"] == "demo" for u in accounts.list_users(conn)):
            accounts.set_password(conn, "demo", password)
        else:
            accounts.add_user(conn, "demo", password, "admin")
    return "demo", password


def fleet_summary(fleet, decided: set[str], wait_s: float = 30.0) -> dict:
    """What the fleet service stored, read through its HTTP API: parts (waiting for the last ones) and cells."""
    end = time.monotonic() + wait_s
    stored = fleet.part_ids()
    while not decided <= stored and time.monotonic() < end:
        time.sleep(0.5)
        stored = fleet.part_ids()
    cells = fleet.get("/api/v1/cells")["items"]
    return {
        "url": fleet.url,
        "parts_stored": len(stored),
        "parts_stored_vs_parts": f"{len(stored & decided)}/{len(decided)}",
        "cells": [{k: c[k] for k in ("cell", "presence", "model_version", "parts_24h")} for c in cells],
        "totals": fleet.get("/api/v1/status")["totals"],
    }


def run_demo(
    parts: int,
    params: Path,
    out_dir: Path,
    namespace: str = NAMESPACE,
    timeout_s: float | None = None,
    extra_overrides: dict[str, dict] | None = None,
    on_tick=None,
    fleet: bool = True,
) -> dict:
    """Run the cell until every part has a verdict and an MQTT record (or timeout); write the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image_bytes = 0
    # The broker keeps sessions across a restart, and the 'cloud' subscriber holds a persistent session, as a
    # real cloud consumer would: what the bridge replays after an outage reaches it even before it reconnects.
    with Mosquitto(persistence=True) as broker:
        cloud = Subscriber("127.0.0.1", broker.port, session_id=f"qc-demo-cloud-{namespace}")
        fleet_service = start_fleet(out_dir, broker.url) if fleet else None
        overrides = demo_overrides(parts, broker.url, out_dir)
        for node, values in (extra_overrides or {}).items():
            overrides.setdefault(node, {}).update(values)
        runner = CellRunner(params, namespace=namespace, overrides=overrides, flags=DEMO_FLAGS, run_dir=out_dir)
        camera = runner.params.get("camera_driver", {})
        image_bytes = int(camera.get("width", 640)) * int(camera.get("height", 480)) * 3
        rate = float(camera.get("rate_hz", 10.0))
        timeout_s = timeout_s or parts / rate * 3 + 120
        runner.start()
        recorder = CellRecorder(runner.observer)
        started = last_print = time.monotonic()
        all_decided_at = None
        try:
            while time.monotonic() - started < timeout_s:
                runner.tick()
                if on_tick is not None:
                    on_tick(runner, broker)
                decided = len(recorder.snapshot().decisions)
                if decided >= parts:
                    all_decided_at = all_decided_at or time.monotonic()
                    # Give the bridge time to deliver the last records (it may be replaying an outbox).
                    if len(run_report.part_ids(cloud.snapshot())) >= parts or time.monotonic() - all_decided_at > 60:
                        break
                if time.monotonic() - last_print >= 2.0:
                    print(
                        f"[demo] {runner.progress.line()} mqtt_parts={len(run_report.part_ids(cloud.snapshot()))}",
                        flush=True,
                    )
                    last_print = time.monotonic()
                time.sleep(0.1)
            # The last rejected parts are still travelling to the ejector: wait for their reject events.
            end = time.monotonic() + 15.0
            while time.monotonic() < end and not run_report.rejects_complete(recorder.snapshot()):
                runner.tick()
                time.sleep(0.1)
            record = recorder.snapshot()
            stored = None
            if fleet_service is not None:
                try:
                    stored = fleet_summary(fleet_service, set(record.decisions))
                except Exception as exc:  # reported, not fatal: the cell's own results stand
                    stored = {"url": fleet_service.url, "parts_stored_vs_parts": f"error: {exc}"}
        finally:
            runner.stop()
            cloud.close()
            if fleet_service is not None:
                fleet_service.stop()
        result = run_report.build(record, cloud.snapshot(), image_bytes, time.monotonic() - started)
        result["fleet"] = stored
        result["restarts"] = {spec.name: runner.supervisor.restarts(spec.name) for spec in runner.nodes}
        result["report_path"] = str(run_report.write(result, record, out_dir))
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=300, help="synthetic parts to run through the cell")
    parser.add_argument("--params-file", type=Path, default=REPO / "params" / "demo.yaml")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default reports/demo-<time>)")
    parser.add_argument("--namespace", default=NAMESPACE, help="cell namespace (the RViz and rqt configs show cell1)")
    args = parser.parse_args(argv)
    out = args.out or REPO / "reports" / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        Manifest.load(REPO / "models" / "default")
    except ManifestError as exc:
        print(f"[demo] the default model is missing or broken ({exc}); see docs/training.md", file=sys.stderr)
        return 2
    # The demo sends JPEG samples of re-inspect/defective parts, so the re-inspection station has a queue.
    samples = {"cloud_bridge": {"sample_enabled": True, "sample_min_interval_s": 1.0}}
    result = run_demo(args.parts, args.params_file, out, namespace=args.namespace, extra_overrides=samples)
    print()
    print(run_report.table(result))
    print(f"\n[demo] report: {result['report_path']}")
    if result.get("fleet"):
        print(f"[demo] browse the run's dashboard again: qc_cloud serve --data-dir {out / 'fleet'} --port 8080 "
              "then http://127.0.0.1:8080/ with the demo login printed above", flush=True)  # fmt: skip
    return 0 if result["parts_without_verdict"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
