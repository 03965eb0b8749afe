"""System tests of the learning loop on synthetic data (issue 22, "Tests"): cells as processes on one real mosquitto
and one fleet service (embedded `qc_cloud serve`, its rollout controller every second), a tiny model A trained here
on good parts and three defect types but NOT on contamination (the "new defect look": a new supplier's dirt).

1. The loop: operators label through the re-inspection station's pages; `qc_cloud dataset build` makes a data set
   version of the station's labels + A's data; model B is trained on it; `qc_cloud models evaluate-candidate`
   judges it (the default gate with its paired test; latency not gated on a shared machine): B must be
   promotable; `qc_cloud rollout start` runs it shadow on cell1 -> canary cell1 -> every cell. Checks: the
   shadow's scores reached the fleet, the rollout completed, the escape rate on the new look drops from A to B (fleet
   verdicts joined with the camera's ground truth), every part got exactly one verdict in its cell and one record
   in the fleet, throughout.
2. A bad candidate (trained on flipped labels): the gate blocks it (exit 3, the blocking figures named); started
   anyway, the controller rolls it back at the canary (rollout rolled_back, ROLLOUT_ROLLED_BACK alert, the canary
   on A again), the other cell never ran it, every part one verdict.

Figures are printed (`-s` shows them; docs/learning-loop.md, "The loop end to end (measured)"):

    python -m pytest tests/test_learning_loop_system.py -m system -s -q
"""

from __future__ import annotations

import json
import os
import time

import pytest
from loop_harness import (
    GOOD,
    LINE,
    SITE,
    Plant,
    Station,
    TrainSettings,
    add_operator,
    blocking_figures,
    build_dataset,
    escape_rates,
    evaluate_candidate,
    figures_table,
    flipped_folder,
    label_review_queue,
    log,
    make_keys,
    one_verdict_per_part,
    start_rollout,
    train_model,
    write_parts,
)

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(1200)]

