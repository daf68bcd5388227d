"""The `zvonok-agi` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from . import __version__
from .config import ConfigError, Settings, load_settings
from .logs import close_logging, configure_logging
from .metrics import MetricsUnavailable
from .store.embedded import EmbeddedRedisError

if TYPE_CHECKING:
    from .outbound.originator import Originator


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"zvonok-agi: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log.format, settings.log.level)
    try:
        loop_factory = event_loop(settings.agi.event_loop) if args.command == "serve" else None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(args.run(settings, args))
    except KeyboardInterrupt:
        return 130
    except (CommandError, MetricsUnavailable, EmbeddedRedisError) as exc:
        print(f"zvonok-agi: {exc}", file=sys.stderr)
        return 1
    finally:
        close_logging()  # every line out before the process ends


BULK_REDIS_TIMEOUT = 10.0  # seconds per Redis command for `load` and `sync`


class CommandError(Exception):
    pass


def event_loop(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The engine's loop factory for `agi.event_loop` (None: asyncio's own)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "auto":
            return None
        raise CommandError(
            "agi.event_loop is uvloop but uvloop is not installed: pip install 'zvonok-agi[uvloop]'"
        ) from None
    return uvloop.new_event_loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zvonok-agi", description="Call-routing engine for Asterisk (FastAGI)."
    )
    parser.add_argument("--version", action="version", version=f"zvonok-agi {__version__}")
    parser.add_argument("-c", "--config", help="TOML settings file (default: $ZVONOK_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the FastAGI engine")
    serve.add_argument(
        "--admin", action="store_true",
        help="also serve the admin API and the numbers page in this process (as `admin` does)",
    )
    serve.set_defaults(run=_serve)

    route = commands.add_parser(
        "route", help="dry run: where would a call go (nothing is claimed or placed)"
    )
    route.add_argument("--did", required=True, help="the number called")
    route.add_argument("--caller", default="", help="the caller's number (empty: no caller ID)")
    route.add_argument("--at", help="when (ISO 8601 or Unix seconds; default: now)")
    route.set_defaults(run=_route)

    load = commands.add_parser(
        "load", help="import accounts, numbers, campaigns from a TOML file into the store"
    )
    load.add_argument("file")
    load.set_defaults(run=_load)

    call = commands.add_parser(
        "agi-call", help="play Asterisk's side of one FastAGI session and print the route"
    )
    call.add_argument("--did", required=True)
    call.add_argument("--caller", default="")
    call.add_argument("--host", help="default: agi.host from the settings")
    call.add_argument("--port", type=int, help="default: agi.port from the settings")
    call.add_argument("--script", default="inbound")
    call.add_argument("--timeout", type=float, default=5.0)
    call.set_defaults(run=_agi_call)

    dial = commands.add_parser("dial", help="place one outbound call through AMI")
    dial.add_argument("--campaign", required=True)
    dial.add_argument("--to", required=True, help="the callee's number")
    dial.set_defaults(run=_dial)

    campaign = commands.add_parser("campaign", help="outbound campaign runs")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    run = campaign_commands.add_parser("run", help="dial a list of callees (resumable)")
    run.add_argument("campaign")
    run.add_argument("--list", required=True, help="CSV of callees (column 'phone')")
    run.add_argument("--cps", type=float, help="calls started per second")
    run.add_argument("--concurrency", type=int, help="calls at once")
    run.add_argument("--journal", help="file of callees already dialed (default: state_dir)")
    run.set_defaults(run=_campaign_run)

    from .numbers.commands import register

    register(commands)
    return parser


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from .app import serve

    await serve(settings, with_admin=args.admin)
    return 0


async def _load(settings: Settings, args: argparse.Namespace) -> int:
    """Imports the file into the control plane's store, which publishes it to Redis; then
    records its past attempts into the callback history (they are no control-plane data)."""
    from redis.exceptions import RedisError

    from .inventory import InventoryError
    from .numbers.commands import actor, open_service
    from .numbers.importer import read_file
    from .numbers.rules import Refused
    from .store.history import CallbackHistory

    now = time.time()
    try:
        inventory, overrides = read_file(args.file, now)
    except InventoryError as exc:
        raise CommandError(f"{args.file}: {exc}") from exc
    # The records live until the end: the collector's full passes need not walk them again
    # (with half a million they took long enough to time Redis replies out).
    gc.freeze()
    async with open_service(bulk_settings(settings)) as service:
        try:
            await service.import_inventory(actor(), inventory, overrides)
        except Refused as exc:
            raise CommandError(f"{args.file}: {exc.code}: {exc.message}") from exc
        not_in_redis = ("imported into the store, not yet into Redis: kept in the outbox, "
                        "published by the admin server when Redis is back (or run `zvonok-agi "
                        "sync`)")
        if await service.pending():  # committed; publishing failed (its warning says why)
            raise CommandError(not_in_redis)
        assert service.data is not None  # open_service publishes by default
        history = CallbackHistory(
            service.data.redis, settings.redis.key_prefix, settings.routing.callback_window
        )
        try:
            for attempt in inventory.attempts:
                await history.record(attempt, now)
        except (RedisError, OSError) as exc:
            raise CommandError(f"{not_in_redis} ({exc})") from exc
    print(
        f"loaded {len(inventory.accounts)} accounts, {len(inventory.numbers)} numbers, "
        f"{len(inventory.campaigns)} campaigns (store and Redis), "
        f"{len(inventory.attempts)} attempts (callback history)"
    )
    return 0


def bulk_settings(settings: Settings) -> Settings:
    """The settings for a bulk command: Redis's per-command budget is for calls, not for a
    command writing hundreds of thousands of records."""
    timeout = max(settings.redis.socket_timeout, BULK_REDIS_TIMEOUT)
    return replace(settings, redis=replace(settings.redis, socket_timeout=timeout))


async def _route(settings: Settings, args: argparse.Namespace) -> int:
    from .agi.inbound import InboundRouter
    from .app import open_redis
    from .store.history import CallbackHistory
    from .store.routing_data import RoutingCache, RoutingData

    at = _parse_time(args.at) if args.at else time.time()
    async with open_redis(settings, supervise=False) as redis:
        prefix = settings.redis.key_prefix
        data = RoutingData(redis, prefix)
        history = CallbackHistory(redis, prefix, settings.routing.callback_window)
        router = InboundRouter(
            RoutingCache(data),
            history,
            settings.dialplan,
            settings.routing.callback_window,
            region=settings.routing.default_region,
            clock=lambda: at,
        )
        did, caller = router.parties(args.did, "", args.caller)
        snapshot = await data.load()
        decision = await router.decide(did, caller, snapshot)
    print(f"DID       {did or '(not a number)'}")
    print(f"caller    {caller or '(none)'}")
    print(f"at        {datetime.fromtimestamp(at).astimezone().isoformat(timespec='seconds')}")
    print(f"route     {_describe(decision.route)}")
    print(f"reason    {decision.reason}")
    for name, value in router.variables(decision, did, caller):
        print(f"  {name}={value}")
    return 0


async def _agi_call(settings: Settings, args: argparse.Namespace) -> int:
    from .agi import variables as var
    from .agi.client import agi_call

    host = args.host or settings.agi.host
    port = args.port or settings.agi.port
    try:
        variables = await agi_call(
            host, port, args.did, args.caller, script=args.script, timeout=args.timeout
        )
    except (OSError, TimeoutError) as exc:
        raise CommandError(f"no FastAGI session with {host}:{port}: {exc!r}") from exc
    for name, value in variables.items():
        print(f"{name}={value}")
    if variables.get(var.DECIDED) != "1":
        print("no decision: the dialplan would take the engine_error route", file=sys.stderr)
        return 1
    return 0


@contextlib.asynccontextmanager
async def _dialer(settings: Settings) -> AsyncIterator[Originator]:
    """The AMI link, the history and the routing data an outbound call needs."""
    from .ami.client import AMIClient, AMIError, LinkState
    from .app import open_redis
    from .metrics import METRICS, start_metrics_server
    from .outbound.originator import Originator
    from .store.history import CallbackHistory
    from .store.routing_data import RoutingCache, RoutingData

    a = settings.ami
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings, supervise=False))
        # Followed like the engine does, so a long run sees numbers disabled meanwhile.
        cache = RoutingCache(RoutingData(redis, settings.redis.key_prefix))
        await cache.start()
        stack.push_async_callback(cache.stop)
        if cache.snapshot.version < 0:
            raise CommandError("routing data unavailable: is Redis running?")
        history = CallbackHistory(
            redis, settings.redis.key_prefix, settings.routing.callback_window
        )
        ami = AMIClient(
            a.host,
            a.port,
            a.username,
            a.secret,
            use_md5=a.use_md5,
            action_timeout=a.action_timeout,
            ping_interval=a.ping_interval,
        )
        ami.add_state_listener(lambda state: METRICS.ami_link(state is LinkState.CONNECTED))
        if settings.metrics.enabled:
            stack.callback(
                start_metrics_server(settings.metrics.host, settings.metrics.runner_port)
            )
        try:
            await ami.connect()
        except (AMIError, OSError) as exc:
            raise CommandError(f"AMI {a.host}:{a.port}: {exc}") from exc
        try:
            originator = Originator(
                ami,
                history,
                lambda: cache.snapshot,
                settings.outbound,
                region=settings.routing.default_region,
            )
            async with originator as dialer:
                yield dialer
        finally:
            await ami.close()


async def _dial(settings: Settings, args: argparse.Namespace) -> int:
    from .outbound.originator import CampaignPaused, DialRefused, StoreUnavailable
    from .routing.callerid import PoolAtCapacity

    async with _dialer(settings) as dialer:
        try:
            result = await dialer.dial(args.campaign, args.to)
        except (DialRefused, CampaignPaused, PoolAtCapacity, StoreUnavailable) as exc:
            raise CommandError(f"no call placed: {exc}") from exc
    if not result.dialed:
        raise CommandError(f"no call placed: {result.detail}")
    print(f"callee     {result.attempt.callee}")
    print(f"caller ID  {result.caller_id.did} ({result.caller_id.reason})")
    print(f"attempt    {result.attempt.id}")
    print(f"outcome    {result.outcome.value} ({result.detail})")
    return 0


async def _campaign_run(settings: Settings, args: argparse.Namespace) -> int:
    from .outbound.originator import DialRefused
    from .outbound.runner import (
        CampaignRunner,
        Journal,
        TerminalProgress,
        format_summary,
        journal_path,
        read_callees,
        trunk_limiter,
    )

    out = settings.outbound
    try:
        callees = read_callees(args.list, settings.routing.default_region)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    journal = Journal(args.journal or journal_path(out.state_dir, args.campaign, args.list))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _dialer(settings) as dialer:
        runner = CampaignRunner(
            dialer,
            args.campaign,
            callees,
            journal,
            calls_per_second=args.cps or out.calls_per_second,
            concurrency=args.concurrency or out.concurrency,
            trunk=trunk_limiter(out.channel, out.trunk_calls_per_second),
            progress=TerminalProgress(),
        )
        try:
            summary = await runner.run(stop)
        except DialRefused as exc:
            raise CommandError(f"campaign refused, no call placed: {exc}") from exc
    print(format_summary(summary))
    return 130 if summary.interrupted else 0


def _describe(route) -> str:
    if route.fallback is not None:
        return f"fallback {route.fallback.value}"
    return f"{route.kind.value} campaign {route.campaign}"


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CommandError(f"--at: {text!r} is neither ISO 8601 nor Unix seconds") from exc
    return moment.timestamp()
