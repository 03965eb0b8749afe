"""A rollout's shadow stage judged on what shadow runs are for (SQLite and a real PostgreSQL): the candidate's
shadow scores counted for min_parts, its agreement with the live verdicts, its escapes / false rejects against
the live model's on operator-labelled parts, its skip share (the stage waits, and says why) and its latency p99.
Records go through the fleet's own ingest (Store.write: classify, validate, store); the controller's publish is
a list (the boundary; the MQTT side is in test_fleet_rollout.py). A broken shadow rule stops the rollout before
any cell runs the candidate live: no publish to the canary, an alert, the event with the figures."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qc_cloud.commands.models_publish import sign_update
from qc_cloud.fleet import db, models, rollout, rules
from qc_cloud.fleet.samples import SampleStore
from qc_cloud.fleet.store import Message, Store
from qc_contract import records

KEY = Ed25519PrivateKey.generate()
A, B = "plant1/line1/cell001", "plant1/line1/cell002"
LIVE, CANDIDATE = "1.0.0", "2.0.0"
VERDICT = {"NORMAL": 0, "REINSPECT": 1, "DEFECTIVE": 2, "NOT_INSPECTED": 3}


class Line:
    """Cell A's records through the fleet's ingest: parts decided by the live model, the candidate's shadow scores
    of the same parts, shadow_state counts; operator labels on the parts."""

    def __init__(self, engine, tmp_path) -> None:
        self.engine, self.store = engine, Store(engine, SampleStore(tmp_path / "samples"))
        self.seq = {"part": 0, "shadow_score": 0, "model_status": 0}
        self.parts = 0

    def _send(self, kind: str, topic: str, body: dict) -> None:
        self.seq[kind] += 1
        record = records.envelope(A, "0badcafe", kind, self.seq[kind], body)
        result = self.store.write([Message(f"qc/{A}/{topic}", records.encode(record))])
        assert result.stored == 1, result.reasons

    def run(self, n: int, live_p: float, shadow_p: float, latency_ms: float = 5.0, label: str = "") -> None:
        """n parts: the live verdict from live_p at the default bands, the shadow's score shadow_p."""
        for _ in range(n):
            self.parts += 1
            part_id, now = f"p{self.parts}", time.time_ns()
            verdict = "DEFECTIVE" if live_p >= 0.8 else "REINSPECT" if live_p >= 0.5 else "NORMAL"
            self._send(
                "part",
                "part",
                records.part(
                    part_id=part_id, verdict=VERDICT[verdict], reasons=[], defect_probability=live_p,
                    process_anomaly_score=0.0, process_flags=0, model_version=LIVE, encoder_count=self.parts,
                    capture_ns=now - 20_000_000, decision_ns=now, capture_to_decision_ms=20.0,
                ),
            )  # fmt: skip
            self._send(
                "shadow_score",
                "shadow",
                records.shadow_score(
                    stamp_ns=now, part_id=part_id, shadow_version=CANDIDATE, live_version=LIVE,
                    defect_probability=shadow_p, latency_ms=latency_ms,
                ),
            )  # fmt: skip
            if label:
                with self.engine.begin() as conn:
                    conn.execute(
                        models.Label.__table__.insert().values(
                            cell=A, sample_record_id=f"s-{part_id}", part_id=part_id, sha256="0" * 64, answer=label,
                            labelled_by="op", labelled_at=rules.utcnow(), current=True,
                        )
                    )  # fmt: skip

    def counts(self, scored: int, skipped: int) -> None:
        body = records.shadow_state(
            stamp_ns=time.time_ns(),
            active_version=LIVE,
            shadow_version=CANDIDATE,
            counts={"scored": scored, "skipped_no_spare_time": skipped},
        )
        self._send("model_status", "model/status", body)


def _signed(version: str, targets: list[str], role: str = "live", rollback_from: str = "") -> dict:
    source = {"url": f"file:///tmp/{version}.tar.gz"}
    return sign_update(version, 10, "0" * 64, source, KEY, 1.0, targets, rollback_from, role=role)


