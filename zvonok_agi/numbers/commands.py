"""The control plane's commands for ops: `zvonok-agi numbers|accounts|campaigns|requests|audit|
sync|admin`, over the same service layer as the admin API.

`register(subparsers)` adds them to the `zvonok-agi` parser; each sets `run(settings, args)`.
Read-only commands open only the store; changes also open Redis, to publish them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..access.users import Users
from ..routing import scenario as scenarios
from ..routing.model import Pool
from . import databases, documents, rules
from .databases import describe
from .rules import Refused
from .service import KEEP, NumbersService
from .store import Store, StoreBusy, StoreError


def register(subparsers: argparse._SubParsersAction) -> None:
    numbers = _group(subparsers, "numbers", "subscriber numbers: the view, stock, reservation")
    cmd = _command(numbers, "list", "the numbers view (an account's, or every number)", _list)
    cmd.add_argument("--account", help="as this account's page shows them")
    cmd.add_argument("--disabled", action="store_true", help="the disabled tab")
    cmd.add_argument("--search", default="", help="any part of the digits")
    _json_flag(cmd)
    cmd = _command(numbers, "search", "numbers whose digits contain QUERY", _list)
    cmd.add_argument("search", metavar="QUERY")
    cmd.add_argument("--account")
    cmd.add_argument("--disabled", action="store_true")
    _json_flag(cmd)
    cmd = _command(numbers, "show", "one number: settings, campaigns, history", _show)
    cmd.add_argument("did")
    _json_flag(cmd)
    cmd = _command(numbers, "health", "answer rate over the window and rest, per number "
                   "(the service pool; docs/routing.md, Number health)", _health)
    cmd.add_argument("did", nargs="*", help="these numbers (default: the active service pool)")
    _json_flag(cmd)
    cmd = _command(numbers, "add", "add a number to the stock or the service pool", _add)
    cmd.add_argument("did")
    cmd.add_argument("--service", action="store_true", help="into the shared service pool")
    cmd.add_argument("--kind", choices=["mobile", "landline"], help="default: numbering plan")
    cmd.add_argument("--region", help="default: from the numbering plan")
    cmd.add_argument("--disabled", action="store_true")
    cmd = _command(numbers, "regions", "regions with their count of available numbers",
                   _regions)
    cmd.add_argument("choice", choices=["mobile", "landline_popular", "landline"])
    cmd = _command(numbers, "offer", "an account's choice of region: its available numbers, "
                   "or a request for sales when there are none", _offer)
    cmd.add_argument("account")
    cmd.add_argument("choice", choices=["mobile", "landline_popular", "landline"])
    cmd.add_argument("region")
    cmd = _command(numbers, "reserve", "reserve a number for a verified account", _reserve)
    cmd.add_argument("account")
    cmd.add_argument("did")
    cmd = _command(numbers, "bind", "route a reserved number's inbound calls to a campaign",
                   _bind)
    cmd.add_argument("did")
    cmd.add_argument("campaign", help="an inbound campaign of the owner, or 'none'")
    _as_account(cmd)
    cmd = _command(numbers, "rule", "set a reserved number's callback rule", _rule)
    cmd.add_argument("did")
    cmd.add_argument("rule", choices=["force_yes", "as_campaign", "force_no"])
    _as_account(cmd)
    for name, what in (("disable", "routes and dials nothing; bindings kept"),
                       ("enable", "active again, bindings restored")):
        cmd = _command(numbers, name, f"{name} a number ({what})", _status)
        cmd.add_argument("did")
        _as_account(cmd)
    cmd = _command(numbers, "release", "delete a reservation: back to the stock", _release)
    cmd.add_argument("did")
    cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _as_account(cmd)

    accounts = _group(subparsers, "accounts", "customer accounts")
    _command(accounts, "list", "every account", _accounts)
    cmd = _command(accounts, "add", "a new account", _account_add)
    cmd.add_argument("id")
    cmd.add_argument("--name", default="")
    cmd.add_argument("--verified", action="store_true", help="passed identification")
    cmd = _command(accounts, "set", "change an account", _account_set)
    cmd.add_argument("id")
    cmd.add_argument("--name")
    cmd.add_argument("--verified", choices=["yes", "no"])

    campaigns = _group(subparsers, "campaigns", "outbound and inbound campaigns")
    cmd = _command(campaigns, "list", "campaigns (of one account)", _campaigns)
    cmd.add_argument("--account")
    _json_flag(cmd)
    cmd = _command(campaigns, "add", "a new campaign", _campaign_add)
    cmd.add_argument("id")
    cmd.add_argument("--name", default="", help="what people call it")
    cmd.add_argument("--account", required=True)
    cmd.add_argument("--kind", required=True, choices=["outbound", "inbound"])
    cmd.add_argument("--accept-inbound", action="store_true", help="outbound: take callbacks")
    cmd.add_argument("--state", default="running", choices=["running", "paused", "finished"])
    cmd.add_argument("--caller-id", default="pool", help="a reserved number, or 'pool'")
    cmd.add_argument("--scenario", type=_scenario_document, help=SCENARIO_HELP)
    cmd = _command(campaigns, "set", "change a campaign", _campaign_set)
    cmd.add_argument("id")
    cmd.add_argument("--name")
    cmd.add_argument("--accept-inbound", choices=["yes", "no"])
    cmd.add_argument("--state", choices=["running", "paused", "finished"])
    cmd.add_argument("--caller-id", help="a reserved number, or 'pool'")
    cmd.add_argument("--scenario", type=_scenario_document, default=KEEP,
                     help=f"{SCENARIO_HELP}; 'none': no scenario")

    requests = _group(subparsers, "requests", "requests for numbers where none were available")
    cmd = _command(requests, "list", "open requests (sales call these customers back)",
                   _requests)
    cmd.add_argument("--all", action="store_true", help="closed ones too")
    _json_flag(cmd)
    cmd = _command(requests, "close", "close a request (sales called the customer back)",
                   _request_close)
    cmd.add_argument("id", help="the request's number, as `requests list` shows it")
    cmd.add_argument("--note", help="a short note (at most 500 characters)")

    cmd = subparsers.add_parser("audit", help="the audit log, newest first")
    cmd.add_argument("--subject", help="a number, account or campaign id")
    cmd.add_argument("--limit", type=int, default=50)
    cmd.set_defaults(run=_audit)
    subparsers.add_parser(
        "sync", help="rebuild Redis's routing data from the control plane's store"
    ).set_defaults(run=_sync)
    subparsers.add_parser(
        "admin", help="run the admin HTTP API and the numbers page"
    ).set_defaults(run=_admin)

    store = _group(subparsers, "store", "the control plane's store itself")
    cmd = _command(store, "copy", "copy the whole store into another (SQLite to PostgreSQL, "
                   "or back as a backup); docs/scaling.md", _store_copy)
    cmd.add_argument("--to", required=True, metavar="URL",
                     help="the target: postgresql://..., sqlite:///path or a file's path")
    cmd.add_argument("--from", dest="source", metavar="URL",
                     help="the source (default: the configured store)")
    cmd.add_argument("--force", action="store_true",
                     help="replace what the target holds (default: refuse a target with data)")


def _group(subparsers: argparse._SubParsersAction, name: str, help: str):
    parser = subparsers.add_parser(name, help=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def _command(group, name: str, help: str, run: Callable) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help)
    parser.set_defaults(run=run)
    return parser


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def _as_account(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as", dest="as_account", metavar="ACCOUNT",
                        help="act as this account: only its own numbers")


def actor() -> str:
    """Who, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@contextlib.asynccontextmanager
