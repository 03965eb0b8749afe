"""System test of the learning loop on synthetic data (issue 22, "Tests"): two cells as processes on one real
mosquitto and one fleet service (embedded `qc_cloud serve`), a tiny model A trained here on good parts and three
defect types but NOT on scratches (the "new defect look"), operators' labels through the re-inspection station's
pages, a data set from the labels, model B trained on it and published to the cells as a signed update.

Checks: the escape rate on scratches drops from A to B (fleet verdicts joined with the camera's ground truth), and
every part captured got exactly one verdict in its cell and exactly one record in the fleet, throughout.

The loop's steps are the functions of tests/loop_harness.py; the lead swaps in the new pieces there and here:
`dataset build` for export + build_training_folder, `models evaluate-candidate` before publishing (gate),
`rollout start` (shadow -> canary -> all) for publish_model. Figures are printed (`-s` shows them):

    python -m pytest tests/test_learning_loop_system.py -m system -s -q
"""

from __future__ import annotations

import json
import os
import time

import pytest
from loop_harness import (
    GOOD,
    Plant,
    Station,
    TrainSettings,
    add_operator,
    build_training_folder,
    escape_rates,
    export_labels,
    figures_table,
    label_review_queue,
    log,
    make_keys,
    one_verdict_per_part,
    publish_model,
    train_model,
    write_parts,
)

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(1200)]

NEW_LOOK = "scratch"  # the defect type model A never saw
KNOWN = ("broken_large", "broken_small", "contamination")
SIZE = 128  # camera and training images (px): small keeps rendering, inference and training cheap
CELLS = ["cell1", "cell2"]
# Parts each cell decides with A before the operators label (enough samples of the new look to learn from), and
# with B after it is installed. QC_LOOP_SCALE scales both for a steadier figure (default 1.0).
SCALE = float(os.environ.get("QC_LOOP_SCALE", "1"))
PARTS_A, PARTS_B = int(250 * SCALE), int(150 * SCALE)
# 80 % defective, a fifth of them scratches: the new look is common enough for a short run to measure.
CAMERA = {"rate_hz": 5.0, "defect_rate": 0.8, "width": SIZE, "height": SIZE}
# Samples for the station: every re-inspect/defective verdict and half of all parts at random (the random ones are
# where escapes show up), no rate limit; small JPEGs at this size.
BRIDGE = {"sample_enabled": True, "sample_min_interval_s": 0.0, "sample_random_rate": 0.5}
TRAIN = TrainSettings(input_size=SIZE, phase1_epochs=40, phase2_epochs=0)


def test_labels_from_the_station_teach_model_b_the_new_defect_look(tmp_path):
    times: dict[str, float] = {}
    t0 = time.monotonic()
    key, public_key = make_keys(tmp_path / "keys")
    data_a = write_parts(tmp_path / "data-a", {GOOD: 60, **{k: 25 for k in KNOWN}}, SIZE, seed=7)
    model_a = train_model(data_a, tmp_path / "model-a", "1.0.0", TRAIN)
    times["train_a_s"] = time.monotonic() - t0

    with Plant(tmp_path / "plant", CELLS, model_a, public_key, camera=CAMERA, bridge=BRIDGE) as plant:
        t = time.monotonic()
        plant.wait_until(lambda: min(plant.parts_by_model("1.0.0").values()) >= PARTS_A, 600, f"{PARTS_A} parts with A")
        times["phase_a_s"] = time.monotonic() - t

        # Operators label what the station shows.
        t = time.monotonic()
        password = tmp_path / "operator.pw"
        password.write_text("loop-operator-password\n")
        add_operator(plant.fleet_dir, "olga", password)
        station = Station(plant.fleet.url, "olga", "loop-operator-password")
        try:
            labels = label_review_queue(station, plant.truth, limit=400)
        finally:
            station.close()
        times["labelling_s"] = time.monotonic() - t
        log(f"operator labels: {dict(labels)}")
        assert labels[NEW_LOOK] >= 10, f"the station showed too few {NEW_LOOK} parts to learn from: {dict(labels)}"

        # Data from the labels (+ A's data), model B, published to every cell; the cells keep running on A meanwhile.
        t = time.monotonic()
        export_labels(plant.fleet_dir, tmp_path / "labels")
        data_b = build_training_folder(tmp_path / "data-b", [data_a, tmp_path / "labels"])
        model_b = train_model(data_b, tmp_path / "model-b", "1.1.0", TRAIN)
        times["train_b_s"] = time.monotonic() - t

        t = time.monotonic()
        publish_model(model_b, key, plant.broker.url, CELLS, tmp_path / "artifacts")
        times["b_active_s"] = plant.wait_until(
            lambda: min(plant.parts_by_model("1.1.0").values()) >= 1, 300, "the first parts scored by B"
        )
        plant.wait_until(lambda: min(plant.parts_by_model("1.1.0").values()) >= PARTS_B, 600, f"{PARTS_B} parts with B")
        times["phase_b_s"] = time.monotonic() - t

        # Every part captured until now: one verdict in the cell, one record in the fleet service.
        until_ns = time.time_ns()

        def all_accounted() -> bool:
            check = one_verdict_per_part(plant, plant.fleet_parts(), until_ns)
            return not (check["without_verdict"] or check["not_in_fleet"])

        plant.wait_until(all_accounted, 120, "every captured part decided and stored in the fleet")
        stored = plant.fleet_parts()
        check = one_verdict_per_part(plant, stored, until_ns)
        figures = escape_rates(plant, stored)
        models_seen = {c["cell"]: c["model_version"] for c in plant.fleet.get("/api/v1/cells")["items"]}

    times["total_s"] = time.monotonic() - t0
    print("\n[loop] figures:", json.dumps({"times_s": {k: round(v) for k, v in times.items()},
                                            "labels": dict(labels), "parts_checked": check["parts"],
                                            "per_model": figures}, indent=1))  # fmt: skip
    print(figures_table(figures))
    assert set(models_seen.values()) == {"1.1.0"}, f"the fleet service does not show B on every cell: {models_seen}"
    assert not any(check[k] for k in check if k != "parts"), f"a part without exactly one verdict/record: {check}"
    a, b = figures["1.0.0"], figures["1.1.0"]
    assert a[NEW_LOOK]["parts"] >= 8 and b[NEW_LOOK]["parts"] >= 8, f"too few {NEW_LOOK} parts: {figures}"
    escape_a, escape_b = a[NEW_LOOK]["escape_rate"], b[NEW_LOOK]["escape_rate"]
    assert escape_b < escape_a, f"{NEW_LOOK} escape rate did not drop: A {escape_a}, B {escape_b}; {figures}"