@pytest.fixture
def setup(database_url, tmp_path):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    now = rules.utcnow()
    with engine.begin() as conn:
        for name in (A, B):
            conn.execute(
                models.Cell.__table__.insert().values(name=name, first_seen=now, last_seen=now, model_version=LIVE)
            )
    published: list[tuple[str, dict]] = []

    def start(rules_: dict | None = None) -> tuple[int, rollout.Controller]:
        plan = rollout.parse_plan(
            {
                "min_parts_to_judge": 20,
                "stages": [
                    {"name": "shadow", "role": "shadow", "cells": [A], "min_parts": 30, "watch_s": 0},
                    {"name": "canary", "cells": [B], "min_parts": 30, "watch_s": 0},
                ],
                "rules": rules_ or {},
            }
        )
        stages = rollout.resolve_stages(plan, {A: LIVE, B: LIVE}, CANDIDATE)
        manifests = [_signed(CANDIDATE, s.cells, s.role) for s in stages]
        rollbacks = {B: _signed(LIVE, [B], rollback_from=CANDIDATE)}
        with engine.begin() as conn:
            rid = rollout.create(conn, plan, CANDIDATE, stages, manifests, rollbacks, "user:t")
        controller = rollout.Controller(engine, lambda cell, manifest: published.append((cell, manifest)))
        controller.step()
        assert [(c, m.get("role", "live")) for c, m in published] == [(A, "shadow")]
        return rid, controller

    def status(rid: int) -> dict:
        with engine.connect() as conn:
            return rollout.get_rollout(conn, rid)

    yield Line(engine, tmp_path), start, status, published, engine
    engine.dispose()


def test_an_agreeing_shadow_passes_on_its_shadow_scores_not_on_live_parts(setup):
    line, start, status, published, _ = setup
    rid, controller = start()
    line.run(25, 0.1, 0.12)  # 25 shadow scores: below min_parts 30
    line.counts(25, 5)
    controller.step()
    shadow = status(rid)["stages"][0]
    assert shadow["state"] == rollout.WATCHING and len(published) == 1
    assert "25 of 30 shadow-scored parts" in shadow["health"]["waiting"]
    line.run(3, 0.9, 0.95)
    line.run(2, 0.6, 0.7)
    line.counts(30, 6)
    controller.step()
    found = status(rid)
    cand, base = found["stages"][0]["health"]["candidate"], found["stages"][0]["health"]["baseline"]
    assert found["stages"][0]["state"] == rollout.PASSED, found["stages"][0]["health"]
    assert (cand["parts"], cand["matched_parts"], cand["shadow_agreement"]) == (30, 30, 1.0)
    assert cand["skip_share"] == pytest.approx(6 / 36) and cand["latency_p99_ms"] == 5.0
    assert base["parts"] == 30 and base["latency_p99_ms"] == 20.0
    assert [(c, m.get("role", "live")) for c, m in published] == [(A, "shadow"), (B, "live")], "the canary starts next"
    assert "agreement 100.0 % on 30 parts" in rollout.shadow_summary(cand, base)


def test_a_disagreeing_shadow_stops_the_rollout_before_any_cell_runs_it_live(setup):
    line, start, status, published, engine = setup
    rid, controller = start()
    line.run(24, 0.1, 0.1)
    line.run(6, 0.1, 0.9)  # the shadow calls 6 of 30 good-looking parts DEFECTIVE: agreement 0.8 < 0.9
    controller.step()
    found = status(rid)
    broken = found["stages"][0]["health"]["broken"]
    assert [b["rule"] for b in broken] == ["shadow_agreement"] and broken[0]["value"] == pytest.approx(0.8)
    assert found["state"] == rollout.ROLLED_BACK and "shadow_agreement 0.8000 < min 0.9" in found["reason"]
    assert [e["event"] for e in found["events"]] == ["started", "stage_started", "rule_broken", "rolled_back"]
    assert found["events"][2]["detail"]["broken"][0]["rule"] == "shadow_agreement"
    controller.step()
    assert published == [published[0]], "no live update to anyone; nothing to roll back"
    assert all(r["published_at"] is None for r in found["rollbacks"])
    with engine.connect() as conn:
        alerts = conn.execute(models.Alert.__table__.select()).all()
    assert [(a.cell, a.code) for a in alerts] == [(A, rollout.ALERT_CODE)]
    assert "live model was not changed" in alerts[0].message


