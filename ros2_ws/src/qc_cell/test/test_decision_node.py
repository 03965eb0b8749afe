"""decision node in a real rclpy graph: verdicts, the process state at capture time, fail-safe deadlines under
real timers, late and duplicate results, run-time thresholds through the parameter service, start-up
validation, KPIs, diagnostics, and exactly one verdict per part for 1,000 parts with 5 % missing results."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Header

from qc_cell.bringup.params_file import load as load_params
from qc_cell.fusion.flags import ProcessFlag
from qc_cell.nodes.decision import DecisionNode
from qc_cell.ros import qos
from qc_cell.ros.params import ParameterError
from qc_cell.ros.time import from_ns, to_ns
from qc_cell.testing.ros import Graph, ros_graph
from qc_interfaces.msg import CellKpi, InspectionResult, ModelInfo, PartTrigger, ProcessState, QualityDecision

MS = 1_000_000


@dataclass
class Cell:
    graph: Graph
    node: DecisionNode
    probe: Node
    decisions: list[QualityDecision] = field(default_factory=list)
    kpis: list[CellKpi] = field(default_factory=list)
    diagnostics: list[DiagnosticArray] = field(default_factory=list)

    def now_ns(self) -> int:
        return self.probe.get_clock().now().nanoseconds

    def part(self, part_id: str, capture_ns: int, encoder_count: int = -1) -> None:
        msg = PartTrigger(part_id=part_id, encoder_count=encoder_count)
        msg.header.stamp = from_ns(capture_ns)
        msg.header.frame_id = "camera"
        self.parts_pub.publish(msg)

    def result(self, part_id: str, capture_ns: int, p: float, **fields) -> None:
        fields.setdefault("model_version", "m1")
        msg = InspectionResult(part_id=part_id, defect_probability=p, **fields)
        msg.header.stamp = from_ns(capture_ns)
        msg.header.frame_id = "camera"
        self.results_pub.publish(msg)

    def process_state(self, stamp_ns: int, flags: int = 0, out_of_spec: bool = False, stale: bool = False) -> None:
        before = self.node._engine.counters.process_states
        msg = ProcessState(anomaly_score=1.5 if flags else 0.1, flags=flags, out_of_spec=out_of_spec, stale=stale)
        msg.header.stamp = from_ns(stamp_ns)
        self.state_pub.publish(msg)
        assert self.graph.spin_until(lambda: self.node._engine.counters.process_states > before, 5.0)

    def wait_decisions(self, count: int, timeout: float = 10.0) -> list[QualityDecision]:
        assert self.graph.spin_until(lambda: len(self.decisions) >= count, timeout), (
            f"expected {count} verdicts, got {len(self.decisions)}"
        )
        return self.decisions

    def by_part(self) -> dict[str, QualityDecision]:
        return {d.part_id: d for d in self.decisions}


@contextmanager
def decision_cell(**params) -> Iterator[Cell]:
    with ros_graph() as graph:
        overrides = [Parameter(name, value=value) for name, value in params.items()]
        node = graph.add(DecisionNode(context=graph.context, parameter_overrides=overrides))
        probe = graph.node("probe")
        cell = Cell(graph, node, probe)
        cell.parts_pub = probe.create_publisher(PartTrigger, "camera/parts", qos.EVENTS)
        cell.results_pub = probe.create_publisher(InspectionResult, "inspection/result", qos.EVENTS)
        cell.state_pub = probe.create_publisher(ProcessState, "process/state", qos.LATCHED)
        probe.create_subscription(QualityDecision, "quality/decision", cell.decisions.append, qos.EVENTS)
        probe.create_subscription(CellKpi, "quality/kpi", cell.kpis.append, qos.EVENTS)
        probe.create_subscription(DiagnosticArray, "/diagnostics", cell.diagnostics.append, qos.DIAGNOSTICS)
        matched = graph.spin_until(
            lambda: all(
                pub.get_subscription_count() > 0
                for pub in (cell.parts_pub, cell.results_pub, cell.state_pub, node._decision_pub)
            ),
            timeout=10.0,
        )
        assert matched, "decision node and probe did not discover each other"
        yield cell


def test_parts_with_results_get_one_verdict_each_with_pass_through_fields():
    with decision_cell() as cell:
        now = cell.now_ns()
        cell.process_state(now - 50 * MS)
        for i in range(3):
            cell.part(f"p{i}", now - 20 * MS, encoder_count=1000 + i)
        cell.graph.spin_until(lambda: cell.node._engine.counters.parts_registered == 3, 5.0)
        for i, p in enumerate((0.1, 0.6, 0.95)):
            cell.result(
                f"p{i}",
                now - 20 * MS,
                p,
                ground_truth=2 if p > 0.5 else 1,
                defect_type="crack" if p > 0.5 else "",
                image_brightness=50.0 + i,
                image_contrast=20.0,
                image_sharpness=2.5,
            )
        cell.wait_decisions(3)
        cell.graph.spin_for(0.3)
        decisions = cell.by_part()
        assert len(cell.decisions) == 3
        expected = {"p0": QualityDecision.NORMAL, "p1": QualityDecision.REINSPECT, "p2": QualityDecision.DEFECTIVE}
        assert {k: d.verdict for k, d in decisions.items()} == expected
        assert list(decisions["p1"].reasons) == ["visual_reinspect"]
        for i, d in enumerate(cell.decisions):
            assert d.encoder_count == 1000 + int(d.part_id[1:])
            assert d.model_version == "m1" and d.header.frame_id == "camera"
            assert to_ns(d.header.stamp) == now - 20 * MS
            assert 20.0 <= d.capture_to_decision_ms < 10_000.0, i
            assert to_ns(d.decision_stamp) >= now
        assert (decisions["p2"].ground_truth, decisions["p2"].defect_type) == (2, "crack")
        drift_stats = (
            decisions["p2"].image_brightness,
            decisions["p2"].image_contrast,
            decisions["p2"].image_sharpness,
        )
        assert drift_stats == (52.0, 20.0, 2.5), "the drift statistics pass through"
        assert decisions["p0"].process_anomaly_score == pytest.approx(0.1)


def test_the_process_state_in_force_at_capture_time_escalates():
    with decision_cell() as cell:
        now = cell.now_ns()
        cell.process_state(now - 300 * MS)
        cell.process_state(now - 100 * MS, flags=int(ProcessFlag.TEMPERATURE_OUT_OF_SPEC), out_of_spec=True)
        cell.result("early", now - 200 * MS, 0.1)  # captured while the process was still in spec
        cell.result("late", now - 50 * MS, 0.1)
        cell.wait_decisions(2)
        decisions = cell.by_part()
        assert decisions["early"].verdict == QualityDecision.NORMAL
        assert decisions["late"].verdict == QualityDecision.REINSPECT
        assert list(decisions["late"].reasons) == ["visual_normal", "process_out_of_spec"]
        assert decisions["late"].process_flags == ProcessFlag.TEMPERATURE_OUT_OF_SPEC


def test_without_any_process_state_parts_escalate_as_process_unknown():
    with decision_cell() as cell:
        cell.result("p0", cell.now_ns(), 0.1)
        [decision] = cell.wait_decisions(1)
        assert decision.verdict == QualityDecision.REINSPECT
        assert list(decision.reasons) == ["visual_normal", "process_unknown"]
        assert math.isnan(decision.process_anomaly_score)


def test_parts_without_results_get_not_inspected_at_their_deadline_by_the_timer():
    with decision_cell(result_deadline_ms=200.0, diagnostics_period_s=0.2) as cell:
        now = cell.now_ns()
        cell.process_state(now)
        cell.part("lost0", now - 50 * MS, encoder_count=7)
        cell.part("lost1", now, encoder_count=8)
        cell.graph.spin_for(0.1)
        early, checked_at = list(cell.decisions), cell.now_ns()
        if checked_at < now + 150 * MS:  # still before lost0's deadline (a loaded machine may be past it by now)
            assert early == [], "verdict before the deadline"
        decisions = cell.wait_decisions(2, timeout=10.0)
        assert [d.part_id for d in decisions] == ["lost0", "lost1"]  # in deadline order
        for d in decisions:
            assert d.verdict == QualityDecision.NOT_INSPECTED and list(d.reasons) == ["no_result"]
            assert math.isnan(d.defect_probability)
            assert d.capture_to_decision_ms >= 200.0  # never before the deadline
        assert [d.encoder_count for d in decisions] == [7, 8]
        assert cell.node._deadline_timer.is_canceled(), "deadline timer should idle when nothing is pending"

        def warned() -> bool:
            return any(
                s.level == b"\x01" and "without a result in time" in s.message
                for msg in cell.diagnostics
                for s in msg.status
                if s.name.startswith("decision")
            )

        assert cell.graph.spin_until(warned, 5.0), "diagnostics did not report the fail-safe parts"


def test_a_triggered_part_gets_its_verdict_even_when_the_camera_never_registers_it():
    with decision_cell(result_deadline_ms=150.0) as cell:
        triggers = cell.probe.create_publisher(PartTrigger, "camera/trigger", qos.EVENTS)
        assert cell.graph.spin_until(lambda: triggers.get_subscription_count() > 0, 5.0)
        now = cell.now_ns()
        cell.process_state(now)
        triggers.publish(PartTrigger(header=Header(stamp=from_ns(now)), part_id="plc-1", encoder_count=5))
        triggers.publish(PartTrigger(header=Header(stamp=from_ns(now)), part_id="", encoder_count=6))  # camera names it
        [decision] = cell.wait_decisions(1)
        assert (decision.part_id, decision.verdict, list(decision.reasons)) == (
            "plc-1",
            QualityDecision.NOT_INSPECTED,
            ["no_result"],
        )
        assert decision.encoder_count == 5
        cell.graph.spin_for(0.3)
        assert len(cell.decisions) == 1 and cell.node._engine.pending_count == 0


def test_a_late_result_after_the_fail_safe_verdict_is_counted_not_redecided():
    with decision_cell(result_deadline_ms=100.0) as cell:
        now = cell.now_ns()
        cell.process_state(now)
        cell.part("p0", now)
        [decision] = cell.wait_decisions(1)
        assert decision.verdict == QualityDecision.NOT_INSPECTED
        cell.result("p0", now, 0.05)
        assert cell.graph.spin_until(lambda: cell.node._engine.counters.late_results == 1, 5.0)
        cell.graph.spin_for(0.2)
        assert len(cell.decisions) == 1


def test_duplicate_results_are_ignored_and_counted():
    with decision_cell() as cell:
        now = cell.now_ns()
        cell.process_state(now)
        cell.part("p0", now)
        for p in (0.9, 0.1, 0.1):
            cell.result("p0", now, p)
        assert cell.graph.spin_until(lambda: cell.node._engine.counters.duplicate_results == 2, 5.0)
        cell.graph.spin_for(0.2)
        assert [d.verdict for d in cell.decisions] == [QualityDecision.DEFECTIVE]  # the first result decides


def test_an_inference_not_inspected_result_keeps_its_reason():
    with decision_cell(not_inspected_as="defective") as cell:
        now = cell.now_ns()
        cell.process_state(now)
        cell.result("p0", now, math.nan, status=InspectionResult.STATUS_NOT_INSPECTED, reason="queue_full")
        [decision] = cell.wait_decisions(1)
        assert decision.verdict == QualityDecision.DEFECTIVE  # fail-safe parts mapped as configured
        assert list(decision.reasons) == ["queue_full"]


def _set_parameters(cell: Cell, *params: Parameter):
    client = cell.probe.create_client(SetParameters, "/decision/set_parameters")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(SetParameters.Request(parameters=[p.to_parameter_msg() for p in params]))
    assert cell.graph.spin_until(future.done, 5.0)
    return future.result().results


def test_thresholds_change_at_run_time_and_bad_changes_are_refused():
    with decision_cell() as cell:
        now = cell.now_ns()
        cell.process_state(now)
        cell.result("before", now, 0.4)
        cell.wait_decisions(1)
        [ok] = _set_parameters(cell, Parameter("reinspect_threshold", value=0.3))
        assert ok.successful, ok.reason
        cell.result("after", now, 0.4)
        cell.wait_decisions(2)
        assert cell.by_part()["before"].verdict == QualityDecision.NORMAL
        assert cell.by_part()["after"].verdict == QualityDecision.REINSPECT

        [refused] = _set_parameters(cell, Parameter("reinspect_threshold", value=0.9))  # above defective 0.8
        assert not refused.successful and "reinspect_threshold < defective_threshold" in refused.reason
        [refused] = _set_parameters(cell, Parameter("escalate_to", value="normal"))
        assert not refused.successful and "escalate_to" in refused.reason
        [refused] = _set_parameters(cell, Parameter("kpi_window_s", value=5.0))  # read-only
        assert not refused.successful
        assert cell.node.get_parameter("reinspect_threshold").value == 0.3
        assert cell.node._engine.config.thresholds.reinspect == 0.3


def _activate(cell: Cell, publisher, version: str, reinspect: float, defective: float) -> None:
    """model/active as the inference node publishes it: the serving model and the bands its package proposes."""
    msg = ModelInfo(
        version=version, state=ModelInfo.STATE_ACTIVE, reinspect_threshold=reinspect, defective_threshold=defective
    )
    publisher.publish(msg)
    assert cell.graph.spin_until(lambda: cell.node._bands.active_version == version, 5.0)


def test_bands_from_model_judge_each_part_by_its_models_bands_and_bad_bands_are_refused():
    with decision_cell(bands="from_model") as cell:
        models = cell.probe.create_publisher(ModelInfo, "model/active", qos.LATCHED)
        now = cell.now_ns()
        cell.process_state(now)
        _activate(cell, models, "m1", 0.2, 0.6)
        assert cell.node._bands_described == "from_model 0.2/0.6 (model m1)"
        cell.result("a", now, 0.3)  # m1's bands: re-inspect (Normal under the parameters' 0.5)
        cell.wait_decisions(1)
        _activate(cell, models, "m2", math.nan, math.nan)  # a package without proposed bands: the parameters
        assert "model m2 proposes none" in cell.node._bands_described
        cell.result("b", now, 0.3, model_version="m2")
        cell.result("c", now, 0.65)  # scored by m1 before the swap: still m1's bands -> defective
        _activate(cell, models, "m3", 0.9, 0.4)  # inverted: refused, the parameters apply (fail-safe)
        assert "invalid bands, refused" in cell.node._bands_described
        cell.result("d", now, 0.45, model_version="m3")
        _activate(cell, models, "m4", 0.3, 1.5)  # outside [0, 1]: refused
        cell.result("e", now, 0.45, model_version="m4")
        cell.wait_decisions(5)
        verdicts = {k: d.verdict for k, d in cell.by_part().items()}
        assert verdicts == {
            "a": QualityDecision.REINSPECT,
            "b": QualityDecision.NORMAL,
            "c": QualityDecision.DEFECTIVE,
            "d": QualityDecision.NORMAL,
            "e": QualityDecision.NORMAL,
        }
        # A threshold set explicitly at run time wins over the model's bands ...
        [ok] = _set_parameters(cell, Parameter("defective_threshold", value=0.7))
        assert ok.successful, ok.reason
        assert "set explicitly" in cell.node._bands_described
        cell.result("f", now, 0.65)  # m1 would say defective; the parameters 0.5/0.7 say re-inspect
        cell.wait_decisions(6)
        # ... until the source is chosen again.
        [ok] = _set_parameters(cell, Parameter("bands", value="from_model"))
        assert ok.successful, ok.reason
        cell.result("g", now, 0.65)
        cell.wait_decisions(7)
        assert cell.by_part()["f"].verdict == QualityDecision.REINSPECT
        assert cell.by_part()["g"].verdict == QualityDecision.DEFECTIVE
        [refused] = _set_parameters(cell, Parameter("bands", value="model"))
        assert not refused.successful
        assert cell.graph.spin_until(
            lambda: any(
                v.key == "bands" and "m4 proposes invalid bands" in v.value
                for array in cell.diagnostics
                for status in array.status
                for v in status.values
            ),
            5.0,
        )


def test_with_bands_params_the_models_proposed_bands_are_not_used():
    with decision_cell() as cell:
        models = cell.probe.create_publisher(ModelInfo, "model/active", qos.LATCHED)
        now = cell.now_ns()
        cell.process_state(now)
        _activate(cell, models, "m1", 0.2, 0.6)
        assert cell.node._bands.describe(cell.node._engine.config.thresholds) == "params 0.5/0.8 (bands: params)"
        cell.result("a", now, 0.3)
        cell.wait_decisions(1)
        assert cell.decisions[0].verdict == QualityDecision.NORMAL


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"reinspect_threshold": 0.9}, "0 < reinspect_threshold < defective_threshold <= 1"),
        ({"reinspect_threshold": 0.0}, "0 < reinspect_threshold"),
        ({"defective_threshold": 1.5}, "defective_threshold"),
        ({"escalate_to": "normal"}, "escalate_to"),
        ({"not_inspected_as": "normal"}, "not_inspected_as"),
        ({"result_deadline_ms": 0.0}, "result_deadline_ms"),
        ({"process_keep_s": 1.0, "result_deadline_ms": 5000.0}, "process_keep_s"),
    ],
)
def test_bad_parameters_are_rejected_at_start_up_with_a_clear_message(params, message):
    with ros_graph() as graph, pytest.raises(ParameterError, match=message):
        DecisionNode(context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_kpis_are_published_periodically():
    with decision_cell(kpi_period_s=0.2) as cell:
        now = cell.now_ns()
        cell.process_state(now)
        for i, p in enumerate((0.1, 0.2, 0.9, 0.6)):
            cell.result(f"p{i}", now, p)
        cell.wait_decisions(4)
        assert cell.graph.spin_until(lambda: any(k.parts == 4 for k in cell.kpis), 5.0), [k.parts for k in cell.kpis]
        kpi = next(k for k in cell.kpis if k.parts == 4)
        assert (kpi.normal, kpi.reinspect, kpi.defective, kpi.not_inspected, kpi.total_parts) == (2, 1, 1, 0, 4)
        assert kpi.yield_ratio == pytest.approx(0.5)
        assert kpi.throughput_pps > 0.0 and kpi.latency_p50_ms >= 0.0 and kpi.latency_p99_ms >= kpi.latency_p50_ms
        assert dict(zip(kpi.reason_names, kpi.reason_counts, strict=True)) == {
            "visual_normal": 2,
            "visual_defective": 1,
            "visual_reinspect": 1,
        }


def test_a_thousand_parts_with_five_percent_missing_results_get_exactly_one_verdict_each():
    parts, deadline_ms = 1000, 3000.0
    with decision_cell(result_deadline_ms=deadline_ms) as cell:
        cell.process_state(cell.now_ns())
        missing = {f"part-{i:04d}" for i in range(0, parts, 20)}  # 5 %
        probabilities = {f"part-{i:04d}": (i * 37 % 100) / 100.0 for i in range(parts)}
        for i, (part_id, p) in enumerate(probabilities.items()):
            capture = cell.now_ns()
            cell.part(part_id, capture, encoder_count=i)
            if part_id not in missing:
                cell.result(part_id, capture, p)
            if i % 100 == 99:
                cell.graph.spin_for(0.02)  # let the graph breathe; publishing stays far ahead of the deadline
        cell.wait_decisions(parts, timeout=60.0)
        cell.graph.spin_for(0.5)  # nothing more may come
        counts = Counter(d.part_id for d in cell.decisions)
        assert len(cell.decisions) == parts, f"{len(cell.decisions)} verdicts for {parts} parts"
        assert set(counts) == set(probabilities) and set(counts.values()) == {1}
        counters = cell.node._engine.counters
        late = counters.late_results
        for d in cell.decisions:
            if d.part_id in missing:
                assert d.verdict == QualityDecision.NOT_INSPECTED and list(d.reasons) == ["no_result"], d.part_id
            elif d.verdict == QualityDecision.NOT_INSPECTED:
                # Only when the machine is so loaded that a result is handled after its 3 s deadline: the timer
                # decided first (no_result) or the result found its part expired (late_result).
                assert list(d.reasons) in (["no_result"], ["late_result"]), d.part_id
            else:
                p = probabilities[d.part_id]
                expected = 0 if p < 0.5 else (1 if p < 0.8 else 2)
                assert d.verdict == expected, (d.part_id, p, d.verdict)
                # The executor takes one message per topic in turn, so with everything queued at once a result
                # often overtakes its part's registration; it waits (registration_wait_ms) for the encoder count.
                assert d.encoder_count in (int(d.part_id[-4:]), -1), d.part_id
        without_encoder = sum(d.encoder_count == -1 for d in cell.decisions)
        assert without_encoder == counters.unregistered_verdicts  # each one counted (and WARNed in diagnostics)
        not_inspected = sum(d.verdict == QualityDecision.NOT_INSPECTED for d in cell.decisions)
        assert not_inspected == len(missing) + late  # each late result is one fail-safe part, never a second verdict
        assert counters.deadline_expired == sum(list(d.reasons) == ["no_result"] for d in cell.decisions)
        assert counters.duplicate_results == 0


@pytest.mark.parametrize("params_file", ["cell.yaml", "demo.yaml", "jetson.yaml"])
def test_the_params_files_section_is_accepted_and_complete(params_file):
    values = load_params(Path(__file__).resolve().parents[4] / "params" / params_file)["decision"]
    with ros_graph() as graph:
        node = DecisionNode(
            context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in values.items()]
        )
        try:
            assert {k: node.get_parameter(k).value for k in values} == values  # every key declared, none ignored
            builtin = {"use_sim_time", "start_type_description_service"}
            declared = {n for n in node.list_parameters([], 0).names if n not in builtin and "qos_overrides" not in n}
            assert declared - set(values) == set(), "parameters missing from the params file"
        finally:
            node.destroy_node()


def test_deadlines_follow_the_steady_stamp_not_a_wall_stamp_off_by_a_clock_step():
    """The camera's wall stamp is 300 ms off (an NTP step between capture and here): the deadline still runs from
    the steady stamp, and the verdict carries both stamps."""
    import time

    with decision_cell(result_deadline_ms=400.0) as cell:
        wall = cell.now_ns()
        cell.process_state(wall)
        steady = time.monotonic_ns()
        for part_id, shift in (("ahead", +300 * MS), ("behind", -300 * MS)):
            msg = PartTrigger(part_id=part_id, encoder_count=1, steady_stamp=from_ns(steady))
            msg.header.stamp = from_ns(wall + shift)
            cell.parts_pub.publish(msg)
        decisions = cell.wait_decisions(2, timeout=10.0)
        elapsed_ms = (time.monotonic_ns() - steady) / MS
        for d in decisions:
            assert to_ns(d.steady_stamp) == steady, "the steady capture stamp is passed on"
            assert d.verdict == QualityDecision.NOT_INSPECTED
            assert 400.0 <= d.capture_to_decision_ms <= elapsed_ms, "timed from the steady stamp"
        assert {d.part_id: to_ns(d.header.stamp) - wall for d in decisions} == {"ahead": 300 * MS, "behind": -300 * MS}
