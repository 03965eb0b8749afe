"""`qc_cloud keys`: Ed25519 key pairs for signing model updates, and their key ids.

`keys generate` writes the private key encrypted with a passphrase (PKCS#8, best available encryption),
file mode 0600; the passphrase comes from --passphrase-file or $QC_SIGNING_KEY_PASSPHRASE, never from the
command line. The public key goes to every cell (cloud_bridge parameter update_public_keys); keep several
configured during a rotation. `keys id` prints the key id of public keys, for the cells' revocation list
(cloud_bridge parameter update_revoked_keys_file), which the cells re-read when it changes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qc_contract.update_manifest import PASSPHRASE_ENV, KeyFileError, key_id, load_passphrase, load_public_key


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="model-signing keys", description=__doc__)
    sub = p.add_subparsers(dest="keys_command", required=True)
    g = sub.add_parser("generate", help="generate an Ed25519 key pair: <name>.key (private) and <name>.pub")
    g.add_argument("--out", type=Path, required=True, help="folder for the two PEM files")
    g.add_argument("--name", default="model-signing", help="file name stem (default: model-signing)")
    g.add_argument("--force", action="store_true", help="overwrite existing key files")
    add_passphrase_argument(g)
    g.add_argument(
        "--unencrypted", action="store_true", help="write the private key without a passphrase (tests, HSM import)"
    )
    g.set_defaults(func=generate)
    i = sub.add_parser("id", help="print the key id of public key files (for update_revoked_keys_file)")
    i.add_argument("public_keys", type=Path, nargs="+", help="public key PEM files")
    i.set_defaults(func=show_ids)


def add_passphrase_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        help=f"file whose first line is the private key's passphrase (default: ${PASSPHRASE_ENV})",
    )


def generate(args: argparse.Namespace) -> int:
    private_path, public_path = args.out / f"{args.name}.key", args.out / f"{args.name}.pub"
    if not args.force and (private_path.exists() or public_path.exists()):
        print(f"error: {private_path} or {public_path} exists (use --force to overwrite)")
        return 2
    try:
        passphrase = None if args.unencrypted else load_passphrase(args.passphrase_file)
    except KeyFileError as exc:
        print(f"error: {exc}")
        return 2
    if passphrase is None and not args.unencrypted:
        print(f"error: give a passphrase in --passphrase-file or ${PASSPHRASE_ENV} (or --unencrypted)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    # Created with 0600 from the start: the private key is never world-readable, not even briefly.
    private_path.unlink(missing_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    state = "encrypted" if passphrase else "NOT encrypted"
    print(f"private key: {private_path} ({state}; keep secret; signs model updates)")
    print(f"public key:  {public_path} (install on each cell: cloud_bridge.update_public_keys)")
    print(f"key id:      {key_id(key.public_key())}")
    return 0


def show_ids(args: argparse.Namespace) -> int:
    try:
        for path in args.public_keys:
            print(f"{key_id(load_public_key(path))}  {path}")
    except KeyFileError as exc:
        print(f"error: {exc}")
        return 2
    return 0