def test_a_shadow_that_skips_almost_every_part_waits_and_says_why(setup, database_url, tmp_path, capsys):
    from qc_cloud import cli

    line, start, status, published, _ = setup
    rid, controller = start()
    line.run(30, 0.1, 0.1)
    line.counts(30, 570)  # 95 % skipped: the cell has no spare time for it
    for _ in range(3):
        controller.step()
    stage = status(rid)["stages"][0]
    assert stage["state"] == rollout.WATCHING and not stage["health"]["judged"] and len(published) == 1
    assert any("skipped 95.0 %" in w for w in stage["health"]["waiting"]), stage["health"]["waiting"]
    (tmp_path / "db-url").write_text(database_url + "\n")
    args = ["--data-dir", str(tmp_path / "fleet"), "--database-url-file", str(tmp_path / "db-url")]
    assert cli.main(["rollout", "status", str(rid), *args]) == 0
    out = capsys.readouterr().out
    assert "shadow: 30 scored, agreement 100.0 % on 30 parts, skip share 95.0 %" in out
    assert "waiting: the shadow skipped 95.0 % of the parts offered" in out
    line.run(10, 0.1, 0.1)
    line.counts(40, 60)  # 60 % skipped: judged
    controller.step()
    assert status(rid)["stages"][0]["state"] == rollout.PASSED


def test_the_shadows_escapes_on_labelled_parts_break_the_rule_though_it_mostly_agrees(setup):
    line, start, status, published, _ = setup
    rid, controller = start({"shadow_label_errors": {"min_labels": 10}})
    line.run(27, 0.1, 0.1, label="good")
    line.run(3, 0.9, 0.1, label="defective")  # the live model caught them, the shadow misses them
    controller.step()
    health = status(rid)["stages"][0]["health"]
    assert health["candidate"]["shadow_agreement"] == pytest.approx(0.9), "agreement alone would pass"
    assert (health["candidate"]["escape_rate"], health["baseline"]["escape_rate"]) == (1.0, 0.0)
    assert [b["rule"] for b in health["broken"]] == ["shadow_label_errors"]
    assert "shadow escape_rate 1.0000 vs live 0.0000 on 30 labelled parts" in health["broken"][0]["message"]
    assert len(published) == 1


def test_a_slow_shadow_breaks_the_latency_rule(setup):
    line, start, status, published, _ = setup
    rid, controller = start({"shadow_latency_p99_ms": {"max_ratio": 2.0}})
    line.run(29, 0.1, 0.1, latency_ms=10.0)
    line.run(1, 0.1, 0.1, latency_ms=400.0)  # p99 of 30 (nearest rank): the slowest
    controller.step()
    broken = status(rid)["stages"][0]["health"]["broken"]
    assert [b["rule"] for b in broken] == ["shadow_latency_p99_ms"] and broken[0]["limit"] == 40.0
    assert len(published) == 1


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"shadow_bands": {"reinspect": 0.9, "defective": 0.5}}, "must not exceed"),
        ({"shadow_bands": [0.5, 0.8]}, "`shadow_bands` must be a mapping"),
        ({"rules": {"shadow_agreement": {"min": 1.5}}}, "rules.shadow_agreement.min must be within [0, 1]"),
        ({"rules": {"shadow_skip_share": {"min": 0.5}}}, "unknown threshold 'min'"),
    ],
)
def test_bad_shadow_settings_are_refused(plan, message):
    with pytest.raises(rollout.PlanError) as refused:
        rollout.parse_plan({"stages": [{"cells": [A]}], **plan})
    assert message in str(refused.value)
    ok = rollout.parse_plan({"stages": [{"cells": [A]}], "rules": {"shadow_latency_p99_ms": {"max_ms": 250}}})
    assert ok.rules["shadow_latency_p99_ms"] == {"max_ratio": 2.0, "max_ms": 250.0}
    assert ok.shadow_bands == {"reinspect": 0.5, "defective": 0.8}


