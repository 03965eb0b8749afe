"""Drift alerts in the fleet service: the rules (drift.py), the store (drift_store.py, migration 0008) on SQLite and
a real PostgreSQL, and the drift test of issue 22 through a real mosquitto into the real ingest worker: the
synthetic generator's lighting changes mid-run -> INPUT_DRIFT within a bounded number of parts; a stable run of the
same length raises nothing."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from sqlalchemy import inspect, select

from qc_cell.bringup.local_broker import Mosquitto, mosquitto_binary
from qc_cloud.fleet import db, drift, drift_store, models, settings, simulate
from qc_cloud.fleet.samples import SampleStore
from qc_cloud.fleet.service import FleetService
from qc_cloud.fleet.store import Message, Store
from qc_contract.drift import BINS, Histograms

CELL = "plant1/line1/cell7"
CHANGE_AT = 500  # the part at which the light changes (after the 300-part line reference and 200 more parts)
RUN = 800  # parts per run
DETECTION_BOUND = 100  # INPUT_DRIFT must be raised within this many parts after the change


def _counts(**bins) -> dict[str, list[int]]:
    out = {s: [0] * b.count for s, b in BINS.items()}
    for stat, (i, n) in bins.items():
        out[stat][i] = n
    return out


def test_window_sums_the_newest_records_until_enough_parts():
    recs = [(_counts(brightness=(i, 10)), 10, f"t{i}") for i in range(5)]  # newest first
    w = drift.window(recs, 25)
    assert (w.parts, w.records, w.last_time, w.first_time) == (30, 3, "t0", "t2")
    assert w.counts["brightness"][:4] == [10, 10, 10, 0]


def test_episode_opens_at_alert_and_clears_below_watch_only():
    s = drift.DriftSettings(reference_parts=100, window_parts=100, min_parts=50)
    ref = _counts(brightness=(8, 100), contrast=(8, 100), sharpness=(8, 100), defect_probability=(1, 100))

    def one(recent_bins: dict, parts: int = 100) -> drift.Assessment:
        w = drift.Window(_counts(**recent_bins), parts, 1)
        return drift.assess(ref, 100, {"source": "line"}, w, s)[0]

    moved = one({"brightness": (3, 100), "contrast": (8, 100), "sharpness": (8, 100)})
    assert moved.code == drift.INPUT_DRIFT and moved.statistic == "brightness" and moved.psi > 0.25
    assert moved.evidence["recent"]["counts"][3] == 100 and moved.evidence["reference"]["counts"][8] == 100
    assert drift.transition(False, moved, s) == "open" and drift.transition(True, moved, s) is None
    same = one({"brightness": (8, 100), "contrast": (8, 100), "sharpness": (8, 100)})
    assert drift.transition(True, same, s) == "clear" and drift.transition(False, same, s) is None
    scores = drift.assess(ref, 100, {}, drift.Window(_counts(defect_probability=(15, 100)), 100, 1), s)[1]
    assert scores.code == drift.SCORE_DRIFT and scores.statistic == "defect_probability" and scores.psi > 0.25
    assert drift.transition(False, scores, s) == "open"
    few = one({"brightness": (3, 10)}, parts=10)
    assert not few.judged and drift.transition(False, few, s) is None, "too few parts: nothing judged"
    with pytest.raises(ValueError, match="min_parts"):
        drift.DriftSettings(window_parts=50, min_parts=100)
    with pytest.raises(settings.SettingsError, match="thresholds"):
        settings.load(None, env={"QC_FLEET_DRIFT_WATCH_PSI": "0.5"})


def _store_run(store: Store, lighting, parts: int, seed: int = 1, start_part: int = 0) -> int | None:
    """Write a synthetic run's KPI records one by one; the part count at which the first alert appeared."""
    for topic, payload, n in simulate.drift_kpi_stream(CELL, parts, lighting=lighting, seed=seed):
        assert store.write([Message(topic, payload)]).stored == 1
        with store.engine.connect() as conn:
            if conn.execute(select(models.Alert.id)).first() is not None:
                return n
    return None