async def open_service(settings: Any, *, publish: bool = True) -> AsyncIterator[NumbersService]:
    """The service on the configured store; with `publish`, on the configured Redis too. The
    store away or refusing is the command's error."""
    from ..app import open_redis
    from ..store.routing_data import RoutingData

    admin = settings.admin
    try:
        async with contextlib.AsyncExitStack() as stack:
            store = await Store.open(settings.store_url, pool_size=settings.store.pool_size)
            stack.push_async_callback(store.close)
            data = None
            if publish:
                redis = await stack.enter_async_context(open_redis(settings, supervise=False))
                data = RoutingData(redis, settings.redis.key_prefix)
            yield NumbersService(store, data, popular_cities=admin.popular_cities,
                                 max_open_requests=admin.max_open_requests,
                                 health_window=settings.health.window_hours * 3600)
    except StoreError as exc:
        raise store_failure(settings.store_url, exc) from exc


def store_failure(url: str, exc: StoreError) -> Exception:
    """The command's error for a store that refused or failed: busy, away, or else."""
    from ..cli import CommandError

    if isinstance(exc, StoreBusy):
        return CommandError(
            f"the store {describe(url)} is busy: other changes held it for "
            f"{databases.BUSY_TIMEOUT_MS / 1000:g} s; nothing was changed, try again ({exc})"
        )
    return CommandError(f"the store {describe(url)}: {exc}")