def test_the_dashboard_shows_a_cells_shadow_runs_linked_from_the_cell_and_the_rollout(tmp_path, database_url):
    import html
    import re

    from fastapi.testclient import TestClient
    from test_dashboard_pages import PASSWORD, login

    from qc_cloud.dashboard import accounts
    from qc_cloud.fleet import settings
    from qc_cloud.fleet.service import FleetService

    (tmp_path / "db-url").write_text(database_url + "\n")
    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(tmp_path / "db-url"))
    s.ingest = False
    service = FleetService(s).start()
    try:
        now = rules.utcnow()
        with service.engine.begin() as conn:
            for name in (A, B):
                conn.execute(
                    models.Cell.__table__.insert().values(name=name, first_seen=now, last_seen=now, model_version=LIVE)
                )
            accounts.add_user(conn, "viewer", PASSWORD, "viewer")
        plan = rollout.parse_plan(
            {
                "stages": [
                    {"name": "shadow", "role": "shadow", "cells": [A], "min_parts": 100, "watch_s": 0},
                    {"name": "canary", "cells": [B]},
                ]
            }
        )
        stages = rollout.resolve_stages(plan, {A: LIVE, B: LIVE}, CANDIDATE)
        with service.engine.begin() as conn:
            rid = rollout.create(
                conn,
                plan,
                CANDIDATE,
                stages,
                [_signed(CANDIDATE, st.cells, st.role) for st in stages],
                {B: _signed(LIVE, [B], rollback_from=CANDIDATE)},
                "user:t",
            )
        controller = rollout.Controller(service.engine, lambda cell, manifest: None)
        controller.step()
        line = Line(service.engine, tmp_path)
        line.run(8, 0.1, 0.12, label="good")  # NORMAL / NORMAL
        line.run(2, 0.9, 0.3, label="defective")  # DEFECTIVE live, NORMAL shadow: two shadow escapes
        line.counts(10, 30)
        controller.step()

        anonymous = TestClient(service.app())
        page = anonymous.get(f"/cells/{A}/shadow", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login"), "role-checked"
        viewer = TestClient(service.app())
        login(viewer, "viewer")
        assert 'id="shadow-link"' in viewer.get(f"/cells/{A}").text
        text = viewer.get(f"/rollouts/{rid}").text
        assert "Shadow: 10 scored, agreement 80.0 % on 10 parts, skip share 75.0 %" in text
        assert "Waiting: " in text and "10 of 100 shadow-scored parts" in text
        link = html.unescape(re.search(r'class="shadow-run-link" href="([^"]+)"', text).group(1))
        assert link.startswith(f"/cells/{A}/shadow?version={CANDIDATE}&since=")
        page = viewer.get(link)
        assert page.status_code == 200, page.text
        body = page.text
        assert f"<h2>{CANDIDATE}</h2>" in body and 'class="s-agreement">80.0 %' in body
        cross = re.search(r'<table class="band-cross">.*?</table>', body, re.S).group(0)
        rows = {
            m.group(1): [int(x) for x in re.findall(r"<td[^>]*>(\d+)</td>", m.group(2))]
            for m in re.finditer(r'<th class="v-(\w+)">\w+</th>(.*?)</tr>', cross, re.S)
        }
        assert rows["NORMAL"] == [8, 0, 0] and rows["DEFECTIVE"] == [2, 0, 0] and rows["REINSPECT"] == [0, 0, 0]
        assert "2 of 2 · 100.0 %" in body and "0 of 2 · 0.0 %" in body, "shadow vs live escapes on labelled parts"
        counts = [int(n) for n in re.findall(r'<td class="h-n">(\d+)</td>', body)]
        assert len(counts) == 20 and sum(counts) == 10 and counts[2] == 8 and counts[6] == 2
        assert "skip share <b>75.0 %" in body
        assert viewer.get(f"/cells/{A}/shadow?version=9.9.9").text.count('id="no-shadow"') == 1
        assert viewer.get("/cells/plant1/line1/nope/shadow").status_code == 404
        assert viewer.get(f"/cells/{A}/shadow?since=yesterday").status_code == 400
        assert viewer.get(f"/cells/{A}/shadow?reinspect=0.9&defective=0.5").status_code == 400
    finally:
        service.stop()


def test_the_shadow_runs_page_in_a_browser(tmp_path):
    """Headless chromium against the service over real HTTP (uvicorn): a viewer follows the links from the cell page
    and from the rollout's shadow stage and reads the figures the page shows. Screenshot: docs/dashboard/shadow.png."""
    import os
    from pathlib import Path

    from qc_cell.bringup.local_broker import Mosquitto, mosquitto_binary
    from qc_cloud.dashboard import accounts, browser
    from qc_cloud.fleet.embedded import EmbeddedFleet

    if browser.available() or mosquitto_binary() is None:
        pytest.skip(browser.available() or "mosquitto is not installed")
    from selenium.webdriver.common.by import By

    with Mosquitto() as broker:
        fleet = EmbeddedFleet(tmp_path / "fleet", broker.url, client_id=f"qc-shadow-test-{os.getpid()}")
        driver = None
        try:
            engine = fleet.service.engine
            now = rules.utcnow()
            with engine.begin() as conn:
                for name in (A, B):
                    conn.execute(
                        models.Cell.__table__.insert().values(
                            name=name, first_seen=now, last_seen=now, model_version=LIVE
                        )
                    )
                accounts.add_user(conn, "viewer", "viewer-password", "viewer")
            plan = rollout.parse_plan(
                {
                    "stages": [
                        {"name": "shadow", "role": "shadow", "cells": [A], "min_parts": 100},
                        {"name": "canary", "cells": [B]},
                    ]
                }
            )
            stages = rollout.resolve_stages(plan, {A: LIVE, B: LIVE}, CANDIDATE)
            with engine.begin() as conn:
                rid = rollout.create(
                    conn,
                    plan,
                    CANDIDATE,
                    stages,
                    [_signed(CANDIDATE, st.cells, st.role) for st in stages],
                    {B: _signed(LIVE, [B], rollback_from=CANDIDATE)},
                    "user:t",
                )
            controller = rollout.Controller(engine, lambda cell, manifest: None)
            controller.step()
            line = Line(engine, tmp_path)
            line.run(16, 0.1, 0.08)
            line.run(3, 0.9, 0.92)
            line.run(1, 0.6, 0.3)
            line.counts(20, 2)
            controller.step()

            driver = browser.chromium(1280, 1100)

            def find(css: str, timeout: float = 20.0):
                end = time.monotonic() + timeout
                while time.monotonic() < end:
                    found = driver.find_elements(By.CSS_SELECTOR, css)
                    if found:
                        return found[0]
                    time.sleep(0.1)
                raise AssertionError(f"timed out after {timeout} s waiting for {css}")

            driver.get(fleet.url + f"/cells/{A}/shadow")
            assert "/login" in driver.current_url, "a logged-out browser gets the login page"
            find("#username").send_keys("viewer")
            find("#password").send_keys("viewer-password")
            find("#login-button").click()
            find("#shadow-title")
            driver.get(fleet.url + f"/cells/{A}")
            find("#shadow-link").click()
            assert find(".s-agreement").text == "95.0 %"
            driver.get(fleet.url + f"/rollouts/{rid}")
            assert "agreement 95.0 % on 20 parts" in find(".c-shadow").text
            assert "20 of 100 shadow-scored parts" in find(".c-waiting").text
            find(".shadow-run-link").click()
            assert "since=" in driver.current_url and f"version={CANDIDATE}" in driver.current_url
            cross = find("table.band-cross")
            cells = [[td.text for td in tr.find_elements(By.CSS_SELECTOR, "td")] for tr in cross.find_elements(
                By.CSS_SELECTOR, "tbody tr"
            )]  # fmt: skip
            assert cells[:3] == [["16", "0", "0"], ["1", "0", "0"], ["0", "0", "3"]], cells
            bars = driver.find_elements(By.CSS_SELECTOR, "table.histogram .bar")
            assert len(bars) == 20 and max(b.size["width"] for b in bars) > 0
            assert "skip share 9.1 %" in find(".s-counts").text
            if os.environ.get("QC_SCREENSHOTS", "1") != "0":
                shots = Path(__file__).resolve().parents[4] / "docs" / "dashboard"
                shots.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(shots / "shadow.png"))
        finally:
            if driver is not None:
                driver.quit()
            fleet.stop()
