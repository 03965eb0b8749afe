#!/usr/bin/env python3
"""Inference benchmark: the bare backend and the inference node, on the same images, in one run.

    source scripts/env.sh && python bench/bench_inference.py [--frames 200] [--threads 2] [--max-batch 1 4]

1. Exports EfficientNet-B0 (efficientnet_pytorch, random weights: latency does not depend on them) to ONNX
   in a temp dir and wraps it in a model package (manifest with sha256 and ImageNet preprocessing).
2. Subjects, all on the same camera-sized bgr8 frames:
   - bare backend: preprocess + infer per frame (ONNX Runtime fp32, batch 1) with the very functions the
     node's worker calls, in a worker process of its own;
   - one inference node per --max-batch setting, each `python -m qc_cell.nodes.inference` in its own process
     and namespace, as in the cell.
3. Latency, one frame at a time: bare = preprocess + infer (a 10 ms pause between frames, see PACING_S);
   node in-node = frame callback -> scored (the result's queue_ms + preprocess_ms + inference_ms); node
   end-to-end = this process publishes the PartFrame -> receives its InspectionResult (two DDS hops and both
   processes' executors included).
   The subjects take turns in blocks of --block frames, rotating, so that all of them see the same load on
   a shared machine and the ratios to the bare p50/p99 hold even when absolute numbers move.
   The echo node (the inference node's executor and QoS, answering each frame at once without touching it)
   gives the transport + executor floor of the end-to-end figure.
4. Sustained throughput: bare sequential; nodes with --window frames in flight (a new frame whenever a result
   comes back), two rounds each, and how many parts came back NOT_INSPECTED.
Prints figures only; the goals (node/bare <= 1.3; batching must not hurt batch-1 latency) are read off them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ros2_ws/src/qc_contract"), str(REPO / "ros2_ws/src/qc_cell")]

from qc_cell.cell_graph import ENVIRONMENT  # noqa: E402
from qc_cell.inference.backends import BackendOptions, create_backend  # noqa: E402
from qc_cell.inference.model import LoadedModel  # noqa: E402
from qc_contract.model_manifest import Manifest, Output, Preprocessing, sha256_file  # noqa: E402
from qc_contract.preprocess import preprocess_into  # noqa: E402


def export_efficientnet_b0(directory: Path) -> Path:
    """EfficientNet-B0 with a 1-logit head as a model package. Random weights (latency only)."""
    import torch
    from efficientnet_pytorch import EfficientNet

    directory.mkdir(parents=True, exist_ok=True)
    model = EfficientNet.from_name("efficientnet-b0", num_classes=1).eval()
    model.set_swish(memory_efficient=False)  # the export-friendly Swish
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 224, 224),
        str(directory / "model.onnx"),
        input_names=["input"],
        output_names=["logit"],
        dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    Manifest(
        version="bench-effnet-b0",
        sha256=sha256_file(directory / "model.onnx"),
        size_bytes=(directory / "model.onnx").stat().st_size,
        architecture="efficientnet_b0",
        preprocessing=Preprocessing(),
        output=Output(name="logit", semantics="sigmoid_logit"),
    ).write(directory)
    return directory


IMAGE_COUNT = 32  # distinct frames, cycled (deterministic: the bare worker regenerates the same ones)
# Pause before each bare latency frame, like the gap a node sees between frames when one is in flight at a time.
# On a shared machine the scheduler favours a process that sleeps between frames over one that computes back
# to back; without the pause the bare figure would be penalised and flatter the node.
PACING_S = 0.01


def make_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Camera-sized bgr8 frames with structure and noise (content does not change the latency)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    images = []
    for _ in range(count):
        base = (np.sin(xs / rng.uniform(8, 40)) + np.cos(ys / rng.uniform(8, 40))) * 60 + 128
        noise = rng.normal(0, 12, (size, size, 3))
        images.append(np.clip(base[:, :, None] + noise, 0, 255).astype(np.uint8))
    return images


def percentiles(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


# ---- subjects ------------------------------------------------------------------------------------------
class BareBackend:
    """Preprocess + infer, exactly as the node's worker does it (same functions), one frame at a time."""

    def __init__(self, package: Path, threads: int) -> None:
        manifest = Manifest.load(package)
        backend = create_backend("onnxruntime", package / "model.onnx", manifest, BackendOptions(threads=threads))
        self.model = LoadedModel(package, manifest, backend)
        self.spec = manifest.preprocessing
        self.buffer = np.zeros((1, 3, self.spec.input_height, self.spec.input_width), np.float32)

    def one(self, image: np.ndarray) -> float:
        start = time.perf_counter()
        preprocess_into(image, self.spec, "BGR", self.buffer[0])
        self.model.score(self.buffer)
        return (time.perf_counter() - start) * 1e3


