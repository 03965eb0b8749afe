"""Content-addressed image files, outside the database: <root>/<sha[:2]>/<sha>.jpg, written atomically (a
redelivered sample rewrites nothing), read back by hash. Retention (db.apply_retention) deletes a file once no
row references it any more; put() refreshes an existing file's mtime so that a file a new record is about to
reference is never taken by a retention pass running at the same time (discard() spares recent files). A daily
sweep (db.apply_retention(sweep_files=True)) offers every file on disk, so a file that was spared, or orphaned by
a crash between a row's delete and its file's (or before a batch's commit), is taken later."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{64}$")


class SampleStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / f"{sha256}.jpg"

    def put(self, sha256: str, data: bytes) -> Path:
        target = self.path(sha256)
        if target.exists():
            try:
                os.utime(target)  # "in use again": retention spares files touched within its grace period
                return target
            except FileNotFoundError:  # deleted by retention just now: write it again
                pass
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except (OSError, ValueError):
            return None

    def digests(self) -> set[str]:
        """The SHA-256 digests of every image file on disk."""
        return {f.stem for f in self.root.glob("??/*.jpg") if _SHA.match(f.stem)}

    def remove_stale_temporaries(self, grace_s: float = 3600.0) -> int:
        """Delete partial files left by a writer that died mid-write (older than grace_s). Returns how many."""
        removed = 0
        for tmp in self.root.glob("??/.tmp-*"):
            try:
                if time.time() - tmp.stat().st_mtime >= grace_s:
                    tmp.unlink()
                    removed += 1
            except OSError:  # a writer finished (renamed it) or another pass took it
                continue
        return removed

    def discard(self, sha256: str, grace_s: float = 3600.0) -> bool:
        """Delete the file of an image no row references any more, unless it was written or touched within the
        last grace_s seconds (an ingest batch may be about to commit a row that references it). True: deleted."""
        try:
            target = self.path(sha256)
            if time.time() - target.stat().st_mtime < grace_s:
                return False
            target.unlink()
        except (OSError, ValueError):
            return False
        return True  # the <sha[:2]> directory stays (at most 256; put() may be writing into it right now)