@contextlib.asynccontextmanager
async def _service(settings: Any, publish: bool = True) -> AsyncIterator[NumbersService]:
    """Refusals become the command's error message."""
    from ..cli import CommandError

    try:
        async with open_service(settings, publish=publish) as service:
            yield service
    except Refused as exc:
        raise CommandError(f"{exc.code}: {exc.message}") from exc


# numbers


async def _list(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings, publish=False) as service:
        view = await service.numbers_view(
            args.account, "disabled" if args.disabled else "active", args.search
        )
    if args.json:
        return _print_json(documents.view(view))
    reserved = ", ".join(
        f"{kind} {sum(by_status.values())}" for kind, by_status in sorted(view.reserved.items())
    )
    print(f"reserved numbers: {reserved or 'none'}")
    print(f"active {view.tabs['active']}, disabled {view.tabs['disabled']}"
          + (f" (search {view.search!r})" if view.search else ""))
    _table(
        ["number", "kind", "region", "pool", "owner", "rule", "inbound", "dialing"],
        [[r.number.did, r.number.kind, r.number.region, r.number.pool, r.number.owner or "",
          r.rule or "", r.number.inbound_campaign or "", ", ".join(r.dialing)]
         for r in view.rows],
    )
    return 0


async def _show(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings, publish=False) as service:
        details = await service.number(args.did)
    document = documents.details(details)
    if args.json:
        return _print_json(document)
    for key, value in document.items():
        if key == "reserved_at" and value is not None:
            value = _when(value)
        if key != "history":
            print(f"{key:17} {_text(value)}")
    print("history:")
    for entry in details.history:
        print(f"  {_when(entry['at'])}  {entry['actor']:12} {entry['action']:14} "
              f"{entry['outcome']:16} {entry['account'] or ''}")
    return 0


async def _health(settings: Any, args: argparse.Namespace) -> int:
    from ..cli import CommandError

    async with _service(settings) as service:
        dids = [rules.did_of(did) for did in args.did]
        if not dids:
            view = await service.numbers_view(None, "active", "")
            dids = [r.number.did for r in view.rows if r.number.pool is Pool.SERVICE]
        health = await service.health(dids)
    if health is None:
        raise CommandError("Redis is not reachable: number health is kept there")
    shown = [{"did": did, **documents.number_health(health[did])} for did in dids]
    if args.json:
        return _print_json(shown)
    _table(
        ["number", "placed", "answered", "rate", "rested until"],
        [[h["did"], h["placed"], h["answered"],
          "-" if h["rate"] is None else f"{h['rate']:.0%}",
          _when(h["rested_until"]) if h["rested_until"] else "-"] for h in shown],
    )
    return 0


async def _add(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings) as service:
        number = await service.add_number(
            actor(), args.did, "service" if args.service else "reservable", kind=args.kind,
            region=args.region, status="disabled" if args.disabled else "active",
        )
    print(f"added {number.did} ({number.kind}, {number.region}) to the {number.pool} pool")
    return 0


async def _regions(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings, publish=False) as service:
        regions = await service.regions(args.choice)
    _table(["region", "available"], [[r.region, str(r.available)] for r in regions])
    return 0


async def _offer(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings) as service:
        offer = await service.offer(actor(), args.account, args.choice, args.region)
    print(offer.message)
    for number in offer.numbers:
        print(f"  {number.did}")
    return 0


async def _reserve(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings) as service:
        number = await service.reserve(actor(), args.account, args.did)
    print(f"{number.did} is reserved by {number.owner}")
    return 0