def bare_worker(package: Path, threads: int, size: int) -> int:
    """The bare subject's process: commands on stdin, one JSON answer per line on stdout. Its own process,
    like each node, so that no subject shares an interpreter (GIL, allocator, thread pools) with the bench."""
    bare = BareBackend(package, threads)
    images = make_images(IMAGE_COUNT, size)
    for line in sys.stdin:
        command, *arguments = line.split()
        if command == "latency":
            answer = []
            for i in arguments:
                time.sleep(PACING_S)
                answer.append(bare.one(images[int(i)]))
        elif command == "throughput":
            count = int(arguments[0])
            start = time.perf_counter()
            for i in range(count):
                bare.one(images[i % len(images)])
            answer = count / (time.perf_counter() - start)
        else:
            break
        print(json.dumps(answer), flush=True)
    bare.model.close()
    return 0


def echo_worker() -> int:
    """The echo node's process: the inference node's executor and QoS, but answers every frame at once."""
    from rclpy.node import Node

    from qc_cell.ros import qos
    from qc_cell.ros.node_main import run
    from qc_interfaces.msg import InspectionResult, ModelInfo, PartFrame

    class Echo(Node):
        def __init__(self) -> None:
            super().__init__("inference_echo")
            self.results = self.create_publisher(InspectionResult, "inspection/result", qos.EVENTS)
            self.model = self.create_publisher(ModelInfo, "model/active", qos.LATCHED)
            self.model.publish(ModelInfo(state=ModelInfo.STATE_ACTIVE, version="echo"))
            self.create_subscription(PartFrame, "camera/frames", self.on_frame, qos.PART_FRAMES)

        def on_frame(self, msg: PartFrame) -> None:
            result = InspectionResult(part_id=msg.part_id, status=InspectionResult.STATUS_OK, defect_probability=0.0)
            result.header = msg.header
            self.results.publish(result)

    return run(Echo)