# The defect type model A never saw. Not the thin scratch (it was until 2026-12-06): the tiny head on frozen
# 128-px features learns it weakly from ~60 labels (offline, 60 held-out scratches: A lets 47-50 % through, B
# 30-33 %; live B 37.5 %, 42.9 % and once 55.6 % against A's 53 %), so "the escapes drop" was a coin toss on
# the backbone, not a check of the loop. Contamination the same head learns (offline: A 20 % escapes, B 1.7 %).
NEW_LOOK = "contamination"
KNOWN = ("broken_large", "broken_small", "scratch")
SIZE = 128  # camera and training images (px): small keeps rendering, inference and training cheap
CELLS = ["cell1", "cell2"]
CANARY = f"{SITE}/{LINE}/cell1"
A, B = "1.0.0", "1.1.0"
# Parts each cell decides with A before the operators label (enough samples of the new look to learn from), and
# with B after the rollout. QC_LOOP_SCALE scales both for a steadier figure (default 1.0).
SCALE = float(os.environ.get("QC_LOOP_SCALE", "1"))
PARTS_A, PARTS_B = int(250 * SCALE), int(150 * SCALE)
# 80 % defective, a quarter of them the new look: common enough for a short run to measure.
CAMERA = {"rate_hz": 5.0, "defect_rate": 0.8, "width": SIZE, "height": SIZE}
# Samples for the station: every re-inspect/defective verdict and half of all parts at random (the random ones are
# where escapes show up), no rate limit; small JPEGs at this size.
BRIDGE = {"sample_enabled": True, "sample_min_interval_s": 0.0, "sample_random_rate": 0.5}
# A and B alike, the head on the frozen features: a fine-tuning epoch of B never gave its best checkpoint in five
# runs, at up to 160 s of a loaded machine.
TRAIN = TrainSettings(input_size=SIZE, phase1_epochs=40, phase2_epochs=0)
# The gate at the bands the cells run (demo.yaml: decision `bands: params`, 0.5/0.8; the gate's default is each
# manifest's bands, as a cell with `bands: from_model` runs it). False-reject tolerance 0.1 instead of 0.02: the
# slices hold 30-70 good parts (80 % defects), so 0.02 is less than one part.
GATE_ARGS = ("--bands", "0.5,0.8", "--latency-repeats", "2", "--gate")
# The default gate (tolerances and the paired test at significance 0.05), but latency: reported, not gated on a
# shared test machine (the same architecture and input size; its p99 here is the machine's noise); and, as in the
# rollout rules below, a re-inspect load that may grow by the new look's share: a B that stops letting the new
# look through sends some of it to re-inspection instead.
GATE = {"latency_p99_ms": None, "reinspect_load": 0.2}
# B must pass the gate (issue 22, step 4). QC_LOOP_REQUIRE_GATE=0 records the verdict and rolls a blocked B out
# anyway, to see the rest of the loop while a training change is investigated.
REQUIRE_GATE = os.environ.get("QC_LOOP_REQUIRE_GATE", "1") != "0"
FLEET = {"rollout_interval_s": 1.0}  # the controller's step (default 10 s)
JUDGE_PARTS = 20  # min_parts_to_judge: a live stage's rates are judged from this many candidate parts on
# Catching the new look moves DEFECTIVE/REINSPECT verdicts by up to its share of the parts (20 % here), and a
# better B is also more decided on the known looks (re-inspect -> defective): on this camera (80 % defects; A
# rejects well under 80 % of the parts) its reject rate may rise towards the defect share. One CI run rolled
# back a good B at 0.70 over 23 parts (B's rate over all its parts: 0.49) with +0.3 allowed; +0.5 still stops a
# model that rejects every part (1.0). Re-inspect +0.3 stops a model that sends good parts to re-inspection
# wholesale (test 2).
# In shadow, a B that catches what A misses disagrees with A's verdicts on up to the new look's share of the
# parts (20 %), and B also decides many parts A sent to re-inspection (A re-inspects a third of the known looks),
# so the agreement floor is well below the default 0.9 (which suits a retrain of the same defects): a CI run
# rolled a good B back in shadow at 0.57 over 21 parts with 0.6; a model that disagrees wholesale stays far below.
# Latency, live and shadow: as in the gate, not judged against the baseline on a shared test machine: a stage
# judged from 20 parts has the slowest of them as its p99 (a CI run rolled a good B back at 102.9 ms vs A's
# 66.4 ms, x1.5 allowed; same architecture and input size). An absolute ceiling still stops a model that stalls.
RULES = {
    "latency_p99_ms": {"max_ratio": None, "max_ms": 2000.0},
    "shadow_latency_p99_ms": {"max_ratio": None, "max_ms": 2000.0},
    "reject_rate": {"max_increase": 0.5},
    "reinspect_rate": {"max_increase": 0.3},
    "shadow_agreement": {"min": 0.4},
}


def plan(name: str, shadow: bool) -> dict:
    stages = [{"name": "shadow", "role": "shadow", "cells": [CANARY], "min_parts": 40, "watch_s": 15}] if shadow else []
    stages += [
        {"name": "canary", "cells": [CANARY], "min_parts": 30, "watch_s": 0},
        {"name": "all", "cells": ["*/*/*"], "min_parts": 30, "watch_s": 0},
    ]
    return {"name": name, "min_parts_to_judge": JUDGE_PARTS, "stages": stages, "rules": RULES}


@pytest.fixture(scope="module")
def model_a(tmp_path_factory):
    """Keys, A's data (no contamination) and model A, shared by both tests."""
    root = tmp_path_factory.mktemp("loop-a")
    t = time.monotonic()
    key, public_key = make_keys(root / "keys")
    data_a = write_parts(root / "data-a", {GOOD: 60, **{k: 25 for k in KNOWN}}, SIZE, seed=7)
    model = train_model(data_a, root / "model-a", A, TRAIN)
    return {"key": key, "public_key": public_key, "data": data_a, "model": model, "train_s": time.monotonic() - t}


