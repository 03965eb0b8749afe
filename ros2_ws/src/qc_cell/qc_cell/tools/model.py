"""The operator's hand on the cell's model store, on the device (whoever may write the store's folder):

    python -m qc_cell.tools.model list --store ~/.local/share/qc_cell/model_store
    python -m qc_cell.tools.model install PACKAGE_DIR --store DIR [--load [--namespace cell1]]
    python -m qc_cell.tools.model pin VERSION --store DIR [--note TEXT] [--load [--namespace cell1]]

`install` copies a package into the store (its model file checked against its manifest's sha256), recorded as
installed by the operator: inference/load_model then takes it like a verified update (not older than the active
version). `pin` authorises going back to an installed version once (the same grant a signed rollback manifest
gives; the copy is checked first); the running inference node loads it on the next load_model naming it.
`--load` asks the running cell's inference node to load it now (inference/load_model, in --namespace, default
$ROS_NAMESPACE), and waits for its answer. The store's policy is the one inference enforces
(qc_cell.inference.model_store). Exit status: 0 done, 1 refused (the reason is printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from qc_cell.inference.model_store import ORIGIN_OPERATOR, ModelStore, StoreError
from qc_contract.model_manifest import Manifest, ManifestError

REFUSED, USAGE_ERROR = 1, 2


def _list(store: ModelStore) -> str:
    active = store.active()
    lines = [f"active: {active.version if active else '(none)'}"]
    if active is not None and active.history:
        lines.append(f"rollbacks kept: {', '.join(active.history)}")
    for version, record in sorted(store.records().items(), key=lambda item: item[1].seq):
        when = datetime.fromtimestamp(record.installed_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        grant = f", rollback authorised by {record.rollback.by}" if record.rollback else ""
        mark = "*" if active is not None and version == active.version else " "
        lines.append(f"{mark} {version}  sha256 {record.sha256[:12]}  {record.origin} {when}{grant}")
    return "\n".join(lines)


def _load(store: ModelStore, version: str, namespace: str, timeout_s: float) -> tuple[bool, str]:
    """inference/load_model of the store's copy on the running cell (rclpy imported only here)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    from qc_interfaces.srv import LoadModel

    service = "/" + "/".join(p for p in (*namespace.strip("/").split("/"), "inference", "load_model") if p)
    context = Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("qc_model_tool", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        client = node.create_client(LoadModel, service)
        if not client.wait_for_service(timeout_sec=min(10.0, timeout_s)):
            return False, f"{service} not available: is the cell running (namespace {namespace or '/'})?"
        future = client.call_async(LoadModel.Request(path=str(store.path(version)), version=version))
        executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        if not future.done():
            return False, f"{service} did not answer within {timeout_s:g} s"
        response = future.result()
        return response.success, response.message
    finally:
        context.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qc_cell.tools.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("list", "install", "pin"))
    parser.add_argument("target", nargs="?", default="", help="install: package directory; pin: version")
    parser.add_argument("--store", required=True, help="the cell's model store (inference.model_store_dir)")
    parser.add_argument("--note", default="", help="pin: why (kept in the store's record)")
    parser.add_argument("--load", action="store_true", help="ask the running inference node to load it now")
    parser.add_argument("--namespace", default=os.environ.get("ROS_NAMESPACE", ""), help="the cell's namespace")
    parser.add_argument("--timeout", type=float, default=120.0, help="--load: answer timeout (s)")
    args = parser.parse_args(argv)
    if args.command != "list" and not args.target:
        parser.error(f"{args.command} needs a {'package directory' if args.command == 'install' else 'version'}")
    try:
        store = ModelStore(Path(args.store))
        if args.command == "list":
            print(_list(store))
            return 0
        if args.command == "install":
            manifest = Manifest.load(Path(args.target))
            installed = store.install(Path(args.target), manifest, ORIGIN_OPERATOR, str(Path(args.target).resolve()))
            version = manifest.version
            print(f"installed {version} at {installed}")
        else:
            version = args.target
            store.authorise_rollback(version, ORIGIN_OPERATOR, args.note or "operator pin")
            print(f"pinned {version}: inference/load_model may activate it once")
    except (StoreError, ManifestError, OSError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return REFUSED
    if args.load:
        ok, message = _load(store, version, args.namespace, args.timeout)
        print(("loaded: " if ok else "load refused: ") + message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else REFUSED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
