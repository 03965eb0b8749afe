"""Edge-only / cloud-only / collaborative: the same stream of synthetic parts through the three set-ups, under
emulated network conditions, with the paper's columns (docs/edge-cloud.md).

    nice -n 10 python bench/bench_edge_cloud.py [--parts 1000] [--rate 20] [--work DIR]

What runs, and what is real:
- Models: the edge model (efficientnet_lite0 at 224 px on the part's region, ROI (280, 0, 720, 720) of the
  1280x720 frame, cropped by its own preprocessing as a cell configures it; the bench takes the region from its
  manifest) and the bigger cloud model
  (efficientnet_lite0 at 288 px, trained on 720x720 crops of 1280x720 renders at that ROI, the images the
  verifier receives, with JPEG 60-95 in its augmentation) are trained by `qc_cloud train` with the adaptive recipe
  and a few minutes' budget from bench/edge_cloud/{edge,cloud}_model.json (CPU, one thread, nice 10; cached in
  --work by the config's digest and reused while it is unchanged). Both are loaded with the edge's
  package/manifest/backend code.
- Stream: --parts parts from the synthetic generator at 1280x720 (seed 1000: none of them was trained on),
  30 % defective, all defect types (scratches are a few pixels wide: the edge model loses some). Every
  part is scored by the edge model once beforehand; its measured inference time is its edge latency.
- Cloud: a real mosquitto, `qc_cloud verifier` as a process (shared subscription, dynamic batching, deadline
  rule), and the edge's MQTT connection through a DelayProxy (half the round trip each way, +-5 % jitter,
  rate-limited uplink). Parts are captured at --rate parts/s; each has --slack-ms from capture to its deadline.
- Edge-only: verdict = edge P(defect) >= 0.5 at its edge latency.
- Cloud-only: every part's region (720x720, JPEG 90) goes to the verifier at capture; its verdict is used if it
  arrives before the deadline, else the edge's verdict is taken at the deadline (a counted fallback).
- Collaborative: parts the edge finds uncertain (P in [--band-low, --band-high): by default the edge model's own
  decision_bands, fitted on its validation split, when they met its targets) are candidates, and so are the
  NORMAL parts among the --second-opinion-share (5 %) it passed with the highest P (second opinions against
  escapes: at ~1.6 kB an offloaded image, ~0.07 kB per part more); the bridge's
  OffloadPolicy (qc_cell.bridge.offload) decides per part from the measured link whether it can be answered in
  time, and as what image (region scaled to the cloud model's input side, JPEG 90/75/60). A cloud verdict in time
  replaces the edge's; otherwise the edge's verdict, published at its edge latency, stands.
- Bytes to the cloud per part: everything the edge's connection sent through the proxy (MQTT framing, PUBACKs and
  pings included), divided by the parts.
- Per part and run (truth, edge P and latency, sent, the cloud's verdict and when): --work/parts.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ros2_ws/src" / package) for package in ("qc_contract", "qc_cell", "qc_cloud")]

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from qc_cell.bridge.offload import OffloadPolicy, PolicySettings  # noqa: E402
from qc_cell.bringup.local_broker import Mosquitto  # noqa: E402
from qc_cell.decision.verdict_rule import EscalationPolicy, ProcessContext, Thresholds, decide  # noqa: E402
from qc_cell.testing.netem import DelayProxy  # noqa: E402
from qc_cloud.verifier.model import load_package  # noqa: E402
from qc_contract import records  # noqa: E402
from qc_contract.broker import broker_config  # noqa: E402
from qc_contract.model_manifest import DecisionBands, Manifest  # noqa: E402
from qc_contract.mqtt_client import connect_properties, create_client  # noqa: E402
from qc_contract.preprocess import fit_longer_side, preprocess  # noqa: E402
from qc_contract.synthetic import SyntheticPartGenerator  # noqa: E402
from qc_contract.topics import CellId  # noqa: E402
from qc_contract.vocabulary import Verdict  # noqa: E402

CELL = CellId("bench", "line1", "cell1")
CONFIGS = REPO / "bench" / "edge_cloud"
CONDITIONS = (  # (name, RTT ms, uplink Mbit/s)
    ("RTT 10 ms, 20 Mbit/s", 10, 20.0),
    ("RTT 50 ms, 20 Mbit/s", 50, 20.0),
    ("RTT 150 ms, 20 Mbit/s", 150, 20.0),
    ("RTT 50 ms, 5 Mbit/s", 50, 5.0),
)


# -- models ------------------------------------------------------------------------------------------------


def trained_package(name: str, work: Path, threads: int = 1) -> Path:
    """Train with `qc_cloud train` (nice 10) unless the package for this exact config is already in work/."""
    config = CONFIGS / f"{name}_model.json"
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12]
    out = work / f"{name}-{digest}"
    if (out / "manifest.json").is_file():
        print(f"{name} model: reusing {out}", flush=True)
        return out
    cmd = ["nice", "-n", "10", sys.executable, "-m", "qc_cloud.cli", "train", "--config", str(config)]
    cmd += ["--out", str(out), "--keep-data", str(work / f"data-{name}-{digest}"), "--no-progress"]
    cmd += ["--threads", str(threads)]
    print(f"{name} model: training ({' '.join(cmd[3:])})", flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True, env={**_env(), "OMP_NUM_THREADS": str(threads)})
    print(f"{name} model: trained in {time.monotonic() - start:.0f} s", flush=True)
    return out


def _env() -> dict[str, str]:
    paths = [str(REPO / "ros2_ws/src" / p) for p in ("qc_contract", "qc_cell", "qc_cloud")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}


# -- the stream --------------------------------------------------------------------------------------------


@dataclass
class Part:
    index: int
    defective: bool
    edge_p: float
    edge_ms: float
    small: np.ndarray  # the region scaled to the cloud model's input side (what the policy encodes)
    full_jpeg: bytes  # the region at full resolution, JPEG 90 (what cloud-only sends)
    full_encode_ms: float


def make_stream(n: int, edge_dir: Path, seed: int, cloud_side: int, roi: tuple[int, int, int, int]) -> list[Part]:
    scorer, line = load_package(edge_dir, backend="onnxruntime", max_batch=1, threads=1)
    print(f"edge model: {line}", flush=True)
    spec = scorer.preprocessing
    generator = SyntheticPartGenerator(seed=seed, width=1280, height=720, defect_rate=0.3)
    x, y, w, h = roi
    parts = []
    for i in range(n):
        part = generator.part(i)
        start = time.perf_counter()
        tensor = preprocess(part.image, spec, "BGR")
        p, _ = scorer.probabilities(tensor)
        edge_ms = (time.perf_counter() - start) * 1e3
        region = np.ascontiguousarray(part.image[y : y + h, x : x + w])
        start = time.perf_counter()
        ok, jpeg = cv2.imencode(".jpg", region, [cv2.IMWRITE_JPEG_QUALITY, 90])
        encode_ms = (time.perf_counter() - start) * 1e3
        assert ok
        small = fit_longer_side(region, cloud_side)  # as the bridge reduces an offloaded image
        parts.append(Part(i, part.label == "defect", float(p[0]), edge_ms, small, jpeg.tobytes(), encode_ms))
        if (i + 1) % 200 == 0:
            print(f"  stream: {i + 1}/{n} parts generated and scored on the edge", flush=True)
    scorer.close()
    return parts


# -- one run -----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    positive: bool
    latency_ms: float
    by_cloud: bool = False
    fallback: bool = False
    sent: bool = False  # the part's image went to the cloud
    answer_ms: float | None = None  # capture -> the cloud's answer (in time or not); None: no answer
    cloud_positive: bool | None = None  # the cloud's verdict, whether in time or not


@dataclass
class Run:
    name: str
    outcomes: list[Outcome]
    bytes_up: int = 0
    sent: int = 0
    answered_late: int = 0  # answers after the deadline, expired answers, and requests never answered
    decisions: dict[str, int] = field(default_factory=dict)


def edge_only(parts: list[Part]) -> Run:
    return Run("edge-only", [Outcome(p.edge_p >= 0.5, p.edge_ms) for p in parts])


class EdgeLink:
    """The cell's side of the cloud link: publishes verify requests, collects the answers."""

    def __init__(self, port: int) -> None:
        self.client = create_client(broker_config(f"mqtt://127.0.0.1:{port}", "bench-edge"), inflight_window=100)
        self.answers: dict[str, tuple[float, dict]] = {}
        self.sent_at: dict[str, float] = {}
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(CELL.verify_response, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, clean_start=True, properties=connect_properties())
        self.client.loop_start()
        if not ready.wait(20):
            raise RuntimeError("edge could not subscribe through the proxy")
        self.seq = 0

    def _on_message(self, client, userdata, message) -> None:
        now = time.monotonic()
        data = json.loads(message.payload)
        with self._lock:
            self.answers.setdefault(data["request_id"], (now, data))

    def send(self, part: Part, jpeg: bytes, width: int, height: int, capture_ns: int, deadline_ns: int) -> tuple:
        self.seq += 1
        body = records.image_record(
            part_id=f"part-{part.index:06d}",
            verdict=int(Verdict.REINSPECT),
            defect_probability=part.edge_p,
            reasons=["visual_reinspect"],
            model_version="edge",
            capture_ns=capture_ns,
            width=width,
            height=height,
            jpeg_b64=base64.b64encode(jpeg).decode(),
            deadline_ns=deadline_ns,
        )
        record = records.envelope(CELL.path, "0000beef", "verify_request", self.seq, body)
        payload = records.encode(record)
        self.sent_at[record["id"]] = time.monotonic()
        self.client.publish(CELL.stream_topic("verify_request"), payload, qos=1)
        return record["id"], len(payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def networked(kind: str, parts: list[Part], broker: Mosquitto, rtt_ms: float, mbps: float, args) -> Run:
    proxy = DelayProxy.round_trip(broker.port, rtt_ms, jitter_ms=rtt_ms * 0.05, up_bps=mbps * 1e6, seed=7)
    link = EdgeLink(proxy.port)
    settings = PolicySettings(
        roi=args.roi,
        cloud_side=args.cloud_side,
        prior_rtt_ms=100.0,
        prior_bandwidth_mbps=5.0,
        margin_ms=10.0,
        second_opinion_share=args.second_opinion_share,
    )
    policy = OffloadPolicy(settings)
    bytes_before = proxy.bytes[True]
    slack_ns = int(args.slack_ms * 1e6)
    sent: dict[int, tuple[str, float, int]] = {}  # part -> (request id, sent mono, wire bytes)
    period = 1.0 / args.rate
    t0_mono, t0_wall = time.monotonic() + 0.5, time.time_ns() + 500_000_000
    pending_answers: list[tuple[str, int]] = []
    for part in parts:
        capture_mono = t0_mono + part.index * period
        capture_ns = t0_wall + int(part.index * period * 1e9)
        deadline_ns = capture_ns + slack_ns
        if kind == "cloud-only":
            ready = capture_mono + part.full_encode_ms / 1e3
            _sleep_until(ready)
            request_id, wire = link.send(part, part.full_jpeg, args.roi[2], args.roi[3], capture_ns, deadline_ns)
            sent[part.index] = (request_id, time.monotonic(), wire)
            continue
        ready = capture_mono + part.edge_ms / 1e3
        _sleep_until(ready)
        _learn(link, policy, pending_answers)
        verdict, reasons = edge_verdict(part.edge_p, args.band_low, args.band_high)
        policy.observe_part(verdict, reasons, part.edge_p)
        if not policy.candidate(verdict, reasons, part.edge_p):
            continue
        slack_ms = (deadline_ns - time.time_ns()) / 1e6
        # As the bridge's tracker: a request counts as unanswered until its answer or deadline + 2 s (late grace).
        grace = args.slack_ms / 1e3 + 2.0
        pending_answers[:] = [(r, w) for r, w in pending_answers if time.monotonic() - link.sent_at[r] < grace]
        in_flight = len(pending_answers)
        decision = policy.decide(verdict, reasons, slack_ms, 1280, 720, in_flight, probability=part.edge_p)
        if not decision.send:
            continue
        plan = decision.plan
        image = part.small if (plan.width, plan.height) == part.small.shape[1::-1] else _resize(part, plan)
        _, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, plan.quality])
        policy.observe_jpeg(plan.quality, plan.width * plan.height, len(jpeg))
        request_id, wire = link.send(part, jpeg.tobytes(), plan.width, plan.height, capture_ns, deadline_ns)
        sent[part.index] = (request_id, time.monotonic(), wire)
        pending_answers.append((request_id, wire))
    end = t0_mono + len(parts) * period + args.slack_ms / 1e3 + 2.0
    _sleep_until(end)
    bytes_up = proxy.bytes[True] - bytes_before
    link.close()
    proxy.close()

    outcomes, late, decided_by_cloud = [], 0, 0
    for part in parts:
        capture_mono = t0_mono + part.index * period
        deadline_mono = capture_mono + args.slack_ms / 1e3
        edge = Outcome(part.edge_p >= 0.5, part.edge_ms)
        if part.index not in sent:
            outcomes.append(edge)
            continue
        request_id, _, _ = sent[part.index]
        arrival, data = link.answers.get(request_id, (math.inf, {}))
        answer_ms = (arrival - capture_mono) * 1e3 if math.isfinite(arrival) else None
        scored = data.get("outcome", "scored") == "scored" and "verdict" in data
        cloud = data["verdict"] == "DEFECTIVE" if scored else None
        seen = {"sent": True, "answer_ms": answer_ms, "cloud_positive": cloud}
        if arrival <= deadline_mono and scored:
            outcomes.append(Outcome(cloud, answer_ms, by_cloud=True, **seen))
            decided_by_cloud += 1
            continue
        late += 1
        if kind == "cloud-only":  # the edge's verdict, taken when the cloud's time is up
            outcomes.append(Outcome(edge.positive, args.slack_ms, fallback=True, **seen))
        else:  # the local verdict was published at the edge latency and stands
            outcomes.append(Outcome(edge.positive, edge.latency_ms, fallback=True, **seen))
    run = Run(kind, outcomes, bytes_up, len(sent), late, dict(policy.counts))
    return run


