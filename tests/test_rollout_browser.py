"""The dashboard's Rollouts pages in a real browser (Selenium + Debian's headless chromium) against the fleet
service's HTTP server: an engineer follows a rollout from the list to its stages and events and aborts it with the
button; a viewer sees no button. Screenshot to docs/dashboard/rollout.png (QC_SCREENSHOTS=0 to skip)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from qc_cloud.dashboard import browser
from qc_cloud.dashboard.browser import wait_for

pytestmark = [pytest.mark.slow]
if browser.available():
    pytest.skip(browser.available(), allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402

from qc_cloud.dashboard import accounts  # noqa: E402
from qc_cloud.fleet import rollout  # noqa: E402
from qc_cloud.fleet.embedded import EmbeddedFleet  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ros2_ws" / "src" / "qc_cloud" / "test"))
from test_fleet_rollout_core import A, _cells, _signed  # noqa: E402

PASSWORD = "rollout-browser-pw"


def test_an_engineer_follows_and_aborts_a_rollout_and_a_viewer_cannot(tmp_path):
    fleet = EmbeddedFleet(tmp_path / "fleet", "mqtt://127.0.0.1:1", ingest=False)
    driver = browser.chromium()
    try:
        engine = fleet.service.engine
        _cells(engine, {A: "m-1"})
        plan = rollout.parse_plan({"name": "m-2 canary", "stages": [{"name": "canary", "cells": [A]}]})
        stages = rollout.resolve_stages(plan, {A: "m-1"}, "m-2")
        with engine.begin() as conn:
            for role in ("viewer", "engineer"):
                accounts.add_user(conn, role, PASSWORD, role)
            rid = rollout.create(
                conn,
                plan,
                "m-2",
                stages,
                [_signed("m-2", [A])],
                {A: _signed("m-1", [A], rollback_from="m-2")},
                "user:a",
            )
        rollout.Controller(engine, lambda cell, manifest: None).step()

        def login(user: str) -> None:
            driver.delete_all_cookies()
            driver.get(fleet.url + "/login")
            driver.find_element(By.CSS_SELECTOR, "#username").send_keys(user)
            driver.find_element(By.CSS_SELECTOR, "#password").send_keys(PASSWORD)
            driver.find_element(By.CSS_SELECTOR, "#login-button").click()
            wait_for(lambda: "/login" not in driver.current_url, what="login")

        login("viewer")
        driver.get(fleet.url + f"/rollouts/{rid}")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "tr.stage"), what="the stages table")
        assert not driver.find_elements(By.CSS_SELECTOR, "#abort"), "a viewer gets no abort button"

        login("engineer")
        driver.get(fleet.url + "/fleet")
        driver.find_element(By.LINK_TEXT, "Rollouts").click()
        wait_for(lambda: driver.find_elements(By.LINK_TEXT, "m-2 canary"), what="the rollout in the list").pop().click()
        stage = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "tr.stage"), what="the stage row")[0]
        assert "canary" in stage.text and "watching" in stage.text and A in stage.text
        events = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "tr.event")]
        assert any("stage_started" in e for e in events) and any("user:a" in e for e in events)
        if os.environ.get("QC_SCREENSHOTS", "1") != "0":
            (REPO / "docs" / "dashboard").mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(REPO / "docs" / "dashboard" / "rollout.png"))
        driver.find_element(By.CSS_SELECTOR, "#abort-form input[name=note]").send_keys("looks wrong")
        driver.find_element(By.CSS_SELECTOR, "#abort").click()
        wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#rollout-state").text == "aborting", what="aborting")
        assert not driver.find_elements(By.CSS_SELECTOR, "#abort")
        with engine.connect() as conn:
            found = rollout.get_rollout(conn, rid)
        assert [e["actor"] for e in found["events"] if e["event"] == "abort_requested"] == ["user:engineer"]
    finally:
        driver.quit()
        fleet.stop()
