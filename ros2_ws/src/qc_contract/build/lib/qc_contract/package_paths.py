"""Every path a model package names stays inside the package: its model_file, and the external-data files
the ONNX model refers to (ONNX Runtime opens those relative to the model, and follows '../' and absolute
paths). Checked on the extracted package before ONNX Runtime ever sees the file.

The ONNX file is read as raw protobuf (no `onnx` package on the edge): only the fields that can hold
tensors are walked (graph initializers, node attributes, subgraphs, functions, training info), and every
`external_data` entry with key `location` is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from qc_contract.inbound import InboundError

MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies); deeper is refused, not skipped

# message -> {field number: message type} for the fields that lead to a TensorProto.
_MODEL, _GRAPH, _NODE, _ATTR, _FUNC, _TRAIN, _SPARSE, _TENSOR, _ENTRY = (
    "model",
    "graph",
    "node",
    "attribute",
    "function",
    "training",
    "sparse",
    "tensor",
    "entry",
)
_CHILDREN: dict[str, dict[int, str]] = {
    _MODEL: {7: _GRAPH, 20: _TRAIN, 25: _FUNC},
    _TRAIN: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _FUNC: {7: _NODE, 11: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _ENTRY},
}


def confined(package_dir: Path, relative: str, what: str) -> Path:
    """package_dir / relative, refused unless it is a relative path that resolves inside package_dir."""
    path = Path(relative)
    if not relative or path.is_absolute() or ".." in path.parts or "\\" in relative:
        raise InboundError("bad_package", f"{what} {relative!r} is not a plain path inside the package")
    root = package_dir.resolve()
    target = (package_dir / path).resolve()
    if target != root and root not in target.parents:
        raise InboundError("bad_package", f"{what} {relative!r} leads outside the package")
    return target


def check_package_paths(package_dir: Path, model_file: str) -> None:
    """Raise InboundError(bad_package) unless model_file and every ONNX external-data location are inside
    package_dir (and the external-data files exist as regular files there)."""
    model = confined(package_dir, model_file, "model_file")
    if not model.is_file():
        raise InboundError("bad_package", f"model_file {model_file!r} is not a regular file in the package")
    data = model.read_bytes()
    for location in external_data_locations(data):
        target = confined(model.parent, location, "ONNX external data")
        if target.is_symlink() or not target.is_file():
            raise InboundError("bad_package", f"ONNX external data {location!r} is not a file in the package")


def external_data_locations(model: bytes) -> list[str]:
    """The `location` of every external-data entry of an ONNX ModelProto (raw protobuf bytes)."""
    try:
        return list(_locations(model, _MODEL, 0))
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise InboundError("bad_package", f"the ONNX model cannot be parsed: {exc}") from None


def _locations(buf: bytes, kind: str, depth: int) -> Iterator[str]:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if kind == _ENTRY:
        fields = dict(_fields(buf))
        if fields.get(1) == b"location":
            yield fields.get(2, b"").decode("utf-8")
        return
    children = _CHILDREN[kind]
    for number, value in _fields(buf):
        child = children.get(number)
        if child is not None and isinstance(value, bytes):
            yield from _locations(value, child, depth + 1)


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, bytes of a length-delimited field | integer) for each field of one message."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("truncated field")
            yield number, buf[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("truncated message")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