def rollout_state(plant: Plant, rollout_id: int) -> dict:
    return plant.fleet.get(f"/api/v1/rollouts/{rollout_id}")


def all_accounted(plant: Plant, until_ns: int) -> bool:
    check = one_verdict_per_part(plant, plant.fleet_parts(), until_ns)
    return not (check["without_verdict"] or check["not_in_fleet"])


def test_labels_from_the_station_teach_model_b_the_new_defect_look(tmp_path, model_a):
    times: dict[str, float] = {"train_a_s": model_a["train_s"]}
    t0 = time.monotonic()
    data_a = model_a["data"]
    with Plant(
        tmp_path / "plant", CELLS, model_a["model"], model_a["public_key"], camera=CAMERA, bridge=BRIDGE, fleet=FLEET
    ) as plant:
        assert plant.fleet.service.rollouts is not None, "the fleet service runs no rollout controller"
        t = time.monotonic()
        plant.wait_until(lambda: min(plant.parts_by_model(A).values()) >= PARTS_A, 600, f"{PARTS_A} parts with A")
        times["phase_a_s"] = time.monotonic() - t

        # Operators label what the station shows.
        t = time.monotonic()
        password = tmp_path / "operator.pw"
        password.write_text("loop-operator-password\n")
        add_operator(plant.fleet_dir, "olga", password)
        station = Station(plant.fleet.url, "olga", "loop-operator-password")
        try:
            # Newest first, not most uncertain first: the new look's escapes are confident NORMAL verdicts, found
            # among the random samples; the most uncertain ones are parts A already sent to re-inspection.
            labels = label_review_queue(station, plant.truth, limit=400, order="newest")
        finally:
            station.close()
        times["labelling_s"] = time.monotonic() - t
        log(f"operator labels: {dict(labels)}")
        assert labels[NEW_LOOK] >= 10, f"the station showed too few {NEW_LOOK} parts to learn from: {dict(labels)}"

        # A data set version (the station's labels + A's data), model B on it, the gate; the cells keep running A.
        t = time.monotonic()
        store = tmp_path / "versions"
        # A fifth of the hard cases (default: half) join the regression set: most of the new look is training data.
        version = build_dataset(
            store, "--from-fleet", "--data-dir", str(plant.fleet_dir), "--from-folder", str(data_a),
            "--regression-fraction", "0.2",
        )  # fmt: skip
        model_b = train_model(store / version["id"], tmp_path / "model-b", B, TRAIN)
        times["dataset_and_train_b_s"] = time.monotonic() - t
        t = time.monotonic()
        (tmp_path / "gate.json").write_text(json.dumps(GATE))
        status, report = evaluate_candidate(
            model_b, model_a["model"], tmp_path / "gate-b", "--version", version["id"], "--store", str(store),
            "--from-fleet", "--data-dir", str(plant.fleet_dir), *GATE_ARGS, str(tmp_path / "gate.json"),
        )  # fmt: skip
        times["gate_s"] = time.monotonic() - t
        gate_b = {"promotable": status == 0, "blocked_by": blocking_figures(report)}
        assert {"regression", "all"} <= set(report["slices"]), f"the gate scored no regression/all slice: {report}"
        assert status == 0 or gate_b["blocked_by"], "the gate blocked B without naming a figure"
        if REQUIRE_GATE:
            assert status == 0, f"B blocked: {gate_b['blocked_by']}"
        elif status != 0:  # a tiny model: see REQUIRE_GATE
            log(f"B blocked by the gate ({gate_b['blocked_by']}): rolled out anyway, as an engineer may decide")

        # Shadow on cell1 -> canary cell1 -> every cell, run by the fleet service's controller.
        t = time.monotonic()
        rollout_id = start_rollout(
            plan("B everywhere", shadow=True), tmp_path / "rollout", model_b, model_a["model"], model_a["key"],
            plant.fleet_dir,
        )  # fmt: skip
        stage_times: dict[str, float] = {}

        def done() -> bool:
            found = rollout_state(plant, rollout_id)
            for s in found["stages"]:
                if s["state"] not in ("pending", "watching") and s["name"] not in stage_times:
                    stage_times[s["name"]] = round(time.monotonic() - t, 1)
            assert found["state"] in ("running", "completed"), f"rollout {found['state']}: {found['reason']}"
            return found["state"] == "completed"

        times["rollout_s"] = plant.wait_until(done, 600, "the rollout to complete")
        shadow = plant.fleet.get(f"/api/v1/cells/{CANARY}/shadow")
        scored = {s["shadow_version"]: s["scored"] for s in shadow.get("items", shadow)}
        assert scored.get(B, 0) > 0, f"no shadow score of B reached the fleet: {shadow}"
        t = time.monotonic()
        plant.wait_until(lambda: min(plant.parts_by_model(B).values()) >= PARTS_B, 600, f"{PARTS_B} parts with B")
        times["phase_b_s"] = time.monotonic() - t

        # Every part captured until now: one verdict in the cell, one record in the fleet service.
        until_ns = time.time_ns()
        plant.wait_until(lambda: all_accounted(plant, until_ns), 120, "every captured part decided and stored")
        stored = plant.fleet_parts()
        check = one_verdict_per_part(plant, stored, until_ns)
        figures = escape_rates(plant, stored)
        models_seen = {c["cell"]: c["model_version"] for c in plant.fleet.get("/api/v1/cells")["items"]}

    times["total_s"] = time.monotonic() - t0
    summary = {
        "times_s": {k: round(v) for k, v in times.items()},
        "stages_passed_after_s": stage_times,
        "labels": dict(labels),
        "gate": gate_b,
        "data_set": version["counts"],
        "shadow_scored": scored,
        "parts_checked": check["parts"],
        "per_model": figures,
    }
    print("\n[loop] figures:", json.dumps(summary, indent=1))
    print(figures_table(figures))
    assert set(models_seen.values()) == {B}, f"the fleet service does not show B on every cell: {models_seen}"
    assert not any(check[k] for k in check if k != "parts"), f"a part without exactly one verdict/record: {check}"
    a, b = figures[A], figures[B]
    assert a[NEW_LOOK]["parts"] >= 8 and b[NEW_LOOK]["parts"] >= 8, f"too few {NEW_LOOK} parts: {figures}"
    escape_a, escape_b = a[NEW_LOOK]["escape_rate"], b[NEW_LOOK]["escape_rate"]
    assert escape_b < escape_a, f"{NEW_LOOK} escape rate did not drop: A {escape_a}, B {escape_b}; {figures}"