# No process signals in this bench: every part's process context is known and within spec.
IN_SPEC = ProcessContext(anomaly_score=0.0, flags=0, out_of_spec=False, stale=False)


def edge_verdict(p: float, band_low: float, band_high: float) -> tuple[int, tuple[str, ...]]:
    """The cell's verdict from the edge's P(defect) and the band: the decision node's own rule."""
    verdict, reasons = decide(p, IN_SPEC, Thresholds(band_low, band_high), EscalationPolicy())
    return int(verdict), tuple(reasons)


def _learn(link: EdgeLink, policy: OffloadPolicy, pending: list[tuple[str, int]]) -> None:
    """Feed the answers that came in to the policy's link model (as the bridge does on each response)."""
    for request_id, wire in list(pending):
        answer = link.answers.get(request_id)
        if answer is not None:
            pending.remove((request_id, wire))
            arrival = answer[0]
            policy.observe_answer(wire, (arrival - link.sent_at[request_id]) * 1e3)


def _resize(part: Part, plan) -> np.ndarray:
    return cv2.resize(part.small, (plan.width, plan.height), interpolation=cv2.INTER_LINEAR)


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# -- report ------------------------------------------------------------------------------------------------


def metrics(run: Run, parts: list[Part], slack_ms: float) -> dict:
    truth = np.array([p.defective for p in parts])
    pred = np.array([o.positive for o in run.outcomes])
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn, tn = int((~pred & truth).sum()), int((~pred & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    latencies = np.array([o.latency_ms for o in run.outcomes])
    return {
        "accuracy": (tp + tn) / len(parts),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else float("nan"),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "bytes_per_part": run.bytes_up / len(parts),
        "cloud_share": sum(o.by_cloud for o in run.outcomes) / len(parts),
        "late_share": run.answered_late / run.sent if run.sent else 0.0,
        "sent": run.sent,
        "fallbacks": sum(o.fallback for o in run.outcomes),
        "past_deadline": int((latencies > slack_ms + 1e-6).sum()),
    }


def paired(right_a: Sequence[bool], right_b: Sequence[bool]) -> str:
    """Two set-ups on the same parts: how many parts only one of them got right, the exact two-sided McNemar p
    (is the difference more than chance?) and a 95 % interval of the accuracy difference a - b (paired Wald)."""
    only_a = sum(a and not b for a, b in zip(right_a, right_b, strict=True))
    only_b = sum(b and not a for a, b in zip(right_a, right_b, strict=True))
    n, discordant = len(right_a), only_a + only_b
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1)) / 2**discordant
    diff = (only_a - only_b) / n
    half = 1.96 * math.sqrt(max(0.0, discordant - (only_a - only_b) ** 2 / n)) / n
    p = min(1.0, 2 * tail)
    return (f"right only in the first {only_a}, only in the second {only_b}; McNemar exact p = {p:.2f}; "
            f"accuracy difference {diff:+.3f} (95 % interval {diff - half:+.3f} to {diff + half:+.3f})")  # fmt: skip


