"""`qc_cloud users add/passwd/list/role/disable/enable`: dashboard accounts (the password is read from the
terminal, or from --password-file / QC_DASHBOARD_PASSWORD: never from the command line)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("users", help="dashboard users: add, passwd, list, role, disable, enable")
    p.add_argument("action", choices=("add", "passwd", "list", "role", "disable", "enable"))
    p.add_argument("username", nargs="?")
    p.add_argument("--role", choices=("viewer", "operator", "engineer", "admin"), help="for add and role")
    p.add_argument("--password-file", type=Path, help="read the password from this file (first line)")
    p.add_argument("--config", default=os.environ.get("QC_FLEET_SETTINGS_FILE"))
    p.add_argument("--data-dir")
    p.add_argument("--database-url-file")
    p.set_defaults(func=main)


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return args.password_file.read_text().split("\n", 1)[0]
    if os.environ.get("QC_DASHBOARD_PASSWORD"):
        return os.environ["QC_DASHBOARD_PASSWORD"]
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def main(args: argparse.Namespace) -> int:
    from qc_cloud.dashboard import accounts
    from qc_cloud.fleet import db
    from qc_cloud.fleet import settings as settings_module

    try:
        settings = settings_module.load(args.config, data_dir=args.data_dir, database_url_file=args.database_url_file)
        engine = db.make_engine(settings.resolved_database_url())
        db.upgrade(engine)
        if args.action == "list":
            with engine.connect() as conn:
                for u in accounts.list_users(conn):
                    state = " (disabled)" if u["disabled"] else ""
                    print(f"{u['username']}\t{u['role']}\t{u['created_at']:%Y-%m-%d %H:%M}{state}")
            return 0
        if not args.username:
            raise ValueError(f"users {args.action} needs a user name")
        if args.action == "add":
            if not args.role:
                raise ValueError("users add needs --role")
            password = _password(args)
            with engine.begin() as conn:
                accounts.add_user(conn, args.username, password, args.role)
            print(f"added {args.username} ({args.role})")
        elif args.action == "passwd":
            password = _password(args)
            with engine.begin() as conn:
                accounts.set_password(conn, args.username, password)
            print(f"password of {args.username} changed; its sessions are closed")
        elif args.action == "role":
            if not args.role:
                raise ValueError("users role needs --role")
            with engine.begin() as conn:
                accounts.set_role(conn, args.username, role=args.role)
            print(f"{args.username} is now {args.role}")
        else:
            with engine.begin() as conn:
                accounts.set_role(conn, args.username, disabled=args.action == "disable")
            print(f"{args.username} {args.action}d")
        return 0
    except (settings_module.SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