def test_store_raises_one_alert_per_episode_and_clears_it(database_url, tmp_path):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    store = Store(engine, SampleStore(tmp_path / "samples"))

    def light(i: int) -> float:  # nominal, dimmed from CHANGE_AT, back to nominal from 900
        return 0.7 if CHANGE_AT <= i < 900 else 1.0

    first = cleared = None
    for topic, payload, n in simulate.drift_kpi_stream(CELL, 1300, lighting=light, seed=2):
        assert store.write([Message(topic, payload)]).stored == 1
        with engine.connect() as conn:
            episode = conn.execute(select(models.DriftEpisode.cleared_at)).first()
        first = first or (n if episode else None)
        cleared = cleared or (n if episode and episode.cleared_at else None)
    after, back = first - CHANGE_AT, cleared - 900
    print(f"\nlight 0.7 from part {CHANGE_AT} to 899: INPUT_DRIFT after {after} parts, cleared {back} parts after")
    with engine.connect() as conn:
        alerts = conn.execute(select(models.Alert)).all()
        episodes = conn.execute(select(models.DriftEpisode)).all()
        ref = conn.execute(select(models.DriftReference)).one()
    assert [a.code for a in alerts] == ["INPUT_DRIFT"], "one alert for the whole episode (no storm)"
    assert alerts[0].source == "fleet/drift" and "PSI" in alerts[0].message
    assert (ref.source, ref.parts, ref.complete) == ("line", 300, True)
    (episode,) = episodes
    assert episode.alert_id == alerts[0].id and episode.peak_psi >= 0.25
    evidence = episode.evidence if isinstance(episode.evidence, dict) else json.loads(episode.evidence)
    assert evidence["statistic"] in ("brightness", "contrast", "sharpness") and evidence["psi"] >= 0.25
    assert evidence["recent"]["parts"] >= 100 and evidence["reference"]["parts"] == 300
    assert len(evidence["recent"]["counts"]) == BINS[evidence["statistic"]].count
    assert episode.cleared_at is not None, "cleared once the light was back"
    assert alerts[0].acked_by == "fleet/drift" and alerts[0].ack_note.startswith("cleared")
    engine.dispose()


def test_validation_reference_judges_before_the_line_reference_is_complete(database_url, tmp_path):
    """A model whose manifest's validation histograms say 'bright parts': a dim line drifts from its first parts."""
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    store = Store(engine, SampleStore(tmp_path / "samples"))
    validation = Histograms()
    for _, payload, _ in simulate.drift_kpi_stream(CELL, 200, seed=5):
        d = json.loads(payload)["distributions"]
        validation.merge(d["histograms"], d["parts"])
    with engine.begin() as conn:
        drift_store.put_validation_reference(conn, "m-1", validation.parts, validation.counts, db_now())
    first = _store_run(store, lambda i: 0.6, 280)  # ends before the line reference (300 parts) is complete
    print(f"\nvalidation reference, light 0.6 from the first part: INPUT_DRIFT after {first} parts")
    assert first is not None and first <= 160, f"validation reference: INPUT_DRIFT after {first} parts (min 150)"
    engine.dispose()


def db_now():
    from qc_cloud.fleet import rules

    return rules.utcnow()


