"""The rollout core on both databases: plan validation (bad plans refused with the field named), `rollout start`
refusals, a shadow stage (role shadow signed, judged on model errors, no rollback of an unchanged live model)
and the 0007 tables' upgrade/downgrade. The MQTT side is in test_fleet_rollout.py; here the controller's
publish is a list (the boundary), and every manifest it got is checked with the edge's signature check."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import inspect

from qc_cell.inference.synthetic_models import write_package
from qc_cloud import cli
from qc_cloud.commands.models_publish import sign_update
from qc_cloud.fleet import db, models, rollout, rules
from qc_contract import update_manifest

KEY = Ed25519PrivateKey.generate()
KEYS = {update_manifest.key_id(KEY.public_key()): KEY.public_key()}
A, B = "plant1/line1/cell001", "plant1/line1/cell002"


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ([], "a mapping with `stages`"),
        ({"stages": []}, "non-empty list"),
        ({"stages": [{"cells": [A]}], "stage": 1}, "unknown plan field(s) ['stage']"),
        ({"stages": [{"name": "c", "cells": [A], "watch": 5}]}, "stages[0]: unknown field(s) ['watch']"),
        ({"stages": [{"cells": ["plant1/cell001"]}]}, "must be site/line/cell"),
        ({"stages": [{"cells": []}]}, "cells must be a non-empty list"),
        ({"stages": [{"cells": [A], "role": "canary"}]}, "role must be 'live' or 'shadow'"),
        ({"stages": [{"cells": [A], "role": "shadow"}]}, "at least one live stage"),
        (
            {"stages": [{"name": "a", "cells": [A]}, {"name": "b", "cells": [B], "role": "shadow"}]},
            "shadow stage must come before",
        ),
        ({"stages": [{"cells": [A], "min_parts": 0}]}, "stages[0].min_parts must be within"),
        ({"stages": [{"cells": [A], "min_parts": 2.5}]}, "whole number"),
        ({"stages": [{"cells": [A], "watch_s": "10m"}]}, "stages[0].watch_s must be a number"),
        ({"stages": [{"name": "x", "cells": [A]}, {"name": "x", "cells": [B]}]}, "stage names must differ"),
        ({"stages": [{"cells": [A]}], "rules": {"yield": {"max": 1}}}, "unknown rule 'yield'"),
        ({"stages": [{"cells": [A]}], "rules": {"reject_rate": {"max_ratio": 1}}}, "unknown threshold 'max_ratio'"),
        ({"stages": [{"cells": [A]}], "rules": {"reject_rate": {"max_increase": 2}}}, "within [0, 1]"),
    ],
)
def test_bad_plans_are_refused_with_the_field_named(plan, message):
    with pytest.raises(rollout.PlanError) as refused:
        rollout.parse_plan(plan)
    assert message in str(refused.value)


def test_defaults_are_filled_in_and_yaml_plans_load(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("stages:\n  - name: canary\n    cells: [plant1/line1/cell001]\nrules:\n  reject_rate: {max: 0.2}\n")
    plan = rollout.load_plan(path, "m-2")
    assert plan.name == "m-2" and plan.stages[0].role == "live"
    assert (plan.stages[0].min_parts, plan.stages[0].watch_s) == (rollout.DEFAULT_MIN_PARTS, rollout.DEFAULT_WATCH_S)
    assert plan.rules["reject_rate"] == {"max_increase": 0.05, "max": 0.2}
    assert plan.rules["latency_p99_ms"]["max_ratio"] == 1.5
    (tmp_path / "bad.yaml").write_text("stages: [\n")
    with pytest.raises(rollout.PlanError, match="not valid YAML"):
        rollout.load_plan(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(rollout.PlanError, match="not valid JSON"):
        rollout.load_plan(tmp_path / "bad.json")


def test_stages_resolve_against_known_cells_and_later_stages_take_only_new_cells():
    plan = rollout.parse_plan({"stages": [{"name": "canary", "cells": [A]}, {"name": "line", "cells": ["plant1/*/*"]}]})
    stages = rollout.resolve_stages(plan, {A: "m-1", B: "m-1"}, "m-2")
    assert [s.cells for s in stages] == [[A], [B]]
    with pytest.raises(rollout.PlanError, match="stage line: no new cell matches"):
        rollout.resolve_stages(plan, {A: "m-1"}, "m-2")
    with pytest.raises(rollout.PlanError, match="runs m-2, not older than m-2"):
        rollout.resolve_stages(plan, {A: "m-2", B: "m-1"}, "m-2")
    with pytest.raises(rollout.PlanError, match="reported no model version"):
        rollout.resolve_stages(plan, {A: "", B: "m-1"}, "m-2")


def _engine(database_url: str):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    return engine


def _cells(engine, versions: dict[str, str]) -> None:
    now = rules.utcnow()
    with engine.begin() as conn:
        for name, version in versions.items():
            conn.execute(
                models.Cell.__table__.insert().values(name=name, first_seen=now, last_seen=now, model_version=version)
            )


def _cli(tmp_path, database_url: str, *args: str) -> int:
    (tmp_path / "db-url").write_text(database_url + "\n")
    return cli.main([*args, "--data-dir", str(tmp_path / "fleet"), "--database-url-file", str(tmp_path / "db-url")])


def test_rollout_start_refuses_what_it_cannot_sign_or_roll_back(tmp_path, database_url, capsys):
    engine = _engine(database_url)
    _cells(engine, {A: "m-1", B: "m-0"})
    for version in ("m-1", "m-2"):
        write_package(tmp_path / version, version)
    key = tmp_path / "key.pem"
    key.write_bytes(
        KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"stages": [{"name": "canary", "cells": [A]}, {"name": "all", "cells": ["*/*/*"]}]}))
    start = ["rollout", "start", str(plan), "--package", str(tmp_path / "m-2"), "--key", str(key)]
    start += ["--artifact-dir", str(tmp_path / "art"), "--previous", str(tmp_path / "m-1")]
    assert _cli(tmp_path, database_url, *start) == 2
    assert "no --previous package for version(s) ['m-0']" in capsys.readouterr().out
    plan.write_text(json.dumps({"stages": [{"name": "canary", "cells": [A]}], "rules": {"nope": {}}}))
    assert _cli(tmp_path, database_url, *start) == 2
    assert "unknown rule 'nope'" in capsys.readouterr().out
    plan.write_text(json.dumps({"stages": [{"name": "canary", "cells": [A]}]}))
    assert _cli(tmp_path, database_url, *start[:-2], "--previous", str(tmp_path / "missing")) == 2
    assert "missing" in capsys.readouterr().out
    assert _cli(tmp_path, database_url, *start, "--by", "bob") == 0
    assert _cli(tmp_path, database_url, *start) == 2
    assert "is still active" in capsys.readouterr().out
    assert _cli(tmp_path, database_url, "rollout", "abort", "1", "--by", "carol") == 0
    assert _cli(tmp_path, database_url, "rollout", "abort", "1") == 2
    assert "only a running rollout can be aborted" in capsys.readouterr().out
    assert _cli(tmp_path, database_url, "rollout", "status", "1") == 0
    out = capsys.readouterr().out
    assert "aborting" in out and "user:bob: started" in out and "user:carol: abort_requested" in out
    with engine.connect() as conn:
        found = rollout.get_rollout(conn, 1)
    assert [b["cell"] for b in found["rollbacks"]] == [A]
    engine.dispose()


def _signed(version: str, targets: list[str], role: str = "live", rollback_from: str = "") -> dict:
    source = {"url": f"file:///tmp/{version}.tar.gz"}
    return sign_update(version, 10, "0" * 64, source, KEY, 1.0, targets, rollback_from, role=role)


def test_a_shadow_stage_is_signed_shadow_and_a_model_error_stops_it_without_a_rollback(database_url):
    engine = _engine(database_url)
    _cells(engine, {A: "m-1", B: "m-1"})
    plan = rollout.parse_plan(
        {
            "stages": [
                {"name": "shadow", "role": "shadow", "cells": [A], "min_parts": 1, "watch_s": 0},
                {"name": "canary", "cells": [B], "min_parts": 1, "watch_s": 0},
            ]
        }
    )
    stages = rollout.resolve_stages(plan, {A: "m-1", B: "m-1"}, "m-2")
    manifests = [_signed("m-2", s.cells, s.role) for s in stages]
    with engine.begin() as conn:
        rid = rollout.create(conn, plan, "m-2", stages, manifests, {B: _signed("m-1", [B], rollback_from="m-2")}, "t")
    published: list[tuple[str, dict]] = []
    controller = rollout.Controller(engine, lambda cell, manifest: published.append((cell, manifest)))
    controller.step()
    assert [(c, m["role"]) for c, m in published] == [(A, "shadow")]
    update_manifest.verify_signature(published[0][1], KEYS)  # the edge's check: the role is signed
    controller.step()  # no parts yet: watching
    with engine.begin() as conn:
        conn.execute(
            models.ModelStatus.__table__.insert().values(
                cell=A,
                record_id="x-model_status-1",
                time=rules.utcnow() + timedelta(seconds=1),
                event="update_rejected",
                version="m-2",
                active_version="m-1",
                reason="bad_package",
                message="golden set failed",
            )
        )
    controller.step()
    with engine.connect() as conn:
        found = rollout.get_rollout(conn, rid)
        alerts = conn.execute(models.Alert.__table__.select()).all()
    assert found["state"] == rollout.ROLLED_BACK and "model_errors" in found["reason"]
    assert published == [published[0]], "a shadow stage changed no live model: nothing to roll back, B untouched"
    assert [(a.cell, a.code) for a in alerts] == [(A, rollout.ALERT_CODE)]
    engine.dispose()


def test_the_rollout_tables_upgrade_and_downgrade(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    names = {"rollouts", "rollout_stages", "rollout_rollbacks", "rollout_events"}
    assert names <= set(inspect(engine).get_table_names())
    db.downgrade(engine, "0005")
    assert not names & set(inspect(engine).get_table_names())
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_dashboard_pages_show_the_rollout_and_only_engineers_may_abort(tmp_path, database_url):
    from fastapi.testclient import TestClient
    from test_dashboard_pages import PASSWORD, csrf, login

    from qc_cloud.dashboard import accounts
    from qc_cloud.fleet import settings
    from qc_cloud.fleet.service import FleetService

    (tmp_path / "db-url").write_text(database_url + "\n")
    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(tmp_path / "db-url"))
    s.ingest = False
    service = FleetService(s).start()
    try:
        _cells(service.engine, {A: "m-1"})
        plan = rollout.parse_plan({"name": "to <b>m-2</b>", "stages": [{"name": "canary", "cells": [A]}]})
        stages = rollout.resolve_stages(plan, {A: "m-1"}, "m-2")
        with service.engine.begin() as conn:
            for role in ("operator", "engineer"):
                accounts.add_user(conn, role, PASSWORD, role)
            rid = rollout.create(
                conn,
                plan,
                "m-2",
                stages,
                [_signed("m-2", [A])],
                {A: _signed("m-1", [A], rollback_from="m-2")},
                "user:x",
            )
        rollout.Controller(service.engine, lambda cell, manifest: None).step()
        operator, engineer = TestClient(service.app()), TestClient(service.app())
        login(operator, "operator")
        login(engineer, "engineer")
        listing = operator.get("/rollouts")
        assert listing.status_code == 200 and f'href="/rollouts/{rid}"' in listing.text
        assert "to &lt;b&gt;m-2&lt;/b&gt;" in listing.text, "names are escaped"
        page = operator.get(f"/rollouts/{rid}")
        assert "stage_started" in page.text and "canary" in page.text and 'id="abort"' not in page.text
        token = csrf(operator, f"/rollouts/{rid}")
        assert operator.post(f"/rollouts/{rid}/abort", data={"csrf_token": token}).status_code == 403
        assert 'id="abort"' in engineer.get(f"/rollouts/{rid}").text
        assert engineer.post(f"/rollouts/{rid}/abort", data={"csrf_token": "forged"}).status_code == 403
        token = csrf(engineer, f"/rollouts/{rid}")
        done = engineer.post(
            f"/rollouts/{rid}/abort", data={"csrf_token": token, "note": "why"}, follow_redirects=False
        )
        assert done.status_code == 303
        page = engineer.get(f"/rollouts/{rid}").text
        assert "aborting" in page and "user:engineer" in page and 'id="abort"' not in page
    finally:
        service.stop()


def test_an_expired_stage_update_is_never_published(database_url):
    engine = _engine(database_url)
    _cells(engine, {A: "m-1"})
    plan = rollout.parse_plan({"stages": [{"name": "canary", "cells": [A]}]})
    stages = rollout.resolve_stages(plan, {A: "m-1"}, "m-2")
    source = {"url": "file:///tmp/m-2.tar.gz"}
    expired = sign_update("m-2", 10, "0" * 64, source, KEY, 1.0, [A], issued_ns=time.time_ns() - 2 * 3600 * 10**9)
    with engine.begin() as conn:
        rid = rollout.create(conn, plan, "m-2", stages, [expired], {}, "t")
    published: list = []
    rollout.Controller(engine, lambda cell, manifest: published.append(cell)).step()
    with engine.connect() as conn:
        found = rollout.get_rollout(conn, rid)
    assert published == [] and found["state"] == rollout.ABORTED and "expired" in found["reason"]
    engine.dispose()
