"""`zvonok-agi users …`: the people who sign in to the numbers page.

A password is asked twice on a terminal, else read from the first line of standard input (so a
script can pipe it in); it never goes on the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..numbers.commands import actor, store_failure
from ..numbers.rules import Refused
from ..numbers.store import Store, StoreError
from .users import Users

USERS_FILE_FIELDS = {"login", "account", "staff", "name", "password_hash"}


def register(subparsers: argparse._SubParsersAction) -> None:
    users = subparsers.add_parser("users", help="people who sign in to the numbers page")
    commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    cmd = commands.add_parser("list", help="users (of one account)")
    cmd.add_argument("--account")
    cmd.set_defaults(run=_list)
    cmd = commands.add_parser("add", help="a customer of an account, or one of the staff")
    cmd.add_argument("login")
    who = cmd.add_mutually_exclusive_group(required=True)
    who.add_argument("--account", help="the customer's account: they see only its numbers")
    who.add_argument(
        "--staff", action="store_true", help="every account, verification, closing requests"
    )
    cmd.add_argument("--name", default="", help="the person's name")
    cmd.set_defaults(run=_add)
    cmd = commands.add_parser("passwd", help="a new password (every session of the user ends)")
    cmd.add_argument("login")
    cmd.set_defaults(run=_passwd)
    cmd = commands.add_parser("remove", help="remove a user (their sessions end)")
    cmd.add_argument("login")
    cmd.set_defaults(run=_remove)
    cmd = commands.add_parser(
        "load",
        help="add or update the users of a TOML file ([[users]] with login, account or "
        "staff = true, name, password_hash: an argon2 hash)",
    )
    cmd.add_argument("file")
    cmd.set_defaults(run=_load)


@contextlib.asynccontextmanager
async def _users(settings: Any) -> AsyncIterator[Users]:
    from ..cli import CommandError

    try:
        async with await Store.open(settings.store_url) as store:
            yield Users.configured(settings, store)
    except Refused as exc:
        raise CommandError(f"{exc.code}: {exc.message}") from exc
    except StoreError as exc:
        raise store_failure(settings.store_url, exc) from exc


def _new_password(login: str) -> str:
    from ..cli import CommandError

    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass(f"password for {login}: ")
    if getpass.getpass("again: ") != password:
        raise CommandError("the two passwords differ: nothing changed")
    return password


async def _list(settings: Any, args: argparse.Namespace) -> int:
    async with _users(settings) as users:
        found = await users.users(args.account)
    for user in found:
        print(
            f"{user.login:24} {user.role.value:9} {user.account or '(every account)':20} "
            f"{user.name}".rstrip()
        )
    if not found:
        print("(none)")
    return 0


async def _add(settings: Any, args: argparse.Namespace) -> int:
    password = _new_password(args.login)
    async with _users(settings) as users:
        user = await users.add(actor(), args.login, password, account=args.account, name=args.name)
    print(f"user {user.login} added ({user.account or 'staff'})")
    return 0


async def _passwd(settings: Any, args: argparse.Namespace) -> int:
    password = _new_password(args.login)
    async with _users(settings) as users:
        user = await users.set_password(actor(), args.login, password)
    print(f"user {user.login}: new password; every session of theirs has ended")
    return 0


async def _remove(settings: Any, args: argparse.Namespace) -> int:
    async with _users(settings) as users:
        user = await users.remove(actor(), args.login)
    print(f"user {user.login} removed")
    return 0


async def _load(settings: Any, args: argparse.Namespace) -> int:
    from ..cli import CommandError

    try:
        entries = tomllib.loads(Path(args.file).read_text("utf-8")).get("users", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from exc
    for i, entry in enumerate(entries):
        unknown = set(entry) - USERS_FILE_FIELDS if isinstance(entry, dict) else {"?"}
        if (
            unknown
            or not isinstance(entry.get("password_hash"), str)
            or ("account" in entry) == bool(entry.get("staff"))
        ):
            raise CommandError(
                f"{args.file}: users[{i}]: give login, password_hash, and "
                "account or staff = true (nothing else)"
            )
    async with _users(settings) as users:
        for entry in entries:
            await users.put_hashed(
                actor(),
                entry.get("login"),
                entry["password_hash"],
                account=entry.get("account"),
                name=entry.get("name", ""),
            )
    print(f"loaded {len(entries)} users")
    return 0
