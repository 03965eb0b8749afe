"""The engine cache's name for a model package on this device, and storing an engine built elsewhere under it.

    python -m qc_cell.inference.backends.engine_name PACKAGE_DIR --precision fp16 --max-batch 4
    python -m qc_cell.inference.backends.engine_name PACKAGE_DIR --precision fp16 --max-batch 4 \\
        --store ENGINE_FILE --cache-dir /var/lib/qc/engine_cache

qc_cloud's build_trt_engine.sh calls it, so that an engine built with trtexec lands in the inference node's cache
under the very name the node looks up (engine_cache.engine_key: the node's own naming function, with this
device's TensorRT version and GPU). INT8 is not offered: its engines depend on the calibration images, which
the node calibrates on itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qc_cell.inference.backends.base import BackendError
from qc_cell.inference.backends.engine_cache import KEY_FILE_NAME, EngineCache, engine_key, load_or_create_key
from qc_contract.model_manifest import Manifest, ManifestError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine_name", description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path, help="model package directory (manifest.json + model)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), required=True)
    parser.add_argument("--max-batch", type=int, required=True, help="the node's inference.max_batch")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--store", type=Path, help="an engine file to store in the cache under that name")
    parser.add_argument("--cache-dir", type=Path, help="the node's inference.engine_cache_dir (with --store)")
    parser.add_argument(
        "--key-file",
        type=Path,
        help=f"the node's inference.engine_key_file (with --store; default CACHE_DIR/{KEY_FILE_NAME})",
    )
    args = parser.parse_args(argv)
    if args.store and not args.cache_dir:
        parser.error("--store needs --cache-dir")
    try:
        import tensorrt as trt

        from qc_cell.inference.backends.tensorrt_backend import CudaContext

        manifest = Manifest.load(args.package)
        device = CudaContext.for_device(args.device)
        key = engine_key(
            manifest,
            args.precision,
            args.max_batch,
            tensorrt_version=trt.__version__,
            gpu_name=device.gpu_name,
            compute_capability=device.compute_capability,
        )
    except (ImportError, BackendError, ManifestError) as exc:
        print(f"engine_name: {exc}", file=sys.stderr)
        return 1
    if args.store:
        # Stored with the digest the node checks before deserialising: made with the cell's engine key.
        secret = load_or_create_key(args.key_file or args.cache_dir / KEY_FILE_NAME)
        print(EngineCache(args.cache_dir, secret).store(key, args.store.read_bytes()))
    else:
        print(key.file_name())
    return 0


if __name__ == "__main__":
    sys.exit(main())
