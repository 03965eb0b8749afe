"""Self-check of a QC cell image: the Python stack the cell needs, as the image must provide it.

    python3 /opt/qc/bin/check_image.py                  # x86 image (run at build time)
    python3 /opt/qc/bin/check_image.py --jetson         # Jetson image (run at build time, no GPU there)
    python3 /opt/qc/bin/check_image.py --jetson --gpu   # on the Jetson: docker run --runtime nvidia ...

Prints one line per check and exits 1 when any fails, so a build stops at the layer that broke instead of
a node failing on the line. The rules it enforces:
- OpenCV is the distribution's (python3-opencv, built with GStreamer for V4L2 and the CSI pipeline), not a
  pip wheel: the wheels have no GStreamer and need NumPy 2.
- NumPy stays 1.x, the ABI the apt-built ROS 2 message support and cv_bridge were compiled against.
- The cloud side's torch is never in an edge image.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable

EDGE_MODULES = ("onnxruntime", "paho.mqtt.client", "pymodbus", "cryptography", "yaml", "jsonschema")
ROS_MODULES = ("rclpy", "qc_interfaces.msg", "qc_contract.records", "qc_cell.healthcheck", "qc_cell.cell_graph")
JETSON_MODULES = ("tensorrt", "pycuda", "Jetson.GPIO")  # located only: importing needs the GPU / the board
OPENCV_WHEELS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def check_numpy() -> str:
    import numpy

    major = int(numpy.__version__.split(".")[0])
    if major >= 2:
        raise RuntimeError(f"numpy {numpy.__version__}: the apt-built ROS 2 and OpenCV need NumPy 1.x")
    return numpy.__version__


def check_opencv() -> str:
    import cv2

    wheels = [name for name in OPENCV_WHEELS if _installed(name)]
    if wheels:
        raise RuntimeError(f"pip OpenCV wheel(s) {wheels} installed; the image must use python3-opencv (apt)")
    if not re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()):
        raise RuntimeError(f"OpenCV {cv2.__version__} was built without GStreamer (no CSI/V4L2 pipelines)")
    return f"{cv2.__version__} with GStreamer ({cv2.__file__})"


def check_no_torch() -> str:
    if importlib.util.find_spec("torch") is not None:
        raise RuntimeError("torch is installed: the cloud tools' dependencies must not reach an edge image")
    return "absent"


def importer(name: str) -> Callable[[], str]:
    def check() -> str:
        module = importlib.import_module(name)
        return getattr(module, "__file__", None) or "ok"

    return check


def locator(name: str) -> Callable[[], str]:
    def check() -> str:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # the parent package is missing
            spec = None
        if spec is None:
            raise RuntimeError(f"{name} is not installed")
        return spec.origin or "namespace package"

    return check


def check_gpu() -> str:
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    device = cuda.Device(0)
    trt.Builder(trt.Logger(trt.Logger.WARNING))  # loads the TensorRT runtime against the driver
    return f"{device.name()}, compute {device.compute_capability()}, TensorRT {trt.__version__}"


def checks(jetson: bool, gpu: bool, ros: bool) -> list[tuple[str, Callable[[], str]]]:
    result = [("numpy", check_numpy), ("opencv", check_opencv), ("no torch", check_no_torch)]
    result += [(name, importer(name)) for name in EDGE_MODULES]
    if ros:
        result += [(name, importer(name)) for name in ROS_MODULES]
    if jetson:
        result += [(name, locator(name)) for name in JETSON_MODULES]
    if gpu:
        result.append(("cuda + tensorrt", check_gpu))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jetson", action="store_true", help="also require TensorRT, pycuda and Jetson.GPIO")
    parser.add_argument("--gpu", action="store_true", help="also initialise CUDA and TensorRT (needs the GPU)")
    parser.add_argument("--no-ros", action="store_true", help="skip rclpy and the workspace (not sourced)")
    args = parser.parse_args(argv)
    failures = 0
    for name, check in checks(args.jetson, args.gpu, not args.no_ros):
        try:
            print(f"ok    {name}: {check()}")
        except Exception as exc:  # every failure is reported, then the exit code says it
            failures += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}")
    print(f"check_image: {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