async def _bind(settings: Any, args: argparse.Namespace) -> int:
    campaign = None if args.campaign == "none" else args.campaign
    async with _service(settings) as service:
        number = await service.bind(actor(), args.did, campaign, as_account=args.as_account)
    print(f"{number.did}: inbound calls go to {number.inbound_campaign or 'no campaign'}")
    return 0


async def _rule(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings) as service:
        number = await service.set_rule(actor(), args.did, args.rule, as_account=args.as_account)
    print(f"{number.did}: callback rule {number.callback_rule}")
    return 0


async def _status(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings) as service:
        change = service.enable if args.numbers_command == "enable" else service.disable
        number = await change(actor(), args.did, as_account=args.as_account)
    print(f"{number.did} is {number.status}")
    return 0


async def _release(settings: Any, args: argparse.Namespace) -> int:
    from ..cli import CommandError

    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("release deletes the reservation: confirm with --yes")
        answer = input(f"Release {args.did}? Its owner loses it and its bindings. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    async with _service(settings) as service:
        number = await service.release(actor(), args.did, as_account=args.as_account)
    print(f"{number.did} is released: back in the reservable stock")
    return 0


# accounts, campaigns, requests, audit


async def _accounts(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings, publish=False) as service:
        accounts = await service.accounts()
    _table(["account", "verified", "name"],
           [[a.id, "yes" if a.verified else "no", a.name] for a in accounts])
    return 0


async def _account_add(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings) as service:
        account = await service.create_account(actor(), args.id, args.name, args.verified)
    print(f"account {account.id} added ({'verified' if account.verified else 'not verified'})")
    return 0


async def _account_set(settings: Any, args: argparse.Namespace) -> int:
    verified = KEEP if args.verified is None else args.verified == "yes"
    name = KEEP if args.name is None else args.name
    async with _service(settings) as service:
        account = await service.update_account(actor(), args.id, name=name, verified=verified)
    print(f"account {account.id}: {'verified' if account.verified else 'not verified'}, "
          f"name {account.name!r}")
    return 0


async def _campaigns(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings, publish=False) as service:
        campaigns = await service.campaigns(args.account)
    if args.json:
        return _print_json([documents.campaign(c) for c in campaigns])
    _table(
        ["campaign", "account", "kind", "state", "accept_inbound", "caller_id", "name",
         "scenario"],
        [[c.id, c.account, c.kind, c.state, "yes" if c.accept_inbound else "no",
          "" if c.kind == "inbound" else c.caller_id or "pool", c.name,
          scenarios.describe(c.scenario)] for c in campaigns],
    )
    return 0


SCENARIO_HELP = (
    "what its calls do, as JSON (docs/routing.md, Scenarios), or @FILE to read it from a file: "
    '\'{"play": "promo-may", "operators": {"queue": "sales"}}\''
)


def _scenario_document(value: str) -> Any:
    """--scenario's JSON, inline or @file; 'none' is None. Its fields are the service's to
    check (the same checks as the API's)."""
    if value == "none":
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise argparse.ArgumentTypeError(f"cannot read {value[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


async def _campaign_add(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings) as service:
        campaign = await service.create_campaign(
            actor(), args.id, args.account, args.kind, accept_inbound=args.accept_inbound,
            state=args.state, caller_id=None if args.kind == "inbound" else args.caller_id,
            name=args.name, scenario=args.scenario,
        )
    print(f"campaign {campaign.id} added ({campaign.kind}, {campaign.state}); "
          f"scenario: {scenarios.describe(campaign.scenario)}")
    return 0


async def _campaign_set(settings: Any, args: argparse.Namespace) -> int:
    accept = KEEP if args.accept_inbound is None else args.accept_inbound == "yes"
    async with _service(settings) as service:
        campaign = await service.update_campaign(
            actor(), args.id, accept_inbound=accept, state=args.state or KEEP,
            caller_id=KEEP if args.caller_id is None else args.caller_id,
            name=KEEP if args.name is None else args.name,
            scenario=args.scenario,
        )
    print(f"campaign {campaign.id}: {campaign.state}, caller ID {campaign.caller_id or 'pool'}; "
          f"scenario: {scenarios.describe(campaign.scenario)}")
    return 0


async def _requests(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings, publish=False) as service:
        requests = await service.requests(None if args.all else "open")
    if args.json:
        return _print_json([documents.request(r) for r in requests])
    _table(["request", "when", "account", "topic", "kind", "region", "contact", "comment",
            "status", "closed_by", "note"],
           [[str(r.id), _when(r.at), r.account, r.topic, r.kind or "", r.region or "",
             r.contact or "", r.comment or "", r.status, r.closed_by or "", r.note or ""]
            for r in requests])
    return 0


async def _request_close(settings: Any, args: argparse.Namespace) -> int:
    # Requests are not routing data: nothing to publish, so Redis is not needed.
    async with _service(settings, publish=False) as service:
        r = await service.close_request(actor(), args.id, args.note)
    what = f"{r.kind} in {r.region}" if r.topic == "numbers" else f"support, {r.contact}"
    print(f"request #{r.id} ({r.account}, {what}) is closed" + (f": {r.note}" if r.note else ""))
    return 0


async def _audit(settings: Any, args: argparse.Namespace) -> int:
    async with _service(settings, publish=False) as service:
        entries = await service.audit_log(args.subject, args.limit)
    _table(["when", "actor", "action", "subject", "account", "outcome"],
           [[_when(e["at"]), e["actor"], e["action"], e["subject"], e["account"] or "",
             e["outcome"]] for e in entries])
    return 0


async def _sync(settings: Any, args: argparse.Namespace) -> int:
    from ..cli import bulk_settings

    async with _service(bulk_settings(settings)) as service:
        report = await service.sync(actor())
    print(f"published {report.accounts} accounts, {report.numbers} numbers, "
          f"{report.campaigns} campaigns; removed from Redis: "
          + ", ".join(f"{n} {kind}" for kind, n in report.removed.items()))
    return 0


async def _store_copy(settings: Any, args: argparse.Namespace) -> int:
    from ..cli import CommandError
    from .copying import CopyBusy, copy_store

    source = args.source or settings.store_url

    def progress(table: str, copied: int) -> None:
        if copied % 100_000 == 0:  # a line now and then on a large table
            print(f"  {table}: {copied}", file=sys.stderr)

    copying = f"copying {describe(source)} to {describe(args.to)}"
    try:
        copied = await copy_store(source, args.to, force=args.force, progress=progress)
    except CopyBusy as exc:  # worded as every command's busy store
        raise CommandError(f"{copying}: {store_failure(str(exc.store), exc)}") from exc
    except StoreError as exc:
        raise CommandError(f"{copying}: {exc} (nothing was copied)") from exc
    print(f"copied {describe(source)} to {describe(args.to)}: "
          + ", ".join(f"{n} {table}" for table, n in copied.items()))
    return 0


@contextlib.asynccontextmanager
async def admin_server(settings: Any) -> AsyncIterator[Any]:
    """The admin API and the numbers page, served while the block runs; prints where. A
    generated token is shown only on a terminal: otherwise the output is a log, which gets
    the token file's path instead."""
    from ..cli import CommandError
    from ..web.server import AdminServer
    from ..web.token import TokenFileError, stored_token

    admin = settings.admin
    token_file = Path(admin.token_file).resolve()
    try:
        token = admin.token or stored_token(token_file)
    except TokenFileError as exc:
        raise CommandError(str(exc)) from exc
    async with open_service(settings) as service, AdminServer(
        service, token=token, users=Users.configured(settings, service.store), host=admin.host,
        port=admin.port, max_body=admin.max_body, allow_remote=admin.allow_remote,
        https=admin.https, address_header=admin.address_header,
        region=settings.routing.default_region,
    ) as server:
        print(f"admin API and numbers page on {server.url}/", flush=True)
        if not admin.token and sys.stdout.isatty():
            print(f"  open {server.url}/#token={token}\n  (the token is kept in {token_file})",
                  flush=True)
        elif not admin.token:
            print(f"  the token is in {token_file} (readable by this user only)", flush=True)
        yield server


async def _admin(settings: Any, args: argparse.Namespace) -> int:
    """The admin API and the numbers page, in this process, until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with admin_server(settings):
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


# output


def _table(headers: list[str], rows: list[list[str]]) -> None:
    cells = [headers, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    if not rows:
        print("(none)")


def _print_json(document: Any) -> int:
    print(json.dumps(document, ensure_ascii=False, indent=2))
    return 0


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
