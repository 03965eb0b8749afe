"""python -m qc_cell.tools.model: the operator installs and pins versions in the model store with the checks
inference enforces, and can have the running inference node load them (a real node in a real graph)."""

from __future__ import annotations

import threading

from test_inference_node import inference_cell

from qc_cell.inference.model_store import ORIGIN_OPERATOR, ModelStore
from qc_cell.inference.synthetic_models import write_package
from qc_cell.tools import model as tool
from qc_interfaces.msg import ModelInfo


def test_install_list_and_pin_with_the_stores_checks(tmp_path, capsys):
    store = str(tmp_path / "store")
    write_package(tmp_path / "v1", "1.0.0")
    assert tool.main(["install", str(tmp_path / "v1"), "--store", store]) == 0
    record = ModelStore(tmp_path / "store").record("1.0.0")
    assert record.origin == ORIGIN_OPERATOR and record.reference == str(tmp_path / "v1")
    (tmp_path / "v1" / "model.onnx").write_bytes(b"tampered")  # a package that no longer matches its manifest
    write_package(tmp_path / "v2", "2.0.0")
    (tmp_path / "v2" / "model.onnx").write_bytes(b"tampered")
    assert tool.main(["install", str(tmp_path / "v2"), "--store", store]) == tool.REFUSED
    assert "refused:" in capsys.readouterr().err
    assert tool.main(["pin", "9.9.9", "--store", store]) == tool.REFUSED  # not installed
    assert tool.main(["pin", "1.0.0", "--store", store, "--note", "2.0.0 misjudges scratches"]) == 0
    assert ModelStore(tmp_path / "store").record("1.0.0").rollback.reference == "2.0.0 misjudges scratches"
    capsys.readouterr()
    assert tool.main(["list", "--store", store]) == 0
    listing = capsys.readouterr().out
    assert "active: (none)" in listing and "1.0.0" in listing and "rollback authorised by operator" in listing


def test_pin_and_load_an_older_version_on_the_running_cell(tmp_path):
    write_package(tmp_path / "v2", "2.0.0", gain=3.0)
    with inference_cell(tmp_path) as cell:  # serves 1.0.0 from model_path (installed into the store at start)
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        assert cell.load(cell.install(tmp_path / "v2")).success
        cell.wait_model(ModelInfo.STATE_ACTIVE, "2.0.0")
        assert not cell.load(str(tmp_path / "store" / "versions" / "1.0.0")).success  # not without a pin
        result: list[int] = []
        argv = ["pin", "1.0.0", "--store", str(tmp_path / "store"), "--load", "--timeout", "30"]
        worker = threading.Thread(target=lambda: result.append(tool.main(argv)))
        worker.start()
        assert cell.graph.spin_until(lambda: not worker.is_alive(), 60), "the tool did not finish"
        assert result == [0]
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