# A bad candidate meets good parts: few defects, so a model that calls good parts defective stands out.
BAD_CAMERA = {**CAMERA, "defect_rate": 0.2}
BASELINE_PARTS = 60  # parts per cell with A before the rollout: the health rules' baseline


def test_a_worse_candidate_is_blocked_and_rolled_back_at_the_canary(tmp_path, model_a):
    times: dict[str, float] = {}
    t = time.monotonic()
    bad = train_model(flipped_folder(model_a["data"], tmp_path / "flipped"), tmp_path / "model-bad", B, TRAIN)
    holdout = write_parts(tmp_path / "holdout", {GOOD: 20, **{k: 8 for k in KNOWN}}, SIZE, seed=11)
    store = tmp_path / "versions"
    version = build_dataset(store, "--from-folder", str(model_a["data"]), "--regression-add", str(holdout))
    status, report = evaluate_candidate(
        bad, model_a["model"], tmp_path / "gate-bad", "--version", version["id"], "--store", str(store)
    )
    times["train_and_gate_s"] = time.monotonic() - t
    blocked = blocking_figures(report)
    assert status == 3 and blocked, f"the gate let the flipped-label model through: {report['gate']}"

    with Plant(
        tmp_path / "plant", CELLS, model_a["model"], model_a["public_key"], camera=BAD_CAMERA, fleet=FLEET
    ) as plant:
        plant.wait_until(lambda: min(plant.parts_by_model(A).values()) >= BASELINE_PARTS, 300, "the baseline")
        # Forced past the gate: rollout start does not ask the gate.
        t = time.monotonic()
        rollout_id = start_rollout(
            plan("bad B", shadow=False), tmp_path / "rollout", bad, model_a["model"], model_a["key"], plant.fleet_dir
        )

        def canary_back_on_a() -> bool:
            found = rollout_state(plant, rollout_id)
            assert found["state"] in ("running", "rolled_back"), f"rollout {found['state']}: {found['reason']}"
            if found["state"] != "rolled_back":
                return False
            return any(d.model_version == A and d.capture_ns > first_bad_ns() for d in canary_decisions())

        def canary_decisions() -> list:
            return list(plant.handles[0].recorder.snapshot().decisions.values())

        def first_bad_ns() -> int:
            return min((d.capture_ns for d in canary_decisions() if d.model_version == B), default=2**63)

        times["rolled_back_s"] = plant.wait_until(canary_back_on_a, 300, "the rollback of the canary")
        # A few more parts: the canary stays on A, the other cell never leaves it.
        n = len(canary_decisions())
        plant.wait_until(lambda: len(canary_decisions()) >= n + 20, 120, "20 more parts on the canary")
        until_ns = time.time_ns()
        plant.wait_until(lambda: all_accounted(plant, until_ns), 120, "every captured part decided and stored")
        stored = plant.fleet_parts()
        check = one_verdict_per_part(plant, stored, until_ns)
        found = rollout_state(plant, rollout_id)
        alerts = [a for a in plant.fleet.get("/api/v1/alerts")["items"] if a.get("code") == "ROLLOUT_ROLLED_BACK"]
        bad_parts = plant.parts_by_model(B)
        decisions = sorted(canary_decisions(), key=lambda d: d.capture_ns)

    on_b = [d for d in decisions if d.model_version == B]
    judged_ns = on_b[min(JUDGE_PARTS, len(on_b)) - 1].capture_ns  # the part that let the controller judge B
    back_ns = next(d.capture_ns for d in decisions if d.model_version == A and d.capture_ns > on_b[0].capture_ns)
    after = [d.model_version for d in decisions if d.capture_ns > back_ns]
    canary_stage = found["stages"][0]
    figures = {
        "gate_blocked_by": blocked,
        "broken": canary_stage["health"].get("broken") if canary_stage["health"] else None,
        "bad_parts_by_cell": bad_parts,
        "rollback_s_from_judging_part": round((back_ns - judged_ns) / 1e9, 1),
        "rollback_s_from_first_bad_part": round((back_ns - on_b[0].capture_ns) / 1e9, 1),
        "times_s": {k: round(v) for k, v in times.items()},
        "parts_checked": check["parts"],
    }
    print("\n[loop] bad candidate:", json.dumps(figures, indent=1))
    assert found["state"] == "rolled_back" and canary_stage["state"] == "failed", found
    # The flipped model moves good parts into the re-inspect or the defective band: a verdict-rate rule breaks.
    rates = {"reject_rate", "reinspect_rate"}
    assert {r["rule"] for r in canary_stage["health"]["broken"]} & rates, canary_stage["health"]
    assert alerts and all(a["cell"] == CANARY for a in alerts), f"no ROLLOUT_ROLLED_BACK alert for the canary: {alerts}"
    assert bad_parts["cell2"] == 0 and bad_parts["cell1"] > 0, f"B ran on the wrong cells: {bad_parts}"
    assert set(after) == {A}, f"the canary ran B again after the rollback: {after}"
    assert not any(check[k] for k in check if k != "parts"), f"a part without exactly one verdict/record: {check}"
