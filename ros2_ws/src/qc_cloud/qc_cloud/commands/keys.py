"""`qc_cloud keys generate`: an Ed25519 key pair for signing model updates.

The private key stays with the cloud tools (file mode 0600); the public key goes to every cell
(cloud_bridge parameter update_public_keys). Keep several public keys configured during a rotation.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qc_contract.update_manifest import key_id


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="model-signing keys", description=__doc__)
    sub = p.add_subparsers(dest="keys_command", required=True)
    g = sub.add_parser("generate", help="generate an Ed25519 key pair: <name>.key (private) and <name>.pub")
    g.add_argument("--out", type=Path, required=True, help="folder for the two PEM files")
    g.add_argument("--name", default="model-signing", help="file name stem (default: model-signing)")
    g.add_argument("--force", action="store_true", help="overwrite existing key files")
    g.set_defaults(func=generate)


def generate(args: argparse.Namespace) -> int:
    private_path, public_path = args.out / f"{args.name}.key", args.out / f"{args.name}.pub"
    if not args.force and (private_path.exists() or public_path.exists()):
        print(f"error: {private_path} or {public_path} exists (use --force to overwrite)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created with 0600 from the start: the private key is never world-readable, not even briefly.
    private_path.unlink(missing_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    print(f"private key: {private_path} (keep secret; signs model updates)")
    print(f"public key:  {public_path} (install on each cell: cloud_bridge.update_public_keys)")
    print(f"key id:      {key_id(key.public_key())}")
    return 0
