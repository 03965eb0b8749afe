"""`qc_cloud verifier` on a real mosquitto: workers share the requests through an MQTT 5 shared subscription, every
request gets exactly one answer and one verification record, the load figures are published, and a killed worker
leaves its offline will while a restarted one serves again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest
from verify_requests import CELL, request_payload, request_topic

from qc_cell.bringup.local_broker import Mosquitto, Subscriber
from qc_cell.inference.synthetic_models import write_package
from qc_cloud.verifier.core import VerifierSettings
from qc_cloud.verifier.model import load_package
from qc_cloud.verifier.service import ServiceSettings, VerifierService
from qc_contract import records, schemas
from qc_contract.broker import broker_config


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("cloud") / "pkg"
    write_package(path, "cloud-test-1", input_hw=(32, 32))
    return path


def worker(broker: Mosquitto, package, name: str) -> VerifierService:
    scorer, _ = load_package(package, backend="onnxruntime", max_batch=4, threads=1)
    settings = VerifierSettings(worker=name, max_batch=4, max_wait_ms=2)
    service = VerifierService(
        ServiceSettings(broker_config(broker.url, f"test-{name}"), group="g1", status_period_s=0.3), settings, scorer
    )
    service.start()
    return service


def test_two_workers_share_the_requests_and_each_is_answered_once(package):
    with Mosquitto() as broker:
        cloud = Subscriber("127.0.0.1", broker.port, f"qc/{CELL}/verify/#")
        status = Subscriber("127.0.0.1", broker.port, "qc-verifier/+/status")
        workers = [worker(broker, package, "w1"), worker(broker, package, "w2")]
        try:
            n = 30
            for seq in range(1, n + 1):
                cloud.publish(request_topic(), request_payload(seq, 200 if seq % 2 else 40))
            assert cloud.wait_for(lambda: len(cloud.snapshot("/verify/verification")) >= n, 30), "all answered"
            responses = cloud.records("/verify/response")
            ids = Counter(r["request_id"] for r in responses)
            assert len(ids) == n and set(ids.values()) == {1}, "exactly one answer per request"
            for r in responses:
                schemas.validator("verify_response").validate(r)
                seq = int(r["request_id"].rsplit("-", 1)[1])
                assert r["verdict"] == ("DEFECTIVE" if seq % 2 else "NORMAL")
            verifications = cloud.records("/verify/verification")
            for v in verifications:
                schemas.validator("verification").validate(v)
            by_worker = Counter(v["verifier"] for v in verifications)
            assert set(by_worker) == {"w1", "w2"}, f"shared subscription spreads the load: {by_worker}"

            def loads():
                latest = {}
                for m in status.records("/status"):
                    latest[m["worker"]] = m
                return latest

            assert status.wait_for(lambda: sum((loads().get(w, {}).get("load") or {}).get("counts", {}).get("scored", 0)
                                                for w in ("w1", "w2")) == n, 10)  # fmt: skip
            load = loads()["w1"]["load"]
            assert {"queue_depth", "batch_sizes", "service_ms_p50", "queue_ms_p95"} <= set(load)
        finally:
            for w in workers:
                w.stop()
            cloud.close()
        final = Subscriber("127.0.0.1", broker.port, "qc-verifier/+/status")
        try:
            assert final.wait_for(lambda: len(final.snapshot()) == 2)
            assert {m.json()["state"] for m in final.snapshot()} == {"offline"}
        finally:
            final.close()


def test_a_killed_verifier_leaves_its_will_and_a_restarted_one_resumes(package, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(broker: Mosquitto) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "qc_cloud.cli", "verifier", "--model", str(package), "--worker", "vk"]
        cmd += ["--broker", broker.url, "--backend", "onnxruntime", "--threads", "1", "--status-period", "0.5"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def ready(process: subprocess.Popen) -> None:
        for line in process.stdout:
            if "serving" in line:
                return
        raise AssertionError(f"verifier exited with {process.wait()}")

    with Mosquitto() as broker:
        cloud = Subscriber("127.0.0.1", broker.port, "#")
        process = start(broker)
        try:
            ready(process)
            cloud.publish(request_topic(), request_payload(1))
            assert cloud.wait_for(lambda: len(cloud.snapshot("/verify/response")) == 1, 20)
            process.send_signal(signal.SIGKILL)
            process.wait(10)

            def state() -> str:
                statuses = cloud.records("qc-verifier/vk/status")
                return statuses[-1]["state"] if statuses else ""

            assert cloud.wait_for(lambda: state() == "offline", 60), "the broker published the will"
            process = start(broker)
            ready(process)
            cloud.publish(request_topic(), request_payload(2))
            assert cloud.wait_for(lambda: len(cloud.snapshot("/verify/response")) == 2, 20)
            assert json.loads(cloud.snapshot("/verify/response")[-1].payload)["request_id"].endswith("-2")
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
            assert cloud.wait_for(lambda: state() == "offline")
        finally:
            if process.poll() is None:
                process.kill()
            cloud.close()


def test_the_fleet_stores_every_verification_next_to_its_part(package, tmp_path, database_url):
    """Issue 21 end to end: a real verifier and a real fleet ingest worker on one mosquitto. Every request the
    verifier handled is stored once (a request the cell sent twice is answered twice, stored once) and joins the
    part's story, with the cloud's verdict next to the edge's."""
    pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")
    import time

    from sqlalchemy import func, select

    from qc_cloud.fleet import models, queries, settings, simulate
    from qc_cloud.fleet.service import FleetService
    from qc_cloud.fleet.store import Store
    from qc_cloud.fleet.worker import IngestWorker

    with Mosquitto() as broker:
        url_file = tmp_path / "db-url"
        url_file.write_text(database_url + "\n")
        s = settings.load(
            None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(url_file), broker_url=broker.url,
            api=False, bootstrap_tokens=False,
        )  # fmt: skip
        fleet = FleetService(s).prepare()
        ingest = IngestWorker(s, Store(fleet.engine, fleet.samples)).start()
        verifier = worker(broker, package, "wf")
        cell = Subscriber("127.0.0.1", broker.port, f"qc/{CELL}/verify/response")
        try:
            n = 4
            for seq in range(1, n + 1):  # the cell's part records, then its requests (one sent twice)
                part = simulate.part_record(CELL, "0badc0de", seq)
                part["part_id"] = f"cell3-{seq:08d}"  # verify_requests' part ids
                cell.publish(f"qc/{CELL}/part", records.encode(part))
            for seq in (1, 2, 3, 4, 2):
                cell.publish(request_topic(), request_payload(seq, 200 if seq % 2 else 40))

            def stored() -> int:
                with fleet.engine.connect() as conn:
                    return conn.execute(select(func.count()).select_from(models.Verification)).scalar_one()

            assert cell.wait_for(lambda: len(cell.snapshot()) == n + 1, 30), "every request answered"
            end = time.monotonic() + 30
            while time.monotonic() < end and (stored() < n or ingest.stats.duplicates < 2):
                time.sleep(0.1)
            # duplicates: the repeated request record itself, and the verifier's second verification of it
            assert (stored(), ingest.stats.duplicates, ingest.stats.quarantined) == (n, 2, 0)
            with fleet.engine.connect() as conn:
                story = queries.part_story(conn, CELL, "cell3-00000001")
                kinds = set(conn.execute(select(models.Stream.kind)).scalars())
            (v,) = story["verifications"]
            assert (v["outcome"], v["verdict"], v["local_verdict"], v["verifier"]) == (
                "scored",
                "DEFECTIVE",
                "REINSPECT",
                "wf",
            )
            assert v["request_id"] == records.record_id("0badc0de", "verify_request", 1)
            assert "verification" not in kinds, "the verifier's records are not a cell stream"
        finally:
            cell.close()
            verifier.stop()
            ingest.stop()
            fleet.stop()
