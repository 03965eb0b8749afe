"""Rewrite build-machine paths baked into the PyPI ROS 2 wheels' CMake files.

The message packages' exported targets name /opt/python/cpXY-cpXY/include/pythonX.Y and that
interpreter's numpy include dir. colcon builds of interface packages fail on those paths
("includes non-existent path"), so point them at this interpreter's real directories.
Idempotent: a second run finds nothing to rewrite.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

_PY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
_NUMPY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")


def fix(prefix: Path) -> list[Path]:
    """Rewrite every *.cmake under prefix/share; return the files changed."""
    py_include = sysconfig.get_paths()["include"]
    np_include = numpy.get_include()
    changed = []
    for path in sorted((prefix / "share").rglob("*.cmake")):
        text = path.read_text(errors="surrogateescape")
        new = _NUMPY_INCLUDE.sub(np_include, _PY_INCLUDE.sub(py_include, text))
        if new != text:
            path.write_text(new, errors="surrogateescape")
            changed.append(path)
    return changed


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix)
    files = fix(target)
    print(f"fix_ros_cmake_paths: rewrote {len(files)} file(s) under {target / 'share'}")
