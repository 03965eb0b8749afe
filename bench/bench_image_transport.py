"""Image transport between two processes: capture-to-receive latency of camera/frames (PartFrame, the cell's
PART_FRAMES QoS) at 30 fps, per size and encoding, under several Fast DDS transport settings and through the
camera driver's shared-memory frame pool (`shm`, `shm_direct`), each against the serialize + deserialize floor
measured in the same run, and against the shipped DDS configuration (`cell`) when it is in the run.
Prints figures; asserts nothing (goals are read off the table, docs/camera.md).

    source scripts/env.sh && python bench/bench_image_transport.py [--seconds 5] [--fps 30]
        [--sizes 32x24,640x480,1280x720,1920x1080,2448x2048:mono8,4096x3000:bayer_rggb8]
        [--configs default,LARGE_DATA,cell,shm,shm_direct] [--stages]

A size is WxH or WxH:encoding (bgr8 by default; mono8 and bayer_* are one byte per pixel).

What one sample measures: the publisher process takes a frame (the "capture", stamped with the wall clock),
builds the PartFrame with qc_cell.ros.images.array_to_image (as the camera driver does: no pixel copy) and
publishes; the subscriber process stamps the wall clock on entry to its callback and decodes the image (zero-copy
view). Latency = receive - capture. Both processes run on this machine, so they share the clock.
The floor is serialize_message + deserialize_message of the same PartFrame, back to back in a process of its own
(rclpy's CDR path, no transport, warm caches). The 32x24 row (2 KB) is the size-independent part of a hop in the
same run: wake-ups, executors and scheduling on this machine.

--stages also prints, per point, the median ms of each stage of the hop, from timestamps both processes take
(CLOCK_REALTIME, same host): fill (capture -> PartFrame filled), to_dds_write (-> Fast DDS's source timestamp),
publish_call (how long publish() blocked), dds_transport (-> the reader's reception timestamp), wake_up (-> rclpy's
wait returned), executor (-> callback entry) with executor_cpu (the thread's CPU time over it), before_take /
take / after_take (the executor's own work, rmw take + conversion to Python, the rest), to_pixels (-> the pixels
in hand). QC_BENCH_EXECUTOR=events spins the subscriber with rclpy's experimental EventsExecutor (no stages: it
cannot call back with MessageInfo).

Configs (environment of both processes; the caller's own Fast DDS variables are removed first):
- default: Fast DDS built-in transports (UDPv4 + SHM with its 512 KB default segment, which cannot hold the
  fragments of one big frame: they wait for each other).
- LARGE_DATA: FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (UDP for discovery only; data over SHM or TCP).
- LARGE_DATA_16MB: LARGE_DATA?max_msg_size=16MB&sockets_size=16MB.
- SHM: FASTDDS_BUILTIN_TRANSPORTS=SHM (shared memory only; same-host peers only).
- LARGE_DATA_sync: LARGE_DATA with RMW_FASTRTPS_PUBLICATION_MODE=SYNCHRONOUS.
- cell: what the cell ships (qc_cell.cell_graph.ENVIRONMENT): the participant profile
  qc_cell/camera/fastdds_large_images.xml (UDPv4 + SHM with a 32 MB segment) and GLIBC_TUNABLES malloc thresholds
  (image-sized buffers reused from the heap instead of page-faulting fresh mmaps for every message).
- cell_no_malloc: the cell's profile without the malloc thresholds (what each of the two contributes).
- shm: the cell's path to a same-host consumer (qc_cell.ros.frame_transport): the publisher's FrameSender copies
  the frame into a slot of its shared-memory pool and publishes a PartFrame carrying the handle (cell DDS settings
  for that small message); the subscriber's FrameReceiver leases the slot and takes a view of the pixels, then
  checks the slot's generation (a frame overwritten would not count). The copy into the slot is part of the hop.
  The first frames go inline until the subscriber has attached to the pool; they are not measured.
- shm_direct: as shm, but the frame is captured straight into a slot the sender reserved (FrameSender.reserve,
  the camera driver's FrameSource.frame_allocator: what the synthetic, Aravis and pylon sources do): the capture
  stamp is taken when the frame is in the slot, and fill() commits it without a copy.
- shm_direct_sync: shm_direct with RMW_FASTRTPS_PUBLICATION_MODE=SYNCHRONOUS (the small handle message is sent
  from the publishing thread, no hand-off to Fast DDS's asynchronous writer thread): what that hop would gain.
- cell_shm_only: the cell's profile without its UDPv4 transport, under discovery range SUBNET (the LOCALHOST range
  adds a UDP transport back). Not shippable (nothing off this machine would see the cell); it shows what the
  fragmentation costs: a participant fragments every message larger than the smallest maximum message size of its
  transports, UDP's 64 KB, so with UDP present a 1280x720 frame crosses shared memory as 43 fragments.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qc_cell.cell_graph import ENVIRONMENT, PROFILE_VARIABLE

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "LARGE_DATA": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"},
    "LARGE_DATA_16MB": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA?max_msg_size=16MB&sockets_size=16MB"},
    "SHM": {"FASTDDS_BUILTIN_TRANSPORTS": "SHM"},
    "LARGE_DATA_sync": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "RMW_FASTRTPS_PUBLICATION_MODE": "SYNCHRONOUS"},
    "cell": dict(ENVIRONMENT),
    "cell_no_malloc": {k: v for k, v in ENVIRONMENT.items() if k != "GLIBC_TUNABLES"},
    "cell_shm_only": {**ENVIRONMENT, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"},  # profile: _shm_only_profile()
    "shm": dict(ENVIRONMENT),
    "shm_direct": dict(ENVIRONMENT),
    "shm_direct_sync": {**ENVIRONMENT, "RMW_FASTRTPS_PUBLICATION_MODE": "SYNCHRONOUS"},
}
POOL_CONFIGS = ("shm", "shm_direct", "shm_direct_sync")
_VARIABLES = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "RMW_FASTRTPS_PUBLICATION_MODE",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "GLIBC_TUNABLES",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
)
TOPIC = "bench/frames"  # + a suffix per measured point: a straggler of the previous point never talks to this one
WARMUP = 10  # first samples dropped: discovery, first-time allocations
# --stages: the hop cut at the timestamps both processes take (see measure_hop)
STAGES = (
    "fill", "to_dds_write", "publish_call", "dds_transport", "wake_up", "executor", "executor_cpu",
    "before_take", "take", "after_take", "to_pixels",
)  # fmt: skip


def _frames(width: int, height: int, encoding: str = "bgr8") -> list[np.ndarray]:
    """Two different camera-like frames, alternated (so no layer can cache a constant payload)."""
    rng = np.random.default_rng(0)
    shape = (height, width, 3) if encoding == "bgr8" else (height, width)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(2)]


# ------------------------------------------------------------------------------------------ child processes


def run_publisher(
    width: int, height: int, encoding: str, fps: float, count: int, wait_s: float, pool: str, topic: str
) -> int:
    import rclpy

    from qc_cell.ros import qos
    from qc_cell.ros.frame_transport import FrameSender, PoolSettings
    from qc_cell.ros.images import array_to_image
    from qc_cell.ros.time import from_ns
    from qc_interfaces.msg import PartFrame

    rclpy.init()
    node = rclpy.create_node("bench_image_pub")
    pub = node.create_publisher(PartFrame, topic, qos.PART_FRAMES)
    sender = FrameSender(node, pub, PoolSettings(enabled=bool(pool)), "bench", print) if pool else None
    end = time.monotonic() + wait_s
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    if pub.get_subscription_count() == 0:
        print("publisher: no subscriber matched", file=sys.stderr)
        return 1
    time.sleep(0.5)  # let the reader's side of the match settle too
    frames = _frames(width, height, encoding)
    period = 1.0 / fps
    if sender is not None:  # one frame (not measured) creates the pool; announced, the subscriber attaches first
        msg = PartFrame(part_id="warmup", capture_ok=True, source="bench")
        sender.fill(msg, frames[0], encoding, msg.header)
        pub.publish(msg)
        end = time.monotonic() + wait_s
        while not sender._all_local() and time.monotonic() < end:
            time.sleep(0.05)
        if not sender._all_local():
            print("publisher: the subscriber never attached to the pool", file=sys.stderr)
            return 1
        time.sleep(0.5)  # the subscriber is done with the inline frame (seconds through DDS at 12 MP, loaded)
    next_tick = time.monotonic()
    stages: list[tuple[int, int, int]] = []  # (sequence, after fill ns, after publish ns): --stages
    for seq in range(count):
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next_tick += period
        msg = PartFrame(part_id=f"bench-{seq}", sequence=seq, capture_ok=True, source="bench")
        if pool.startswith("shm_direct"):  # the driver's path for a source that captures into the slot it is given
            target = sender.reserve(frames[0].shape, frames[0].dtype)  # (FrameSource.frame_allocator)
            if target is None:
                print("publisher: no slot to capture into", file=sys.stderr)
                target = np.empty_like(frames[0])
            np.copyto(target, frames[seq % 2])  # the camera's exposure / decode into the slot
            capture_ns = time.time_ns()
            msg.header.stamp = from_ns(capture_ns)
            sender.fill(msg, target, encoding, msg.header)  # commits the slot: no copy
        else:
            pixels = frames[seq % 2]  # "capture"
            capture_ns = time.time_ns()
            msg.header.stamp = from_ns(capture_ns)
            if sender is not None:
                sender.fill(msg, pixels, encoding, msg.header)
            else:
                msg.image = array_to_image(pixels, encoding, msg.header)
        filled_ns = time.time_ns()
        pub.publish(msg)
        stages.append((seq, filled_ns, time.time_ns()))
    print("RESULT " + json.dumps(stages))
    time.sleep(1.0)  # reliable QoS: give the last samples time to be acknowledged
    if sender is not None:
        if sender.pool_full:
            print(f"publisher: {sender.pool_full} frame(s) inline: the pool was full", file=sys.stderr)
        sender.close()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_subscriber(count: int, timeout_s: float, pool: str, topic: str) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from qc_cell.camera.frame_pool import FrameGoneError
    from qc_cell.ros import qos
    from qc_cell.ros.frame_transport import FrameReceiver
    from qc_cell.ros.images import image_to_array
    from qc_cell.ros.time import to_ns
    from qc_interfaces.msg import PartFrame

    rclpy.init()
    node = rclpy.create_node("bench_image_sub")
    samples: list[tuple[int, ...]] = []  # (sequence, capture, receive, DDS source, DDS reception, callback entry) ns
    receiver = FrameReceiver(node.get_fully_qualified_name()) if pool else None
    if receiver is not None:
        receiver.subscribe(node)  # camera/frame_pool: attached before the first frame, as inference is
    problems: list[str] = []

    def on_frame(msg: PartFrame, info) -> None:
        entered, woke, cpu = time.time_ns(), WOKE[0], time.thread_time_ns() - WOKE[1]
        take_begin, take_end = WOKE[2], WOKE[3]
        if receiver is None:
            received = time.time_ns()
            image_to_array(msg.image)
        else:  # the pixels in hand (leased, a view) before the receive stamp; the generation checked after
            frame = receiver.receive(msg)
            try:
                frame.raw()  # the pixels in hand (a view), as image_to_array gives them on the DDS path
            except FrameGoneError as exc:  # overwritten before this subscriber got to it: not a sample
                problems.append(str(exc))
                return
            received = time.time_ns()
            if frame.verify is not None:
                problem = frame.verify()
                frame.release()
                if problem:
                    problems.append(problem)
                    return
            elif msg.part_id != "warmup":
                problems.append("measured frame came inline")
        if msg.part_id == "warmup":
            return
        samples.append(
            (msg.sequence, to_ns(msg.header.stamp), received, info["source_timestamp"], info["received_timestamp"],
             entered, woke, cpu, take_begin, take_end)
        )  # fmt: skip

    if os.environ.get("QC_BENCH_EXECUTOR") == "events":  # rclpy's experimental EventsExecutor (Kilted): it fails
        from rclpy.experimental import EventsExecutor  # on callbacks taking MessageInfo (rclpy 9.1.2), so no stages

        no_info = {"source_timestamp": 0, "received_timestamp": 0}
        node.create_subscription(PartFrame, topic, lambda msg: on_frame(msg, no_info), qos.PART_FRAMES)
        executor = EventsExecutor()
    else:
        node.create_subscription(PartFrame, topic, on_frame, qos.PART_FRAMES)
        _time_the_wake_ups()
        executor = SingleThreadedExecutor()
    executor.add_node(node)
    end = time.monotonic() + timeout_s
    while len(samples) < count and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    print("RESULT " + json.dumps(samples))
    if problems:
        print(f"subscriber: {len(problems)} frame(s) not counted: {problems[0]}", file=sys.stderr)
    if receiver is not None:
        receiver.close()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


WOKE = [0, 0, 0, 0]  # the executor's last wait returned (ns, CLOCK_REALTIME; thread CPU ns), take began, ended


def _time_the_wake_ups() -> None:
    """Stamp the return of every wait of rclpy's executor (WOKE), to cut "DDS reception -> callback" into the
    wake-up (rmw's condition variable, the OS) and rclpy's executor work after it. Costs ~1 us a wait."""
    import types

    import rclpy.executors

    base = rclpy.executors._rclpy

    class TimedWaitSet(base.WaitSet):
        def wait(self, timeout: int) -> None:
            super().wait(timeout)
            WOKE[0], WOKE[1] = time.time_ns(), time.thread_time_ns()

    proxy = types.ModuleType("rclpy_timed_waits")
    proxy.__dict__.update({k: getattr(base, k) for k in dir(base) if not k.startswith("__")})
    proxy.WaitSet = TimedWaitSet
    rclpy.executors._rclpy = proxy
    take = rclpy.executors.Executor._take_subscription

    def timed_take(self, sub):
        WOKE[2] = time.time_ns()
        try:
            return take(self, sub)
        finally:
            WOKE[3] = time.time_ns()

    rclpy.executors.Executor._take_subscription = timed_take


# ------------------------------------------------------------------------------------------ orchestration


def run_floor(width: int, height: int, encoding: str, repeats: int = 30) -> int:
    """Prints the median ms of serialize_message + deserialize_message of one PartFrame of this size."""
    from rclpy.serialization import deserialize_message, serialize_message

    from qc_cell.ros.images import array_to_image
    from qc_interfaces.msg import PartFrame

    msg = PartFrame(part_id="bench", capture_ok=True)
    msg.image = array_to_image(_frames(width, height, encoding)[0], encoding)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        deserialize_message(serialize_message(msg), PartFrame)
        samples.append((time.perf_counter() - start) * 1e3)
    print(f"RESULT {statistics.median(samples)}")
    return 0


def measure_floor(width: int, height: int, encoding: str) -> float:
    """The floor in a process of its own with the cell's malloc settings: in a process without them glibc's
    dynamic mmap threshold makes multi-MB buffers cost anything from 0.5 to 5 ms at 1280x720, depending on what
    the process allocated before."""
    env = {**os.environ, "GLIBC_TUNABLES": ENVIRONMENT["GLIBC_TUNABLES"]}
    me = [sys.executable, str(Path(__file__).resolve())]
    out = subprocess.run(
        [*me, "--role", "floor", "--size", f"{width}x{height}:{encoding}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def _shm_only_profile() -> str:
    """The cell's Fast DDS profile without the UDPv4 transport, written to a temporary file."""
    shipped = Path(ENVIRONMENT[PROFILE_VARIABLE]).read_text()
    udp = "          <transport_id>qc_udpv4</transport_id>\n"
    if udp not in shipped:
        raise RuntimeError("the cell's Fast DDS profile changed: update _shm_only_profile()")
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="qc_shm_only_", delete=False) as out:
        out.write(shipped.replace(udp, ""))
    atexit.register(os.unlink, out.name)
    return out.name


