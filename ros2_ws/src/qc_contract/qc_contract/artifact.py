"""Model update artifacts: a model package directory packed as a gzipped tar. Packing (cloud), fetching
into a temporary file (file://, http(s)://, or chunks over MQTT) and safe extraction (edge).

Nothing here makes a package active: the updater verifies size and hash of the fetched file, extracts it
into a staging directory and renames that into place only when everything checked out.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import ssl
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

from qc_contract.inbound import InboundError

READ_BLOCK = 1 << 16
MAX_MEMBERS = 10_000


def pack(package_dir: Path, out_path: Path) -> tuple[int, str]:
    """Deterministic tar.gz of a package directory (files at the archive root); returns (size, sha256)."""
    package_dir = Path(package_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(out_path, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,  # no name, no time: reproducible
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path in sorted(package_dir.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise ValueError(f"{path}: only regular files and directories can be packed")
            info = tar.gettarinfo(str(path), arcname=path.relative_to(package_dir).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return out_path.stat().st_size, sha256_of(out_path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, expected_size: int, timeout_s: float, ca_file: str = "") -> tuple[int, str]:
    """Copy the artifact at url into dest, reading at most expected_size + 1 bytes (so an oversized
    artifact is detected without reading it all). Returns (bytes read, sha256 of them)."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise InboundError("fetch_failed", f"file URL with a host is not supported: {url}")
            source = open(unquote(parts.path), "rb")  # noqa: SIM115 (closed below)
        elif parts.scheme in ("http", "https"):
            context = ssl.create_default_context(cafile=ca_file or None) if parts.scheme == "https" else None
            source = urllib.request.urlopen(url, timeout=timeout_s, context=context)  # scheme checked above
        else:
            raise InboundError("fetch_failed", f"unsupported artifact URL scheme {parts.scheme!r}")
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise InboundError("fetch_failed", f"cannot open {url}: {exc}") from None
    digest, size = hashlib.sha256(), 0
    try:
        with source, open(dest, "wb") as out:
            while size <= expected_size:
                block = source.read(min(READ_BLOCK, expected_size + 1 - size))
                if not block:
                    break
                digest.update(block)
                out.write(block)
                size += len(block)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, urllib.error.URLError, ValueError) as exc:  # includes http.client.IncompleteRead
        raise InboundError("fetch_failed", f"download of {url} failed after {size} bytes: {exc}") from None
    return size, digest.hexdigest()


class ChunkAssembler:
    """Artifact chunks over MQTT (model/chunk/<version>/<index>) written into a temporary file."""

    def __init__(self, version: str, count: int, chunk_size: int, size: int, dest: Path) -> None:
        if count != -(-size // chunk_size):
            raise InboundError("schema_violation", f"{count} chunks of {chunk_size} bytes cannot hold {size} bytes")
        self.version, self.count, self.chunk_size, self.size, self.dest = version, count, chunk_size, size, dest
        self.received: set[int] = set()
        with open(dest, "wb") as f:
            f.truncate(size)

    def add(self, index: int, data: bytes) -> None:
        if not 0 <= index < self.count:
            raise InboundError("bad_chunk", f"chunk index {index} outside 0..{self.count - 1}")
        expected = self.chunk_size if index < self.count - 1 else self.size - self.chunk_size * (self.count - 1)
        if len(data) != expected:
            raise InboundError("bad_chunk", f"chunk {index} is {len(data)} bytes, expected {expected}")
        if index in self.received:
            return  # a QoS 1 duplicate
        with open(self.dest, "r+b") as f:
            f.seek(index * self.chunk_size)
            f.write(data)
        self.received.add(index)

    @property
    def complete(self) -> bool:
        return len(self.received) == self.count


def extract(archive: Path, dest: Path, max_total_bytes: int) -> None:
    """Extract into dest (created), refusing anything but regular files and directories inside dest,
    and bounding the total extracted size (a decompression bomb cannot fill the disk)."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise InboundError("bad_package", f"archive has {len(members)} members (limit {MAX_MEMBERS})")
            total = 0
            for member in members:
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or member.name.startswith("/"):
                    raise InboundError("bad_package", f"archive member {member.name!r} escapes the package")
                if not (member.isfile() or member.isdir()):
                    raise InboundError("bad_package", f"archive member {member.name!r} is not a file or directory")
                total += member.size
                if total > max_total_bytes:
                    raise InboundError("bad_package", f"archive expands beyond {max_total_bytes} bytes")
            dest.mkdir(parents=True)
            for member in members:
                target = dest / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise InboundError("bad_package", f"cannot read {member.name!r}")
                with source, open(target, "wb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)
    except (tarfile.TarError, OSError, EOFError, io.UnsupportedOperation) as exc:
        raise InboundError("bad_package", f"cannot extract the artifact: {exc}") from None
