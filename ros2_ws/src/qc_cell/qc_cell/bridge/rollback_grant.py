"""The updater's side of a signed rollback: record the verified rollback manifest in the model store, where
inference finds it before it agrees to load an older version.

    <model_store_dir>/rollback_grants/<version>.json   the signed update manifest, as received

The file is the signed manifest itself, not a flag: inference re-verifies its signature with the same trusted
keys and checks that its `rollback_from` is the version it is serving and that `version` / the model sha256
are what load_model is asked for. Writing the file therefore grants nothing that the signing key did not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qc_cell.bridge.model_updater import RollbackGrant

GRANTS_DIR = "rollback_grants"


def grant_path(store_dir: Path, version: str) -> Path:
    return Path(store_dir).expanduser() / GRANTS_DIR / f"{version}.json"


def write_rollback_grant(store_dir: Path, grant: RollbackGrant) -> Path:
    """Atomically write the grant (temp file, fsync, rename); raises OSError when the store is not writable."""
    path = grant_path(store_dir, grant.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    with open(temp, "w") as f:
        json.dump(dict(grant.manifest), f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return path