def measure_hop(
    name: str, config: dict[str, str], width: int, height: int, encoding: str, fps: float, seconds: float
) -> dict[str, float]:
    count = WARMUP + int(seconds * fps)
    env = {**os.environ, **config, "PYTHONUNBUFFERED": "1"}
    for variable in _VARIABLES:
        if variable not in config:
            env.pop(variable, None)  # each config is measured on its own settings, not the caller's
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    me = [sys.executable, str(Path(__file__).resolve())]
    timeout = seconds + 30.0
    pool = ["--pool", name] if name in POOL_CONFIGS else []
    pool += ["--topic", f"{TOPIC}_{name}_{width}x{height}_{encoding}_{time.monotonic_ns()}"]
    sub = subprocess.Popen(
        [*me, "--role", "sub", "--count", str(count), "--timeout", str(timeout), *pool],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    pub = subprocess.Popen(
        [
            *me,
            "--role",
            "pub",
            "--size",
            f"{width}x{height}:{encoding}",
            "--fps",
            str(fps),
            "--count",
            str(count),
            *pool,
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = sub.communicate(timeout=timeout + 15)
        pub_out, _ = pub.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # a starved machine: this point gives no figures, the run goes on
        for child in (sub, pub):
            child.kill()
            child.wait()
        out = pub_out = ""
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    samples = json.loads(lines[-1][7:]) if lines else []
    pub_lines = [line for line in (pub_out or "").splitlines() if line.startswith("RESULT ")]
    published = {seq: (filled, sent) for seq, filled, sent in (json.loads(pub_lines[-1][7:]) if pub_lines else [])}
    kept = [s for s in samples if s[0] >= WARMUP]
    latencies = [(s[2] - s[1]) / 1e6 for s in kept]
    received = [s[2] for s in kept]
    # Where the hop's time goes (all CLOCK_REALTIME on this host; medians in ms): capture -> the PartFrame filled
    # (pool write or commit) -> DDS source timestamp (rclpy publish: serialize, rmw write) -> publish() returned;
    # DDS source -> DDS reception (the transport, incl. Fast DDS's asynchronous writer thread) -> callback entry
    # (executor wake-up, take, deserialize) -> pixels in hand (lease + view).
    stage_samples: dict[str, list[float]] = {name: [] for name in STAGES}
    for seq, capture, got, source, reception, entered, woke, cpu, take_begin, take_end in kept:
        if seq not in published:
            continue
        filled, sent = published[seq]
        for name, value in zip(
            STAGES,
            (
                filled - capture,
                source - filled,
                sent - filled,
                reception - source,
                woke - reception,
                entered - woke,
                cpu,
                take_begin - woke,
                take_end - take_begin,
                entered - take_end,
                got - entered,
            ),
            strict=True,
        ):
            stage_samples[name].append(value / 1e6)
    stages = {name: statistics.median(v) if v else float("nan") for name, v in stage_samples.items()}
    rate = (len(received) - 1) / ((received[-1] - received[0]) / 1e9) if len(received) > 1 else 0.0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (float("nan"),) * 3
    return {
        "p50": p50, "p95": p95, "p99": p99, "rate": rate, "received": len(kept), "sent": count - WARMUP,
        "stages": stages,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("bench", "pub", "sub", "floor"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="1280x720", help=argparse.SUPPRESS)
    parser.add_argument("--pool", default="", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=TOPIC, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--fps", type=float, default=30.0, help="publish rate (default 30)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per size and config")
    parser.add_argument(
        "--sizes", default="32x24,640x480,1280x720,1920x1080", help="comma-separated WxH or WxH:encoding"
    )
    parser.add_argument("--configs", default="default,LARGE_DATA,cell", help=f"comma-separated of {list(CONFIGS)}")
    parser.add_argument(
        "--stages", action="store_true", help="also print the median ms of each stage of the hop (where time goes)"
    )
    args = parser.parse_args(argv)
    width, height, encoding = _size(args.size)
    if args.role == "pub":
        return run_publisher(width, height, encoding, args.fps, args.count, 20.0, args.pool, args.topic)
    if args.role == "sub":
        return run_subscriber(args.count, args.timeout, args.pool, args.topic)
    if args.role == "floor":
        return run_floor(width, height, encoding)

    # A private domain on loopback for this run (both children inherit it).
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(100, 200)))
    sizes = [_size(s) for s in args.sizes.split(",")]
    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    if "cell_shm_only" in configs:
        CONFIGS["cell_shm_only"][PROFILE_VARIABLE] = _shm_only_profile()
    print(
        f"image transport, two processes, PartFrame at {args.fps:g} fps, {args.seconds:g} s per point, "
        f"RMW {os.environ.get('RMW_IMPLEMENTATION', 'default')}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'size':>10} {'encoding':>11} {'config':>15} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'rate/s':>7} "
          f"{'recv':>9} {'floor ms':>9} {'p50/floor':>9} {'cell/p50':>8}")  # fmt: skip
    for width, height, encoding in sizes:
        floor = measure_floor(width, height, encoding)
        cell_p50 = float("nan")
        for name in configs:
            r = measure_hop(name, CONFIGS[name], width, height, encoding, args.fps, args.seconds)
            ratio = r["p50"] / floor if floor > 0 else float("nan")
            if name == "cell":
                cell_p50 = r["p50"]
            print(
                f"{width}x{height:<5} {encoding:>11} {name:>15} {r['p50']:8.2f} {r['p95']:8.2f} {r['p99']:8.2f} "
                f"{r['rate']:7.1f} {r['received']:>4}/{r['sent']:<4} {floor:9.2f} {ratio:9.1f} "
                f"{cell_p50 / r['p50']:8.1f}",
                flush=True,
            )
            if args.stages:
                print(
                    f"{'':>10} {'stages p50 ms:':>27} " + " ".join(f"{k} {v:.3f}" for k, v in r["stages"].items()),
                    flush=True,
                )
    print("goals: at 1280x720 the median hop within 3x the serialize+deserialize floor; shm p50 <= 1.0 ms up to 12 MP;")
    print("       at 12 MP shm at least 20x faster than cell (cell/p50, with cell listed before shm)")
    return 0


def _size(text: str) -> tuple[int, int, str]:
    size, _, encoding = text.strip().partition(":")
    width, height = (int(v) for v in size.split("x"))
    return width, height, encoding or "bgr8"


if __name__ == "__main__":
    raise SystemExit(main())
