"""The dashboard in a real browser (Selenium + Debian's headless chromium) against the real service (`qc_cloud
serve`, embedded), a real mosquitto and a running cell: log in, see the cell come online, follow a part, label
three re-inspection items (one by keyboard), acknowledge an alert the test provoked, export the data set;
each result checked in the database and in the exported folder. Then the roles: a viewer cannot label or
export, a logged-out browser sees only the login page, a forged or missing CSRF token is refused.
Screenshots of every page go to docs/dashboard/ (QC_SCREENSHOTS=0 to skip)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from qc_cloud.dashboard import browser
from qc_cloud.dashboard.browser import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.system]
if browser.available():
    pytest.skip(browser.available(), allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from sqlalchemy import select  # noqa: E402

from qc_cell.bringup.cell_runner import CellRunner  # noqa: E402
from qc_cell.bringup.demo import DEMO_FLAGS, demo_overrides  # noqa: E402
from qc_cell.bringup.local_broker import Mosquitto  # noqa: E402
from qc_cloud.dashboard import accounts  # noqa: E402
from qc_cloud.fleet import models, simulate  # noqa: E402
from qc_cloud.fleet.embedded import EmbeddedFleet  # noqa: E402
from qc_contract import records  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params" / "demo.yaml"
SHOTS = REPO / "docs" / "dashboard"
PASSWORD = "dashboard-test-pw"
PARTS = 160


class Browser:
    def __init__(self, url: str, width: int = 1280, height: int = 900) -> None:
        self.url = url
        self.driver = browser.chromium(width, height)
        self.driver.implicitly_wait(0)

    def get(self, path: str) -> None:
        self.driver.get(self.url + path)

    def find(self, css: str, timeout: float = 20.0):
        return wait_for(lambda: self.driver.find_elements(By.CSS_SELECTOR, css), timeout, css)[0]

    def login(self, user: str) -> None:
        self.get("/login")
        self.find("#username").send_keys(user)
        self.find("#password").send_keys(PASSWORD)
        self.find("#login-button").click()
        wait_for(lambda: "/login" not in self.driver.current_url, 20, "login")

    def shot(self, name: str) -> None:
        if os.environ.get("QC_SCREENSHOTS", "1") != "0":
            SHOTS.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(SHOTS / f"{name}.png"))

    def post_without_form(self, path: str, body: str) -> int:
        """A POST made by script in the logged-in page (as a forged cross-site form would): returns the status."""
        return self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},"
            " body: arguments[1], redirect: 'manual'}).then(r => done(r.status)).catch(e => done(String(e)));",
            path,
            body,
        )

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
def plant(tmp_path):
    """broker + fleet service with the dashboard + a running cell that sends image samples."""
    with Mosquitto() as broker:
        fleet = EmbeddedFleet(tmp_path / "fleet", broker.url, client_id=f"qc-dash-test-{os.getpid()}")
        with fleet.service.engine.begin() as conn:
            for role in accounts.ROLES:
                accounts.add_user(conn, role, PASSWORD, role)
        overrides = demo_overrides(PARTS, broker.url, tmp_path / "cell")
        overrides["cloud_bridge"].update(
            {"sample_enabled": True, "sample_min_interval_s": 0.0, "sample_random_rate": 0.25}
        )
        overrides["camera_driver"]["rate_hz"] = 10.0
        runner = CellRunner(
            PARAMS, namespace=f"dash{os.getpid()}", overrides=overrides, flags=DEMO_FLAGS, run_dir=tmp_path / "cell"
        )
        stop = threading.Event()
        ticker = threading.Thread(
            target=lambda: [runner.tick() for _ in iter(lambda: stop.wait(0.1), True)], daemon=True
        )
        runner.start()
        ticker.start()
        try:
            yield broker, fleet
        finally:
            stop.set()
            ticker.join(5)
            runner.stop()
            fleet.stop()


def test_dashboard_in_a_browser(plant, tmp_path):
    broker, fleet = plant
    engine = fleet.service.engine
    operator = Browser(fleet.url)
    try:
        # logged out: only the login page
        operator.get("/fleet")
        wait_for(lambda: "/login" in operator.driver.current_url, 10, "redirect to /login")
        assert not operator.driver.find_elements(By.CSS_SELECTOR, "#fleet-table")
        operator.shot("login")
        operator.login("operator")

        # the cell comes online on the fleet page (reloaded, as a person would)
        def cell_online():
            operator.get("/fleet")
            rows = operator.driver.find_elements(By.CSS_SELECTOR, "tr.cell-row")
            return rows and "online" in rows[0].find_element(By.CSS_SELECTOR, ".presence").text and rows[0]

        row = wait_for(cell_online, 120, "the cell online on the fleet page", step=1.0)
        cell = row.get_attribute("data-cell")

        # enough parts and samples for the pages
        def enough():
            with engine.connect() as conn:
                rows = conn.execute(
                    select(models.Sample.heatmap_sha256, models.Sample.random_sample).where(models.Sample.cell == cell)
                ).all()
            return len(rows) >= 4 and any(r[0] for r in rows) and any(r[1] for r in rows)

        wait_for(enough, 180, "4 image samples, one with a heatmap and one random, from the cell", step=1.0)
        operator.get("/fleet")
        operator.shot("fleet")

        # follow the cell, then a part
        operator.find(f'a[href="/cells/{cell}"]').click()
        operator.find("#chart-throughput")
        wait_for(lambda: operator.driver.execute_script("return !!window.Chart"), 10, "Chart.js loaded")
        time.sleep(0.5)  # let the charts draw for the screenshot
        operator.shot("cell")
        link = operator.find("a.part-link")
        part_id = link.text
        link.click()
        assert operator.find("#part-id").text == part_id
        with engine.connect() as conn:
            verdict = conn.execute(
                select(models.Part.verdict).where(models.Part.cell == cell, models.Part.part_id == part_id)
            ).scalar_one()
        assert operator.find("#part-verdict").text == verdict
        # search by part id finds the part with an image
        with engine.connect() as conn:
            imaged = (
                conn.execute(
                    select(models.Sample.part_id).where(
                        models.Sample.cell == cell, models.Sample.heatmap_sha256.isnot(None)
                    )
                )
                .scalars()
                .first()
            )
        box = operator.find("#search-part")
        box.send_keys(imaged, Keys.ENTER)
        wait_for(lambda: operator.driver.find_elements(By.CSS_SELECTOR, "figure.sample img"), 10, "part image")
        assert operator.find("#part-id").text == imaged
        wait_for(
            lambda: operator.driver.execute_script(
                "return document.querySelector('figure.sample img').naturalWidth > 0"
            ),
            10,
            "the image loaded",
        )
        # the class-activation heatmap lies over the image; its checkbox hides and shows it
        heat = operator.find("figure.sample img.heat")
        wait_for(lambda: operator.driver.execute_script("return arguments[0].naturalWidth > 0", heat), 10, "heatmap")
        assert heat.is_displayed()
        toggle = operator.find("input.heat-toggle")
        toggle.click()
        wait_for(lambda: not heat.is_displayed(), 5, "heatmap hidden by its toggle")
        toggle.click()
        wait_for(heat.is_displayed, 5, "heatmap shown again")
        operator.shot("part")

        # the cell's random samples (any verdict) have their own queue
        operator.get("/review?kind=random")
        assert operator.driver.find_elements(By.CSS_SELECTOR, "tr.queue-item"), "no random sample in the queue"
        assert "random sample" in operator.find("#queue").text

        # re-inspection: three labels, the third by keyboard
        operator.get("/review")
        operator.shot("review-queue")
        operator.find("tr.queue-item a").click()
        labelled = []
        for step in range(3):
            operator.find("#item-image")
            record_path = operator.driver.current_url.split("/review/", 1)[1].split("?")[0]
            labelled.append(record_path)
            if step == 0:
                operator.shot("review-item")
                operator.find("#answer-good").click()
            elif step == 1:
                operator.find("#defect-other").send_keys("dent")
                operator.find("#answer-defective").click()
            else:
                operator.find("#item-part").click()  # focus out of the text fields
                operator.driver.find_element(By.TAG_NAME, "body").send_keys("u")
            wait_for(lambda r=record_path: r not in operator.driver.current_url, 15, f"answer {step + 1} stored")
        with engine.connect() as conn:
            rows = conn.execute(select(models.Label).order_by(models.Label.id)).all()
        assert [(r.answer, r.defect_type, r.labelled_by, r.current) for r in rows] == [
            ("good", None, "operator", True),
            ("defective", "dent", "operator", True),
            ("unsure", None, "operator", True),
        ]
        assert [f"{r.cell}/{r.sample_record_id}" for r in rows] == labelled
        operator.get("/review")
        assert "False-reject estimate" in operator.find("#estimates").text

        # an alert the test provokes reaches the open alerts page live; acknowledge it with a comment
        operator.get("/alerts")
        wait_for(lambda: operator.find("#live-state").text == "live", 15, "the live alert stream")
        publisher = simulate.Publisher("127.0.0.1", broker.port, client_id=f"dash-test-alert-{os.getpid()}")
        alert = simulate.alert_record(cell, "7e57a1e7", 1)
        alert["code"], alert["message"] = "DASH_TEST", "provoked by the browser test"
        sent = time.monotonic()
        publisher.publish_all([(f"qc/{cell}/alert", records.encode(alert))])
        publisher.close()
        with engine.connect():
            pass
        shown = wait_for(
            lambda: [
                r
                for r in operator.driver.find_elements(By.CSS_SELECTOR, "#alerts-body tr")
                if "provoked by the browser test" in r.text
            ],
            10,
            "the provoked alert in the open page",
            step=0.05,
        )[0]
        print(f"alert published -> visible in the browser: {time.monotonic() - sent:.2f} s")
        operator.shot("alerts")
        shown.find_element(By.CSS_SELECTOR, "input[name=note]").send_keys("checked by the test")
        shown.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        with engine.connect() as conn:
            acked = wait_for(
                lambda: conn.execute(
                    select(models.Alert).where(models.Alert.code == "DASH_TEST", models.Alert.acked_at.isnot(None))
                ).first(),
                10,
                "the acknowledgement stored",
            )
        assert acked.acked_by == "operator" and acked.ack_note == "checked by the test"

        # the operator cannot export
        operator.get("/export")
        assert operator.find("#error-status").text == "403"
    finally:
        operator.close()

    # the engineer exports the data set
    engineer = Browser(fleet.url)
    try:
        engineer.login("engineer")
        engineer.get("/export")
        engineer.find("#export-button").click()
        folder = Path(engineer.find("#export-folder").text)
        engineer.shot("export")
    finally:
        engineer.close()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["images"] == 2 and manifest["counts"] == {"good": 1, "dent": 1} and manifest["unsure_left_out"] == 1
    for item in manifest["items"]:
        assert (folder / item["path"]).read_bytes() == fleet.service.samples.get(item["sha256"])
        assert item["cell"] == cell and item["labelled_by"] == "operator"
    from qc_cloud.training.datasets import load_dataset

    assert len(load_dataset(folder, progress=False).samples) == 2

    # viewer: looks, cannot label or export; forged or missing CSRF refused
    viewer = Browser(fleet.url)
    try:
        viewer.login("viewer")
        viewer.get("/review")
        viewer.find("tr.queue-item a").click()
        assert viewer.find("#no-label").text.startswith("Your role (viewer)")
        assert not viewer.driver.find_elements(By.CSS_SELECTOR, "#label-form")
        target = viewer.driver.current_url.split(fleet.url, 1)[1].split("?")[0]
        csrf = viewer.driver.find_element(By.CSS_SELECTOR, "header form input[name=csrf_token]").get_attribute("value")
        assert viewer.post_without_form(target, f"answer=good&csrf_token={csrf}") == 403  # role
        assert viewer.post_without_form("/export", f"csrf_token={csrf}") == 403
    finally:
        viewer.close()
    admin = Browser(fleet.url, 820, 1180)  # a tablet in portrait
    try:
        admin.login("admin")
        admin.get("/users")
        admin.shot("users")
        admin.get("/fleet")
        admin.shot("fleet-tablet")
        admin.get("/review")
        target = admin.find("tr.queue-item a").get_attribute("href").split(fleet.url, 1)[1].split("?")[0]
        assert admin.post_without_form(target, "answer=good") == 403  # missing token
        assert admin.post_without_form(target, "answer=good&csrf_token=" + "0" * 64) == 403  # forged token
        assert admin.post_without_form("/export", "csrf_token=forged") == 403
    finally:
        admin.close()
    with engine.connect() as conn:
        assert len(conn.execute(select(models.Label)).all()) == 3  # nothing the refused requests could add
