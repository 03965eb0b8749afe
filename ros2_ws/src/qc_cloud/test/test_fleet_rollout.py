"""Staged rollout with automatic rollback (issue 22) against the real parts: PostgreSQL, mosquitto with the accounts
and ACL of `qc_cloud broker-config` (the fleet account publishes the updates), and cells that receive them on
their own account and verify them with the cell's real ModelUpdater (signature, targets, expiry, version and
rollback policy, model store), then send their records as the bridge does (qc_contract.records)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from qc_cell.bridge.model_updater import ModelUpdater, UpdateOutcome, UpdateSettings
from qc_cell.bringup.local_broker import Mosquitto, mosquitto_binary
from qc_cell.inference.model_store import PolicyError
from qc_cell.inference.synthetic_models import write_package
from qc_cloud import cli
from qc_cloud.fleet import broker_acl, models, rollout, settings, simulate
from qc_cloud.fleet.service import FleetService, read_tokens
from qc_contract import artifact, records, update_manifest
from qc_contract.model_manifest import Manifest
from qc_contract.topics import STREAM_TOPICS

KEY = Ed25519PrivateKey.generate()
FETCH = artifact.FetchPolicy(schemes=frozenset({"file"}), read_timeout_s=10.0, deadline_s=60.0)
CANARY, LINE_MATE, OTHER_LINE = "plant1/line1/cell001", "plant1/line1/cell002", "plant1/line2/cell003"
CELLS = (CANARY, LINE_MATE, OTHER_LINE)
OLD, NEW = "m-1", "m-2"
ENVELOPE = {"schema_version", "type", "cell", "epoch", "seq", "id"}


def wait_until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cell:
    """A cell as the fleet sees it: its own broker account, the real ModelUpdater behind model/update, records
    (parts, model_status outcomes) published as the bridge sends them."""

    def __init__(self, tmp: Path, port: int, name: str, password: str) -> None:
        self.name, self.epoch, self.seq = name, secrets.token_hex(4), 0
        self.received: list[dict] = []  # manifests that arrived on model/update
        self.outcomes: list[UpdateOutcome] = []
        self._lock = threading.Lock()
        folder = tmp / name.replace("/", "_")
        keys = {update_manifest.key_id(KEY.public_key()): KEY.public_key()}
        self.updater = ModelUpdater(
            UpdateSettings(folder / "updates", keys, name, folder / "store", fetch=FETCH),
            self._load,
            self._report,
            load_shadow=self._load_shadow,
        )
        self.updater.start()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(name, password)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"qc/{name}/model/update", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_update
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), f"{name}: no SUBACK"

    def _on_update(self, client, userdata, message) -> None:
        if message.payload:
            self.received.append(json.loads(message.payload))
            self.updater.submit_manifest(bytes(message.payload))

    def _load(self, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        try:
            self.updater.store.check_activation(version, sha256)  # what inference checks before loading
        except PolicyError as refused:
            return False, str(refused), self.updater.active_version
        self.updater.store.activate(Manifest.load(Path(path)))  # what inference does once the model serves
        return True, f"serving {version}", version

    def _load_shadow(self, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        try:
            self.updater.store.check_shadow(version, sha256)  # what inference checks before loading a shadow
        except PolicyError as refused:
            return False, str(refused), self.updater.active_version
        self.updater.store.set_shadow(Manifest.load(Path(path)))
        return True, f"shadow {version}", self.updater.active_version

    @property
    def shadow(self) -> str:
        entry = self.updater.store.shadow()
        return entry.version if entry is not None else ""

    def shadow_run(self, n: int, live: str, shadow: str, live_p: float, shadow_p: float) -> None:
        """n parts decided by the live model (verdict from live_p at the default bands), each followed by the
        shadow's score, then the shadow's scored/skipped counts, as the inference node and bridge send them."""
        for _ in range(n):
            now = time.time_ns()
            part_id = f"{self.name.rsplit('/', 1)[-1]}-{self.epoch}-{self.seq:06d}"
            verdict = 2 if live_p >= 0.8 else 1 if live_p >= 0.5 else 0
            self.send(
                "part",
                records.part(
                    part_id=part_id, verdict=verdict, reasons=["visual_normal"], defect_probability=live_p,
                    process_anomaly_score=0.0, process_flags=0, model_version=live, encoder_count=self.seq,
                    capture_ns=now - 40_000_000, decision_ns=now, capture_to_decision_ms=40.0,
                ),
            )  # fmt: skip
            self.send(
                "shadow_score",
                records.shadow_score(
                    stamp_ns=now, part_id=part_id, shadow_version=shadow, live_version=live,
                    defect_probability=shadow_p, latency_ms=12.0,
                ),
            )  # fmt: skip
        counts = {"scored": n, "skipped_busy": n // 10}
        self.send("model_status", records.shadow_state(stamp_ns=time.time_ns(), active_version=live,
                                                       shadow_version=shadow, counts=counts))  # fmt: skip

    def kpis(self, parts: int, model: str) -> None:
        """KPI records with the drift histograms of `parts` synthetic parts decided by `model`."""
        for _, payload, _ in simulate.drift_kpi_stream(self.name, parts, model=model, start_ns=time.time_ns()):
            body = {k: v for k, v in json.loads(payload).items() if k not in ENVELOPE}
            self.send("kpi", body)

    def _report(self, outcome: UpdateOutcome) -> None:
        self.outcomes.append(outcome)
        self.send(
            "model_status",
            records.update_outcome(
                stamp_ns=time.time_ns(),
                accepted=outcome.accepted,
                version=outcome.version,
                reason=outcome.reason,
                detail=outcome.detail,
                active_version=outcome.active_version,
            ),
        )

    def send(self, stream: str, body: dict) -> None:
        with self._lock:
            self.seq += 1
            record = records.envelope(self.name, self.epoch, stream, self.seq, body)
        info = self.client.publish(f"qc/{self.name}/{STREAM_TOPICS[stream]}", records.encode(record), qos=1)
        info.wait_for_publish(10)

    def parts(self, n: int, model: str, not_inspected_every: int = 0) -> None:
        for i in range(n):
            now = time.time_ns()
            verdict = 3 if not_inspected_every and i % not_inspected_every == 0 else (2 if i % 10 == 9 else 0)
            self.send(
                "part",
                records.part(
                    part_id=f"{self.name.rsplit('/', 1)[-1]}-{self.epoch}-{self.seq:06d}",
                    verdict=verdict,
                    reasons=["visual_normal"],
                    defect_probability=0.1,
                    process_anomaly_score=0.0,
                    process_flags=0,
                    model_version=model,
                    encoder_count=self.seq,
                    capture_ns=now - 40_000_000,
                    decision_ns=now,
                    capture_to_decision_ms=40.0,
                ),
            )

    @property
    def active(self) -> str:
        return self.updater.active_version

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.updater.stop()


class Plant:
    def __init__(self, tmp: Path, broker, out: Path, database_url: str) -> None:
        self.tmp, self.broker = tmp, broker
        (tmp / "db-url").write_text(database_url + "\n")
        self.settings = settings.load(
            None,
            env={},
            data_dir=str(tmp / "fleet"),
            database_url=database_url,
            broker_url=broker.url,
            api=False,
            broker_username="qc-fleet",
            broker_password_file=str(broker_acl.password_path(out, "qc-fleet")),
            rollout_interval_s=0.2,
            drift_reference_parts=40,  # the line reference: a cell's first 40 parts on a model
            drift_window_parts=40,
            drift_min_parts=20,
        )
        self.service = FleetService(self.settings).start()
        self.cells = {
            name: Cell(tmp / "cells", broker.port, name, broker_acl.password_path(out, name).read_text().strip())
            for name in CELLS
        }
        self.packages = {v: tmp / "packages" / v for v in (OLD, NEW)}
        for version, folder in self.packages.items():
            write_package(folder, version)
        key_file = tmp / "signing.pem"
        key_file.write_bytes(
            KEY.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.key_file = key_file
        self._install_old()

    def _install_old(self) -> None:
        """Every cell runs OLD (installed by an earlier signed update) and has a baseline of parts by it."""
        from qc_cloud.commands.models_publish import pack_package, sign_update

        _, size, sha256, source = pack_package(self.packages[OLD], OLD, self.tmp, self.tmp / "initial")
        for cell in self.cells.values():
            manifest = sign_update(OLD, size, sha256, source, KEY, 24.0, [cell.name])
            cell.updater.submit_manifest(json.dumps(manifest).encode())
        wait_until(lambda: all(c.active == OLD for c in self.cells.values()), 20, "OLD installed on every cell")
        for cell in self.cells.values():
            cell.parts(40, OLD, not_inspected_every=50)
        wait_until(lambda: self.count(models.Part) == 120, 30, "the baseline parts ingested")
        with self.service.engine.connect() as conn:
            wait_until(lambda: set(rollout.cell_versions(conn).values()) == {OLD}, 20, "the fleet knows OLD runs")

    def count(self, table) -> int:
        from sqlalchemy import func

        with self.service.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()

    def cli(self, *args: str) -> int:
        return cli.main([*args, "--data-dir", str(self.tmp / "fleet"), "--database-url-file", str(self.tmp / "db-url")])

    def start(self, plan: dict, name: str = "plan.json") -> int:
        path = self.tmp / name
        path.write_text(json.dumps(plan))
        rc = self.cli(
            "rollout", "start", str(path), "--package", str(self.packages[NEW]), "--previous",
            str(self.packages[OLD]), "--key", str(self.key_file), "--artifact-dir", str(self.tmp / "artifacts"),
            "--by", "alice",
        )  # fmt: skip
        assert rc == 0, "rollout start refused a valid plan"
        with self.service.engine.connect() as conn:
            return rollout.list_rollouts(conn)[0]["id"]

    def rollout(self, rollout_id: int) -> dict:
        with self.service.engine.connect() as conn:
            return rollout.get_rollout(conn, rollout_id)

    def restart(self) -> None:
        self.service.stop()
        self.service = FleetService(self.settings).start()

    def close(self) -> None:
        for cell in self.cells.values():
            cell.close()
        self.service.stop()


PLAN = {
    "name": "m-2 to every cell",
    "min_parts_to_judge": 20,
    "stages": [
        {"name": "canary", "cells": [CANARY], "min_parts": 30, "watch_s": 0},
        {"name": "line", "cells": ["plant1/line1/*"], "min_parts": 30, "watch_s": 0},
        {"name": "fleet", "cells": ["*/*/*"], "min_parts": 30, "watch_s": 0},
    ],
}


@pytest.fixture
def plant(tmp_path, postgres_url):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    out = tmp_path / "broker-config"
    assert cli.main(["broker-config", "--cells", *CELLS, "--out", str(out)]) == 0
    conf = f"allow_anonymous false\npassword_file {out / 'passwd'}\nacl_file {out / 'acl'}\n"
    (tmp_path / "mq").mkdir()
    with Mosquitto(extra_config=conf, workdir=tmp_path / "mq") as broker:
        p = Plant(tmp_path, broker, out, postgres_url)
        try:
            yield p
        finally:
            p.close()


def test_stages_advance_on_healthy_figures_and_resume_after_a_restart(plant):
    rid = plant.start(PLAN)
    cells = plant.cells
    wait_until(lambda: cells[CANARY].active == NEW, 20, "the canary runs the candidate")
    assert cells[LINE_MATE].received == [] and cells[OTHER_LINE].received == [], "later stages wait"
    cells[CANARY].parts(30, NEW, not_inspected_every=50)
    wait_until(lambda: cells[LINE_MATE].active == NEW, 20, "the line stage after the canary passed")
    assert cells[OTHER_LINE].received == []
    plant.restart()  # mid-rollout: the new process resumes from the database
    cells[LINE_MATE].parts(30, NEW, not_inspected_every=50)
    wait_until(lambda: cells[OTHER_LINE].active == NEW, 30, "the fleet stage after the restart")
    cells[OTHER_LINE].parts(30, NEW, not_inspected_every=50)
    wait_until(lambda: plant.rollout(rid)["state"] == rollout.COMPLETED, 20, "the rollout completed")
    found = plant.rollout(rid)
    assert found["created_by"] == "user:alice"
    assert [e["event"] for e in found["events"]] == ["started"] + ["stage_started", "stage_passed"] * 3 + ["completed"]
    assert [s["cells"] for s in found["stages"]] == [[CANARY], [LINE_MATE], [OTHER_LINE]]
    for cell in cells.values():
        assert [m["version"] for m in cell.received] == [NEW], f"{cell.name} got only the candidate, once"
        assert cell.outcomes[-1].accepted, cell.outcomes[-1]
        assert cell.received[0]["targets"] == found["stages"][[CANARY, LINE_MATE, OTHER_LINE].index(cell.name)]["cells"]
    canary = found["stages"][0]["health"]
    assert canary["candidate"]["parts"] == 30 and canary["baseline"]["parts"] == 40 and canary["broken"] == []
    assert all(r["published_at"] is None for r in found["rollbacks"])


def test_a_broken_rule_at_the_canary_rolls_back_only_the_canary_and_stops(plant):
    rid = plant.start(PLAN)
    cells = plant.cells
    wait_until(lambda: cells[CANARY].active == NEW, 20, "the canary runs the candidate")
    cells[CANARY].parts(30, NEW, not_inspected_every=4)  # 25 % NOT_INSPECTED vs 2 % before
    sent = time.monotonic()
    wait_until(lambda: plant.rollout(rid)["state"] == rollout.ROLLED_BACK, 20, "the rollout rolled back")
    wait_until(lambda: cells[CANARY].active == OLD, 20, "the canary back on the previous model")
    print(f"rollback time: {time.monotonic() - sent:.2f} s from the last bad part sent to the previous model active")
    rollback = cells[CANARY].received[-1]
    assert (rollback["version"], rollback["rollback_from"], rollback["targets"]) == (OLD, NEW, [CANARY])
    assert cells[CANARY].outcomes[-1].accepted, "the cell's own verification accepted the signed rollback"
    found = plant.rollout(rid)
    broken = [b["rule"] for b in found["stages"][0]["health"]["broken"]]
    assert broken == ["not_inspected_rate"], found["stages"][0]["health"]
    assert [s["state"] for s in found["stages"]] == [rollout.FAILED, rollout.PENDING, rollout.PENDING]
    assert "not_inspected_rate" in found["reason"]
    with plant.service.engine.connect() as conn:
        alerts = conn.execute(select(models.Alert.cell, models.Alert.code, models.Alert.source)).all()
    assert [tuple(a) for a in alerts] == [(CANARY, rollout.ALERT_CODE, rollout.ALERT_SOURCE)]
    time.sleep(1.0)  # several controller steps: a stopped rollout publishes nothing more
    assert cells[LINE_MATE].received == [] and cells[OTHER_LINE].received == [], "later stages never got it"
    assert len(cells[CANARY].received) == 2
    assert [b["cell"] for b in found["rollbacks"] if b["published_at"]] == [CANARY]


def test_abort_through_the_api_rolls_back_every_cell_on_the_candidate(plant):
    from fastapi.testclient import TestClient

    rid = plant.start({**PLAN, "stages": [{**s, "min_parts": 10} for s in PLAN["stages"]], "min_parts_to_judge": 5})
    cells = plant.cells
    wait_until(lambda: cells[CANARY].active == NEW, 20, "the canary runs the candidate")
    cells[CANARY].parts(10, NEW)
    wait_until(lambda: cells[LINE_MATE].active == NEW, 20, "the line stage")
    tokens = read_tokens(plant.settings.data_dir)
    client = TestClient(plant.service.app(), raise_server_exceptions=False)
    url = f"/api/v1/rollouts/{rid}/abort"
    assert client.post(url, headers={"Authorization": f"Bearer {tokens['read']}"}).status_code == 403
    assert client.post(url).status_code == 401
    answer = client.post(url, headers={"Authorization": f"Bearer {tokens['write']}"}, json={"note": "test"})
    assert answer.status_code == 200, answer.text
    assert client.post(url, headers={"Authorization": f"Bearer {tokens['write']}"}).status_code == 409
    wait_until(lambda: plant.rollout(rid)["state"] == rollout.ABORTED, 20, "the rollout aborted")
    wait_until(lambda: cells[CANARY].active == OLD and cells[LINE_MATE].active == OLD, 20, "both rolled back")
    assert cells[OTHER_LINE].received == []
    status = client.get(f"/api/v1/rollouts/{rid}", headers={"Authorization": f"Bearer {tokens['read']}"}).json()
    abort = [e for e in status["events"] if e["event"] == "abort_requested"]
    assert abort and abort[0]["actor"] == "token:bootstrap-write"
    assert sorted(b["cell"] for b in status["rollbacks"] if b["published_at"]) == [CANARY, LINE_MATE]


SHADOW_PLAN = {
    "name": "m-2 shadow first",
    "min_parts_to_judge": 20,
    "stages": [
        {"name": "shadow", "role": "shadow", "cells": [CANARY], "min_parts": 30, "watch_s": 0},
        {"name": "canary", "cells": [CANARY], "min_parts": 30, "watch_s": 0},
        {"name": "fleet", "cells": ["*/*/*"], "min_parts": 30, "watch_s": 0},
    ],
}


def _line_references(plant) -> dict[tuple[str, str], tuple[int, bool]]:
    t = models.DriftReference.__table__
    with plant.service.engine.connect() as conn:
        rows = conn.execute(select(t.c.cell, t.c.model_version, t.c.parts, t.c.complete).where(t.c.source == "line"))
        return {(r.cell, r.model_version): (r.parts, r.complete) for r in rows}


def test_an_agreeing_shadow_is_promoted_and_the_canary_gets_its_line_reference_on_the_candidate(plant):
    cells = plant.cells
    cells[CANARY].kpis(60, OLD)  # the canary's line reference for the model it runs now
    wait_until(lambda: _line_references(plant).get((CANARY, OLD)) == (40, True), 20, "OLD's line reference")
    rid = plant.start(SHADOW_PLAN, "shadow-plan.json")
    wait_until(lambda: cells[CANARY].shadow == NEW, 20, "the candidate loaded as the canary's shadow")
    assert cells[CANARY].active == OLD and cells[CANARY].received[0]["role"] == "shadow"
    cells[CANARY].shadow_run(30, OLD, NEW, live_p=0.1, shadow_p=0.15)
    wait_until(lambda: cells[CANARY].active == NEW, 20, "the candidate promoted live on the canary")
    found = plant.rollout(rid)
    shadow = found["stages"][0]["health"]
    assert (shadow["candidate"]["parts"], shadow["candidate"]["shadow_agreement"]) == (30, 1.0), shadow
    assert shadow["candidate"]["skip_share"] == pytest.approx(3 / 33) and shadow["broken"] == []
    assert cells[CANARY].outcomes[-1].from_store, "the promotion took the shadow's stored copy"
    assert cells[LINE_MATE].received == [] and cells[OTHER_LINE].received == []
    # At promotion the drift reference of the candidate is this cell's own first parts on it (drift_store keys
    # the line reference by cell and model version): the canary's KPI records of NEW build (CANARY, NEW).
    assert (CANARY, NEW) not in _line_references(plant)
    cells[CANARY].kpis(60, NEW)
    wait_until(lambda: _line_references(plant).get((CANARY, NEW)) == (40, True), 20, "NEW's line reference")
    assert _line_references(plant)[(CANARY, OLD)] == (40, True), "the previous model's reference is kept apart"


def test_a_disagreeing_shadow_stops_the_rollout_and_no_cell_runs_the_candidate_live(plant):
    cells = plant.cells
    rid = plant.start(SHADOW_PLAN, "shadow-plan.json")
    wait_until(lambda: cells[CANARY].shadow == NEW, 20, "the candidate loaded as the canary's shadow")
    cells[CANARY].shadow_run(30, OLD, NEW, live_p=0.1, shadow_p=0.6)  # the shadow would re-inspect every part
    wait_until(lambda: plant.rollout(rid)["state"] == rollout.ROLLED_BACK, 20, "the rollout stopped")
    found = plant.rollout(rid)
    assert [b["rule"] for b in found["stages"][0]["health"]["broken"]] == ["shadow_agreement"]
    assert "rule_broken" in [e["event"] for e in found["events"]]
    time.sleep(1.0)  # several controller steps: nothing more is published
    assert [m.get("role") for m in cells[CANARY].received] == ["shadow"] and cells[CANARY].active == OLD
    assert cells[LINE_MATE].received == [] and cells[OTHER_LINE].received == []
    with plant.service.engine.connect() as conn:
        alerts = conn.execute(select(models.Alert.cell, models.Alert.code)).all()
    assert [tuple(a) for a in alerts] == [(CANARY, rollout.ALERT_CODE)]
