"""Model update artifacts: a model package directory packed as a gzipped tar. Packing (cloud), fetching
into a temporary file (https://; http:// and file:// only where enabled; or chunks over MQTT), safe
extraction, and the check that every path a package names stays inside it (edge).

Nothing here makes a package active: the updater verifies size and hash of the fetched file, extracts it
into a staging directory and renames that into place only when everything checked out.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import ssl
import stat
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
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


@dataclass(frozen=True)
class FetchPolicy:
    """How an artifact may be fetched. By default only https, no proxy (environment proxy variables are
    ignored), no redirect to another scheme, and an overall deadline on the whole download."""

    schemes: frozenset[str] = frozenset({"https"})
    read_timeout_s: float = 60.0  # connect and each read
    deadline_s: float = 600.0  # the whole download, however slowly the server drips
    ca_file: str = ""  # https: CA bundle ("" = system trust store)
    proxy: str = ""  # http(s) proxy URL ("" = direct, whatever the environment says)


def redact_url(url: str) -> str:
    """A URL safe for logs and records: scheme, host and the file name only (no credentials, no query,
    no fragment, no directories that may carry a token)."""
    parts = urlsplit(url)
    name = parts.path.rstrip("/").rsplit("/", 1)[-1]
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}/.../{name}" if name else f"{parts.scheme}://{host}/"


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects stay on the scheme of the request (an https download never continues over http)."""

    max_redirections = 5

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if new != old:
            raise urllib.error.URLError(f"redirect from {old} to {new} refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open_regular_file(path: str, url: str) -> BinaryIO:
    """Open without blocking (a FIFO would block a plain open() until a writer appears), then refuse
    anything that is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InboundError("fetch_failed", f"{redact_url(url)} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open(url: str, policy: FetchPolicy) -> BinaryIO:
    parts = urlsplit(url)
    if parts.scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes)) or "none"
        raise InboundError("scheme_refused", f"artifact URL scheme {parts.scheme!r} is not enabled ({allowed})")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InboundError("fetch_failed", f"file URL with a host is not supported: {redact_url(url)}")
        return _open_regular_file(unquote(parts.path), url)
    if parts.scheme not in ("http", "https"):
        raise InboundError("scheme_refused", f"unsupported artifact URL scheme {parts.scheme!r}")
    proxies = {"http": policy.proxy, "https": policy.proxy} if policy.proxy else {}
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler(proxies), _SameSchemeRedirects()]
    if parts.scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=policy.ca_file or None)))
    opener = urllib.request.build_opener(*handlers)
    return opener.open(url, timeout=min(policy.read_timeout_s, policy.deadline_s))


def fetch(url: str, dest: Path, expected_size: int, policy: FetchPolicy) -> tuple[int, str]:
    """Copy the artifact at url into dest, reading at most expected_size + 1 bytes (so an oversized
    artifact is detected without reading it all), within policy.deadline_s. Returns (bytes read, sha256)."""
    start = time.monotonic()
    shown = redact_url(url)
    try:
        source = _open(url, policy)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise InboundError("fetch_failed", f"cannot open {shown}: {_reason(exc)}") from None
    digest, size = hashlib.sha256(), 0
    read = getattr(source, "read1", source.read)  # read1: whatever arrived, so a drip cannot stall a read
    try:
        with source, open(dest, "wb") as out:
            while size <= expected_size:
                if time.monotonic() - start > policy.deadline_s:
                    raise InboundError(
                        "fetch_timeout", f"download of {shown} exceeded {policy.deadline_s:g} s after {size} bytes"
                    )
                block = read(min(READ_BLOCK, expected_size + 1 - size))
                if not block:
                    break
                digest.update(block)
                out.write(block)
                size += len(block)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, urllib.error.URLError, ValueError) as exc:  # includes http.client.IncompleteRead
        raise InboundError("fetch_failed", f"download of {shown} failed after {size} bytes: {_reason(exc)}") from None
    return size, digest.hexdigest()


def _reason(exc: BaseException) -> str:
    """The error without the URL (urllib and OSError messages may repeat it, with its query string)."""
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return type(exc).__name__ + ": " + str(reason).split("?", 1)[0][:200]


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
    bounding the member count while the headers are read (a million tiny members are refused at the
    first one over the limit) and the total extracted size (a decompression bomb cannot fill the disk)."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members, total = [], 0
            for member in tar:  # headers are read one at a time: the checks run before the next is read
                if len(members) >= MAX_MEMBERS:
                    raise InboundError("bad_package", f"archive has more than {MAX_MEMBERS} members")
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or member.name.startswith("/"):
                    raise InboundError("bad_package", f"archive member {member.name!r} escapes the package")
                if not (member.isfile() or member.isdir()):
                    raise InboundError("bad_package", f"archive member {member.name!r} is not a file or directory")
                total += member.size
                if total > max_total_bytes:
                    raise InboundError("bad_package", f"archive expands beyond {max_total_bytes} bytes")
                members.append(member)
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