def test_migration_0008_downgrades_to_0005_and_back(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    assert {"drift_references", "drift_episodes"} <= set(inspect(engine).get_table_names())
    db.downgrade(engine, "0005")
    assert not {"drift_references", "drift_episodes"} & set(inspect(engine).get_table_names())
    assert "distributions" not in {c["name"] for c in inspect(engine).get_columns("kpis")}
    db.upgrade(engine)
    assert "distributions" in {c["name"] for c in inspect(engine).get_columns("kpis")}
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")
@pytest.mark.parametrize("run", ["lighting_change", "stable"])
def test_drift_through_mosquitto_and_the_fleet_worker(tmp_path, postgres_url, run):
    """The issue's drift test: the cell's KPI records over a real broker into the real worker on PostgreSQL."""
    (tmp_path / "broker").mkdir()
    url_file = tmp_path / "db-url"
    url_file.write_text(postgres_url + "\n")
    with Mosquitto(workdir=tmp_path / "broker") as broker:
        s = settings.load(
            None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(url_file), broker_url=broker.url
        )
        s.api = False
        s.bootstrap_tokens = False
        service = FleetService(s).start()
        publisher = simulate.Publisher("127.0.0.1", broker.port)
        try:
            change = CHANGE_AT if run == "lighting_change" else RUN + 1

            def light(i: int) -> float:
                return 0.8 if i >= change else 1.0

            detected = None
            stream = simulate.drift_kpi_stream(CELL, RUN, lighting=light, seed=3)
            for stored, (topic, payload, n) in enumerate(stream, start=1):
                publisher.publish_all([(topic, payload)])  # one record at a time: detection to the record
                _wait(lambda k=stored: sum(w.stats.stored for w in service.workers) >= k, 30, f"record {stored}")
                with service.engine.connect() as conn:
                    codes = conn.execute(select(models.Alert.code).where(models.Alert.source == "fleet/drift")).all()
                if codes and detected is None:
                    detected = n
                    assert [c for (c,) in codes] == ["INPUT_DRIFT"]
            with service.engine.connect() as conn:
                alerts = conn.execute(select(models.Alert.code, models.Alert.message)).all()
        finally:
            publisher.close()
            service.stop()
    if run == "stable":
        assert alerts == [], f"a stable run of {RUN} parts raised {alerts}"
        print(f"\nstable run: {RUN} parts, no drift alert")
        return
    assert detected is not None, f"no INPUT_DRIFT in {RUN - CHANGE_AT} parts after the light changed"
    after = detected - CHANGE_AT
    print(f"\nlighting 1.0 -> 0.8 at part {CHANGE_AT}: INPUT_DRIFT after {after} parts ({alerts[0][1]})")
    assert 0 < after <= DETECTION_BOUND, f"INPUT_DRIFT {after} parts after the change (bound {DETECTION_BOUND})"
    assert len(alerts) == 1


def _wait(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    assert predicate(), f"timed out waiting for {what}"


def test_dashboard_shows_the_drift_alert_and_its_evidence(tmp_path):
    pytest.importorskip("fastapi", reason="the dashboard needs requirements/fleet.txt")
    import re

    from fastapi.testclient import TestClient

    from qc_cloud.dashboard import accounts

    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), ingest=False, bootstrap_tokens=False)
    service = FleetService(s).start()
    try:
        store = Store(service.engine, service.samples)
        assert _store_run(store, lambda i: 0.7 if i >= CHANGE_AT else 1.0, RUN) is not None
        with service.engine.begin() as conn:
            accounts.add_user(conn, "viewer", "correct horse battery", "viewer")
        client = TestClient(service.app())
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        client.post(
            "/login",
            data={"username": "viewer", "password": "correct horse battery", "csrf_token": token, "next": "/fleet"},
        )
        alerts = client.get("/alerts").text
        assert "INPUT_DRIFT" in alerts and "PSI" in alerts
        page = client.get(f"/cells/{CELL}").text
        table = page[page.index('id="drift-episodes"') :]
        assert "INPUT_DRIFT" in table and "line (300 parts)" in table and ">open<" in table
    finally:
        service.stop()


def test_fleet_drift_reference_command_stores_the_packages_validation_histograms(tmp_path, capsys):
    from qc_cloud import cli
    from qc_contract.model_manifest import DriftReference, Manifest

    h = Histograms()
    for _, payload, _ in simulate.drift_kpi_stream(CELL, 40, seed=4):
        d = json.loads(payload)["distributions"]
        h.merge(d["histograms"], d["parts"])
    package = tmp_path / "pkg"
    package.mkdir()
    Manifest(version="m-7", sha256="0" * 64, drift_reference=DriftReference(h.parts, h.counts)).write(package)
    data_dir = tmp_path / "fleet"
    assert cli.main(["fleet-drift-reference", str(package), "--data-dir", str(data_dir)]) == 0
    assert "40 validation images" in capsys.readouterr().out
    engine = db.make_engine(f"sqlite:///{data_dir / 'fleet.sqlite3'}")
    with engine.connect() as conn:
        row = conn.execute(select(models.DriftReference)).one()
    assert (row.cell, row.model_version, row.source, row.parts, row.complete) == ("*", "m-7", "validation", 40, True)
    assert row.histograms == h.counts
    Manifest(version="m-8", sha256="0" * 64).write(package)  # a package without the block: refused with the reason
    assert cli.main(["fleet-drift-reference", str(package), "--data-dir", str(data_dir)]) == 1
    assert "no drift_reference" in capsys.readouterr().err
    engine.dispose()