def print_table(title: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n### {title}\n")
    print("| set-up | accuracy | precision | recall | F1 | p50 ms | p99 ms | bytes/part | by cloud | cloud late "
          "| sent | fallbacks | past deadline |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in rows:
        print(
            f"| {name} | {m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
            f"| {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['bytes_per_part']:.0f} | {m['cloud_share']:.1%} "
            f"| {m['late_share']:.1%} | {m['sent']} | {m['fallbacks']} | {m['past_deadline']} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20.0, help="parts per second")
    ap.add_argument("--slack-ms", type=float, default=400.0, help="capture -> deadline of a cloud verdict")
    ap.add_argument(
        "--band-low",
        type=float,
        help="edge P(defect) from which a part is a candidate for the cloud "
        "(default: the edge model's decision_bands.reinspect when they met its targets, else 0.3)",
    )
    ap.add_argument(
        "--band-high",
        type=float,
        help="edge P(defect) from which the edge is sure it is defective "
        "(default: the edge model's decision_bands.defective when they met its targets, else 0.8)",
    )
    ap.add_argument(
        "--second-opinion-share",
        type=float,
        default=0.05,
        help="collaborative: share of the NORMAL parts the edge was least sure of also sent to the cloud "
        "(offload_second_opinion_share; 0 = only the band's parts)",
    )
    ap.add_argument("--seed", type=int, default=1000, help="stream seed (training used 0)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qc_bench_edge_cloud"), help="models and data cache")
    ap.add_argument("--conditions", default="all", help="comma-separated indices into the conditions, or all")
    ap.add_argument("--train-threads", type=int, default=1, help="torch/OMP threads when a model is trained")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    edge_dir = trained_package("edge", args.work, args.train_threads)
    cloud_dir = trained_package("cloud", args.work, args.train_threads)
    packages = {"edge": edge_dir, "cloud": cloud_dir}
    manifests = {name: Manifest.load(d) for name, d in packages.items()}
    for name, manifest in manifests.items():
        m = manifest.metrics
        print(f"{name} model test split: accuracy {m['accuracy']:.3f} F1 {m['f1']:.3f} ROC AUC {m['roc_auc']:.3f}")
    # The collaborative set-up's candidates are the parts the edge model's own bands send to re-inspection.
    # The edge model's own bands (fitted on its validation split for the targets in its config) when they met the
    # targets there; otherwise a fixed [0.3, 0.8).
    edge_manifest = manifests["edge"]
    bands = edge_manifest.applicable_bands  # the rule a cell with `bands: from_model` applies
    if bands is None:
        proposed = edge_manifest.decision_bands
        print(f"edge model's bands not used ({proposed.basis if proposed else 'none proposed'}): [0.3, 0.8)")
        bands = DecisionBands(0.3, 0.8, basis="fixed")
    args.band_low = bands.reinspect if args.band_low is None else args.band_low
    args.band_high = bands.defective if args.band_high is None else args.band_high
    print(f"re-inspect band [{args.band_low:.3f}, {args.band_high:.3f}) {bands.basis}", flush=True)
    args.cloud_side = manifests["cloud"].preprocessing.input_width  # what the policy scales the region to
    args.roi = edge_manifest.preprocessing.roi  # the part's region in the frame, as the edge model crops it
    crop = manifests["cloud"].training.get("config", {}).get("synthetic", {}).get("crop")
    if args.roi is None or list(args.roi) != list(crop or []):
        raise SystemExit(f"the cloud model was trained on crop {crop}, the edge model's region is {args.roi}: "
                         "set both configs' region alike (bench/edge_cloud)")  # fmt: skip
    parts = make_stream(args.parts, edge_dir, args.seed, args.cloud_side, args.roi)
    print(f"stream: {len(parts)} parts, {sum(p.defective for p in parts)} defective; "
          f"edge latency p50 {np.median([p.edge_ms for p in parts]):.1f} ms; "
          f"cloud-only image {np.mean([len(p.full_jpeg) for p in parts]) / 1e3:.0f} kB", flush=True)  # fmt: skip
    baseline = metrics(edge_only(parts), parts, args.slack_ms)
    chosen = CONDITIONS if args.conditions == "all" else [CONDITIONS[int(i)] for i in args.conditions.split(",")]
    per_part: dict[str, list[dict]] = {}
    with Mosquitto() as broker:
        log = open(args.work / "verifier.log", "w")  # noqa: SIM115 - closed below
        cmd = ["nice", "-n", "10", sys.executable, "-m", "qc_cloud.cli", "verifier", "--model", str(cloud_dir)]
        cmd += ["--broker", broker.url, "--backend", "onnxruntime", "--threads", "2", "--max-batch", "8"]
        cmd += ["--max-wait-ms", "5", "--status-period", "10"]
        verifier = subprocess.Popen(cmd, env={**_env(), "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_line(args.work / "verifier.log", "serving", verifier)
            for title, rtt, mbps in chosen:
                rows = [("edge-only", baseline)]
                runs: dict[str, Run] = {}
                for kind in ("cloud-only", "collaborative"):
                    print(f"running {kind} at {title} ...", flush=True)
                    run = runs[kind] = networked(kind, parts, broker, rtt, mbps, args)
                    rows.append((kind, metrics(run, parts, args.slack_ms)))
                    per_part[f"{title} / {kind}"] = [asdict(o) for o in run.outcomes]
                    if run.decisions:
                        print(f"  policy decisions: {run.decisions}", flush=True)
                print_table(title, rows)
                right = {kind: [o.positive == p.defective for o, p in zip(runs[kind].outcomes, parts, strict=True)]
                         for kind in runs}  # fmt: skip
                comparison = paired(right["collaborative"], right["cloud-only"])
                print(f"\ncollaborative vs cloud-only, same parts: {comparison}")
        finally:
            verifier.terminate()
            verifier.wait(30)
            log.close()
    parts_file = args.work / "parts.json"  # per part and run: truth, edge P, what the cloud said and when
    truth = [{"index": p.index, "defective": p.defective, "edge_p": p.edge_p, "edge_ms": p.edge_ms} for p in parts]
    parts_file.write_text(json.dumps({"parts": truth, "runs": per_part}) + "\n")
    print(f"\nper-part outcomes: {parts_file}")
    print("\nverifier load (last report):")
    for line in (args.work / "verifier.log").read_text().splitlines()[-3:]:
        print(" ", line[:400])
    return 0


def _wait_for_line(path: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in path.read_text():
            return
        if process.poll() is not None:
            raise RuntimeError(f"verifier exited: {path.read_text()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError("verifier did not start")


if __name__ == "__main__":
    sys.exit(main())