class BareSubject:
    label = "bare backend (preprocess + infer)"

    def __init__(self, package: Path, threads: int, size: int) -> None:
        command = [sys.executable, __file__, "--bare-worker", str(package), "--threads", str(threads)]
        self.process = subprocess.Popen(
            [*command, "--size", str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.latency: list[float] = []
        self.throughputs: list[float] = []
        self.not_inspected = 0

    def _ask(self, line: str):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the bare backend worker died")
        return json.loads(answer)

    def measure(self, indices: list[int], messages: list, record: bool) -> None:
        times = self._ask("latency " + " ".join(str(i) for i in indices))
        if record:
            self.latency += times

    def throughput(self, messages: list, count: int, window: int) -> None:
        self.throughputs.append(self._ask(f"throughput {count}"))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        self.process.wait(10)


class Probe:
    """This process's side of the graph: one executor thread, results of every node under test."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_inference_probe", context=self.context)
        self.arrived: dict[str, tuple[float, object]] = {}
        self.events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the executor raises when the context shuts down under it
            self.executor.spin()

    def on_result(self, msg) -> None:
        now = time.perf_counter()
        with self._lock:
            self.arrived[msg.part_id] = (now, msg)
            event = self.events.get(msg.part_id)
        if event is not None:
            event.set()

    def expect(self, part_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self.events[part_id] = event
        return event

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class NodeUnderTest:
    """A node in its own process and namespace, as in the cell: `python -m qc_cell.nodes.inference`, or the
    echo node (same executor, answers each frame at once: the transport + executor floor)."""

    def __init__(self, probe: Probe, label: str, namespace: str, command: list[str], log: Path) -> None:
        from qc_cell.ros import qos
        from qc_interfaces.msg import InspectionResult, ModelInfo, PartFrame

        self.probe = probe
        self.label = label
        self.namespace = namespace
        self.log = log
        self.model: ModelInfo | None = None
        self.sequence = 0
        self.e2e: list[float] = []
        self.in_node: list[float] = []
        self.queue: list[float] = []
        self.throughputs: list[float] = []
        self.not_inspected = 0
        node = probe.node
        self.frames = node.create_publisher(PartFrame, f"{namespace}/camera/frames", qos.PART_FRAMES)
        node.create_subscription(InspectionResult, f"{namespace}/inspection/result", probe.on_result, qos.EVENTS)
        node.create_subscription(ModelInfo, f"{namespace}/model/active", self._on_model, qos.LATCHED)
        command = [*command, "--ros-args", "-r", f"__ns:={namespace}"]
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)

    @classmethod
    def inference(cls, probe: Probe, package: Path, workdir: Path, threads: int, max_batch: int) -> NodeUnderTest:
        parameters = {
            "model_path": str(package),
            "model_store_dir": str(workdir / f"store_b{max_batch}"),
            "backend": "onnxruntime",
            "threads": threads,
            "max_batch": max_batch,
            "queue_size": 64,
            "deadline_ms": 0.0,
        }
        command = [sys.executable, "-m", "qc_cell.nodes.inference", "--ros-args"]
        for name, value in parameters.items():
            command += ["-p", f"{name}:={value}"]
        label = f"node max_batch={max_batch}"
        return cls(probe, label, f"/bench_b{max_batch}", command, workdir / f"node_b{max_batch}.log")

    @classmethod
    def echo(cls, probe: Probe, workdir: Path) -> NodeUnderTest:
        command = [sys.executable, __file__, "--echo-worker"]
        return cls(probe, "echo node (no inference)", "/bench_echo", command, workdir / "echo.log")

    def _on_model(self, msg) -> None:
        self.model = msg

    def wait_active(self, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited: {self.log.read_text()[-2000:]}")
            if self.model is not None and self.model.state == self.model.STATE_ACTIVE:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} never served the model: {self.log.read_text()[-2000:]}")

    def _send(self, msg, part_id: str) -> threading.Event:
        self.sequence += 1
        msg.part_id, msg.sequence = part_id, self.sequence
        msg.header.stamp = self.probe.node.get_clock().now().to_msg()
        event = self.probe.expect(part_id)
        self.frames.publish(msg)
        return event

    def measure(self, indices: list[int], messages: list, record: bool) -> None:
        """One frame in flight at a time."""
        for msg in (messages[i] for i in indices):
            start = time.perf_counter()
            part_id = f"{self.namespace}-lat-{self.sequence + 1:06d}"
            if not self._send(msg, part_id).wait(30.0):
                raise RuntimeError(f"no result for {part_id} within 30 s")
            arrived, result = self.probe.arrived[part_id]
            if result.status != result.STATUS_OK:
                raise RuntimeError(f"{part_id} NOT_INSPECTED ({result.reason}) in the latency run")
            if record:
                self.e2e.append((arrived - start) * 1e3)
                self.in_node.append(result.queue_ms + result.preprocess_ms + result.inference_ms)
                self.queue.append(result.queue_ms)

    def throughput(self, messages: list, count: int, window: int) -> None:
        """`window` frames kept in flight, a new one whenever a result comes back: the node always has work
        queued, but the camera never outruns it (flooding would measure the middleware's KEEP_LAST history,
        which drops frames it cannot deliver in time, instead of the node)."""
        ids, events = [], []
        start = time.perf_counter()
        for i in range(count):
            if i >= window and not events[i - window].wait(30.0):
                raise RuntimeError(f"no result for {ids[i - window]} within 30 s")
            ids.append(f"{self.namespace}-tput-{self.sequence + 1:06d}")
            events.append(self._send(messages[i % len(messages)], ids[-1]))
        for part_id, event in zip(ids, events, strict=True):
            if not event.wait(30.0):
                raise RuntimeError(f"no result for {part_id} within 30 s")
        end = max(self.probe.arrived[i][0] for i in ids)
        self.throughputs.append(count / (end - start))
        self.not_inspected += sum(self.probe.arrived[i][1].status != 0 for i in ids)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def frame_messages(images: list[np.ndarray]) -> list:
    from qc_cell.ros.images import array_to_image
    from qc_interfaces.msg import PartFrame

    messages = []
    for image in images:
        msg = PartFrame(source="bench", encoder_count=-1, capture_ok=True)
        msg.header.frame_id = "camera"
        msg.image = array_to_image(image, "bgr8")
        messages.append(msg)
    return messages


def main() -> int:
    if "--echo-worker" in sys.argv:  # internal: the echo node's process (ROS arguments follow)
        return echo_worker()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200, help="measured frames per subject (latency)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--block", type=int, default=10, help="frames per subject before switching to the next")
    parser.add_argument("--throughput-frames", type=int, default=100, help="frames per throughput round (x2)")
    parser.add_argument("--window", type=int, default=4, help="frames in flight during the node throughput runs")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--size", type=int, default=512, help="camera frame side (bgr8 square)")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 4], help="node max_batch settings to run")
    parser.add_argument("--package", type=Path, help="use this model package instead of exporting EfficientNet-B0")
    parser.add_argument("--export-only", type=Path, help=argparse.SUPPRESS)  # internal: the export subprocess
    parser.add_argument("--bare-worker", type=Path, help=argparse.SUPPRESS)  # internal: the bare subject
    args = parser.parse_args()
    if args.export_only:
        export_efficientnet_b0(args.export_only)
        return 0
    if args.bare_worker:
        return bare_worker(args.bare_worker, args.threads, args.size)
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(100, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.update(ENVIRONMENT)  # every process as in the cell (DDS transport profile, malloc tunables)

    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        package = args.package
        if package is None:  # torch stays out of the measuring processes
            package = tmp / "effnet_b0"
            subprocess.run(
                [sys.executable, __file__, "--export-only", str(package)], check=True, stderr=subprocess.DEVNULL
            )
        print(f"model package {package} ({time.perf_counter() - t:.1f} s to export)")
        messages = frame_messages(make_images(IMAGE_COUNT, args.size))
        bare = BareSubject(package, args.threads, args.size)
        probe = Probe()
        echo = NodeUnderTest.echo(probe, tmp)
        nodes = [echo, *(NodeUnderTest.inference(probe, package, tmp, args.threads, b) for b in args.max_batch)]
        subjects = [bare, *nodes]
        try:
            for node in nodes:
                node.wait_active()
            time.sleep(1.0)  # discovery settles
            for subject in subjects:  # warm-up, not recorded
                subject.measure([i % IMAGE_COUNT for i in range(args.warmup)], messages, record=False)
            # Interleaved in small blocks, rotating the order, so every subject sees the same (shared) machine.
            for n, first in enumerate(range(0, args.frames, args.block)):
                indices = [i % IMAGE_COUNT for i in range(first, min(first + args.block, args.frames))]
                for subject in subjects[n % len(subjects) :] + subjects[: n % len(subjects)]:
                    subject.measure(indices, messages, record=True)
            for _ in range(2):
                for subject in subjects:
                    subject.throughput(messages, args.throughput_frames, args.window)
        finally:
            for subject in subjects:
                subject.stop()
            probe.close()

    bare_p50, bare_p99 = percentiles(bare.latency)
    floor_p50 = percentiles(echo.e2e)[0]

    def row(label: str, values: list[float], ratio: bool = True) -> None:
        p50, p99 = percentiles(values)
        ratios = f"{p50 / bare_p50:10.2f} {p99 / bare_p99:10.2f}" if ratio else ""
        print(f"{label:60s} {p50:8.2f} {p99:8.2f} {ratios}")

    print()
    print(
        f"EfficientNet-B0 fp32 batch 1, ONNX Runtime {onnxruntime.__version__} CPU, {args.threads} threads, "
        f"{args.size}x{args.size} bgr8 frames; {args.frames} frames per subject, interleaved in blocks of "
        f"{args.block}; every subject in its own process ({os.cpu_count()} cores, shared)"
    )
    print(f"{'latency, one frame at a time':60s} {'p50 ms':>8s} {'p99 ms':>8s} {'/bare p50':>10s} {'/bare p99':>10s}")
    row(bare.label, bare.latency)
    row("transport floor: echo node, publish -> result received", echo.e2e, ratio=False)
    for node in nodes[1:]:
        row(f"{node.label}: in-node, frame received -> scored", node.in_node)
        row(f"{node.label}:   of which queue wait", node.queue, ratio=False)
        row(f"{node.label}: end-to-end, publish -> result received", node.e2e)
        minus = [v - floor_p50 for v in node.e2e]
        row(f"{node.label}: end-to-end minus the echo floor p50", minus)
    print()
    print(
        f"sustained throughput, parts/s (2 rounds of {args.throughput_frames} frames; bare sequential, nodes with "
        f"{args.window} frames in flight):"
    )
    for subject in subjects:
        rounds = ", ".join(f"{v:.1f}" for v in subject.throughputs)
        extra = "" if subject is bare else f"  NOT_INSPECTED {subject.not_inspected}"
        print(f"  {subject.label:58s} {max(subject.throughputs):7.1f}   rounds: {rounds}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
