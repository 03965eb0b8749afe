"""`qc_cloud verifier`: answer the cells' verify/request with a bigger model (see docs/edge-cloud.md).

Run several workers with the same --group: the broker's MQTT 5 shared subscription gives each request to one
of them. Every worker loads the package with the edge's own code (manifest, backend, golden-set self-test)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from qc_cloud.cell_link import LinkError, add_broker_arguments, broker_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("verifier", help="answer re-inspection requests with a bigger model", description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="model package folder (from `qc_cloud train`)")
    p.add_argument("--worker", default="verifier-1", help="this worker's id (status topic, records)")
    p.add_argument("--group", default="qc-verifier", help="shared-subscription group of the workers")
    p.add_argument(
        "--allow-cell",
        action="append",
        dest="allowed_cells",
        default=None,
        metavar="PATTERN",
        help="site/line/cell pattern (fnmatch) allowed to ask; repeatable; default: every cell",
    )
    p.add_argument("--max-batch", type=int, default=8, help="largest batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="a batch closes this long after its first request")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting; beyond: refused 'overloaded'")
    p.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024, help="largest request payload")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest image (width x height)")
    p.add_argument("--threshold", type=float, default=0.5, help="P(defect) >= threshold is DEFECTIVE")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--status-period", type=float, default=5.0, help="seconds between load reports")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until SIGTERM)")
    add_broker_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from qc_cloud.verifier.core import VerifierSettings
    from qc_cloud.verifier.model import load_package
    from qc_cloud.verifier.service import ServiceSettings, VerifierService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        settings = VerifierSettings(
            worker=args.worker,
            allowed_cells=tuple(args.allowed_cells or ("*",)),
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_request_bytes=args.max_request_bytes,
            max_image_pixels=args.max_image_pixels,
            threshold=args.threshold,
        )
        broker = broker_from_args(args, f"qc-verifier-{args.worker}")
    except (ValueError, LinkError) as exc:
        print(f"qc_cloud verifier: error: {exc}", file=sys.stderr)
        return 2
    try:
        scorer, loaded = load_package(args.model, args.backend, args.precision, args.max_batch, args.threads)
    except Exception as exc:
        print(f"qc_cloud verifier: error: cannot serve {args.model}: {exc}", file=sys.stderr)
        return 2
    print(f"verifier {args.worker}: {loaded}", flush=True)
    service = VerifierService(ServiceSettings(broker, args.group, args.status_period), settings, scorer)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        service.start()
    except (OSError, RuntimeError) as exc:
        print(f"qc_cloud verifier: error: {exc}", file=sys.stderr)
        service.stop(drain_s=0)
        return 2
    print(f"verifier {args.worker}: serving {service.subscription} on {broker.url}", flush=True)
    try:
        stop.wait(args.duration or None)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        scorer.close()
    print(f"verifier {args.worker}: stopped; {service.core.report()}", flush=True)
    return 0
