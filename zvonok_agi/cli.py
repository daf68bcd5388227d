"""The `zvonok-agi` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

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
        close_logging()  # the log lines still queued go out before the error, not after it
        print(f"zvonok-agi: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:  # Redis not reached (down, refused, its certificate not trusted)
        close_logging()
        print(f"zvonok-agi: Redis: {exc}", file=sys.stderr)
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

    dialer = commands.add_parser(
        "dialer", help="place the calls of the callees queued in Redis (run any number of these)"
    )
    dialer.add_argument("--campaign", help="only this campaign's callees")
    dialer.set_defaults(run=_dialer_run)

    campaign = commands.add_parser("campaign", help="outbound campaigns: queue, run, progress")
    campaign_commands = campaign.add_subparsers(dest="campaign_command", required=True)
    run = campaign_commands.add_parser(
        "run", help="queue a list of callees and dial it from here (resumable)"
    )
    enqueue = campaign_commands.add_parser(
        "enqueue", help="queue a list of callees for the dialers (each callee once)"
    )
    for command in (run, enqueue):
        command.add_argument("campaign")
        command.add_argument("--list", required=True, help="CSV of callees (column 'phone')")
        command.add_argument("--cps", type=float, help="the campaign's calls started per second")
        command.add_argument("--concurrency", type=int, help="the campaign's calls at once")
    run.set_defaults(run=_campaign_run)
    enqueue.set_defaults(run=_campaign_enqueue)
    status = campaign_commands.add_parser("status", help="a campaign's progress")
    status.add_argument("campaign")
    status.add_argument("--json", action="store_true", help="as the API gives it")
    status.set_defaults(run=_campaign_status)

    migrate = commands.add_parser(
        "migrate-history",
        help="move a callback history kept before hash tags to today's keys (docs/scaling.md)",
    )
    migrate.add_argument(
        "--finish", action="store_true",
        help="after the engines run the new version: merge once more, delete the old keys",
    )
    migrate.set_defaults(run=_migrate_history)

    from .access.commands import register as register_users
    from .numbers.commands import register

    register(commands)
    register_users(commands)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    # Imported, and the heap settled, before the event loop runs: no step of it holds that.
    from .app import serve, settle_heap

    settle_heap()

    async def run() -> int:
        await serve(settings, with_admin=args.admin)
        return 0

    return run()


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
    # The records live until the end: the collector need not walk them, neither while they are
    # read (a tenth of the reading time at half a million) nor while they are written (its
    # passes over them took a third of the writing's time, and long enough to time Redis
    # replies out). Neither leaves cycles behind worth collecting before the command ends.
    gc.disable()
    try:
        try:
            inventory, overrides = read_file(args.file, now)
        except InventoryError as exc:
            raise CommandError(f"{args.file}: {exc}") from exc
        async with open_service(bulk_settings(settings)) as service:
            try:
                await service.import_inventory(actor(), inventory, overrides)
            except Refused as exc:
                raise CommandError(f"{args.file}: {exc.code}: {exc.message}") from exc
            not_in_redis = ("imported into the store, not yet into Redis: kept in the outbox, "
                            "published by the admin server when Redis is back (or run "
                            "`zvonok-agi sync`)")
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
    finally:
        gc.enable()
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
        # Only what this decision reads: the number, its campaign, the caller's campaigns.
        snapshot = await data.read({"number": [did] if did else []})
        number = snapshot.numbers.get(did) if did else None
        campaigns = {number.inbound_campaign} if number and number.inbound_campaign else set()
        if number and caller:
            campaigns.update(a.campaign for a in await history.attempts(number.did, caller))
        await data.read({"campaign": campaigns}, snapshot)
        decision = await router.decide(did, caller, snapshot)
    print(f"DID       {did or '(not a number)'}")
    print(f"caller    {caller or '(none)'}")
    print(f"at        {datetime.fromtimestamp(at).astimezone().isoformat(timespec='seconds')}")
    print(f"route     {_describe(decision.route)}")
    print(f"reason    {decision.reason}")
    for name, value in router.variables(decision, did, caller):
        print(f"  {name}={value}")
    return 0


async def _migrate_history(settings: Settings, args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from .app import open_redis
    from .store.history import CallbackHistory
    from .store.history_migration import migrate_history

    async with open_redis(settings, supervise=False) as redis:
        history = CallbackHistory(redis, settings.redis.key_prefix)
        try:
            report = await migrate_history(redis, history, finish=args.finish)
        except (RedisError, OSError) as exc:
            raise CommandError(f"Redis: {exc} (merging is idempotent: run it again)") from exc
    print(
        f"merged {report.pairs} (DID, callee) histories ({report.attempts} attempts copied), "
        f"{report.last_numbers} last numbers shown"
        + (f"; {report.deleted} old keys deleted" if args.finish else "; old keys kept")
    )
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
async def _outbound(
    settings: Settings, connections: int | None = None, *, dialing: bool = True
) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """Redis (`connections` at most; default redis.max_connections), the routing data
    (followed like the engine does, so a long run sees numbers disabled meanwhile), the
    callback history outbound calls need, and the pool's health (followed every
    health.refresh seconds while `dialing`)."""
    from redis.exceptions import RedisError

    from .app import open_redis
    from .metrics import start_metrics_server
    from .outbound.number_health import pool_health
    from .store.history import CallbackHistory
    from .store.routing_data import RoutingCache, RoutingData
    from .tasks import cancel_and_wait

    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(
            open_redis(settings, supervise=False, connections=connections)
        )
        cache = RoutingCache(RoutingData(redis, settings.redis.key_prefix))
        await cache.start()
        stack.push_async_callback(cache.stop)
        if cache.snapshot.version < 0:
            raise CommandError("routing data unavailable: is Redis running?")
        health = pool_health(redis, settings, lambda: cache.snapshot)
        history = CallbackHistory(
            redis, settings.redis.key_prefix, settings.routing.callback_window, health=health.store
        )
        if settings.metrics.enabled:
            stack.callback(
                start_metrics_server(settings.metrics.host, settings.metrics.runner_port)
            )
        if dialing:
            with contextlib.suppress(RedisError, OSError):  # the loop keeps trying
                await health.refresh()
            follow = asyncio.create_task(health.run(settings.health.refresh), name="number-health")
            stack.push_async_callback(cancel_and_wait, follow)
        yield redis, cache, history, health


def _ami_client(settings: Settings, host: str, port: int) -> Any:
    from .ami.client import AMIClient, LinkState
    from .metrics import METRICS
    from .outbound.originator import Originator

    a = settings.ami
    ami = AMIClient(
        host,
        port,
        a.username,
        a.secret,
        use_md5=a.use_md5,
        events="call",  # the events of the calls (read = call is all the user needs)
        event_names=Originator.EVENTS,
        action_timeout=a.action_timeout,
        ping_interval=a.ping_interval,
    )
    up = False

    def count(state: LinkState) -> None:
        nonlocal up
        if (state is LinkState.CONNECTED) != up:
            up = not up
            METRICS.ami_link(1 if up else -1)

    ami.add_state_listener(count)
    return ami


@contextlib.asynccontextmanager
async def _dialer(settings: Settings) -> AsyncIterator[Originator]:
    """One call's parts: the [ami] host's link, logged in, and an originator on it."""
    from .ami.client import AMIError
    from .outbound.originator import Originator

    a = settings.ami
    async with _outbound(settings) as (_, cache, history, health):
        ami = _ami_client(settings, a.host, a.port)
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
                rested=lambda: health.rested,
                scenario_context=settings.dialplan.outbound_scenario_context,
            )
            async with originator as dialer:
                yield dialer
        finally:
            await ami.close()


@contextlib.asynccontextmanager
async def _dialer_process(
    settings: Settings, *, only: str | None = None, wait_for_a_host: bool = False
) -> AsyncIterator[Any]:
    """A Dialer on every host of dialer.hosts; each link rides out its host being down
    (`wait_for_a_host`: one must log in within the connect timeout, else CommandError)."""
    import os
    import secrets
    import socket

    from .outbound.dialer import open_dialer

    worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
    # A call waits on one Redis command at a time, and so do the dialer's own loops.
    connections = settings.dialer.concurrency + 20
    async with _outbound(settings, connections) as (redis, cache, history, health):

        def ami(host: Any) -> Any:
            return _ami_client(settings, host.host, host.port)

        async with open_dialer(
            redis,
            history,
            lambda: cache.snapshot,
            settings,
            ami,
            worker=worker,
            only=only,
            rested=lambda: health.rested,
        ) as dialer:
            if wait_for_a_host:
                await _first_login(dialer.hosts, settings.ami.action_timeout)
            yield dialer


async def _first_login(hosts: list[Any], timeout: float) -> None:
    waits = [asyncio.ensure_future(h.originator.ami.wait_connected()) for h in hosts]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for wait in waits:
            wait.cancel()
    if not done:
        errors = "; ".join(f"{h.name}: {h.originator.ami.last_error}" for h in hosts)
        raise CommandError(f"no Asterisk host reachable: {errors}")


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


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _dialer_run(settings: Settings, args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    async with _dialer_process(settings, only=args.campaign) as dialer:
        await dialer.run(stop)
    return 0


def _callees(settings: Settings, args: argparse.Namespace) -> list[str]:
    from .outbound.runner import read_callees

    try:
        return read_callees(args.list, settings.routing.default_region)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


async def _campaign_run(settings: Settings, args: argparse.Namespace) -> int:
    from .outbound.originator import DialRefused
    from .outbound.runner import TerminalProgress, format_summary, run_campaign

    callees = _callees(settings, args)
    stop = _stop_on_signals()
    progress = TerminalProgress()
    async with _dialer_process(settings, only=args.campaign, wait_for_a_host=True) as dialer:
        try:
            report = await run_campaign(
                dialer,
                args.campaign,
                callees,
                stop,
                region=settings.routing.default_region,
                cps=args.cps,
                concurrency=args.concurrency,
                progress=progress,
            )
        except DialRefused as exc:
            raise CommandError(f"campaign refused, no call placed: {exc}") from exc
        finally:
            progress.close()
    print(format_summary(report))
    return 130 if report.interrupted else 0


async def _campaign_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from .outbound.queue import CampaignQueue, split_callees

    numbers, invalid = split_callees(_callees(settings, args), settings.routing.default_region)
    async with _outbound(settings, dialing=False) as (redis, cache, _, _):
        if args.campaign not in cache.snapshot.campaigns:
            raise CommandError(f"no campaign {args.campaign!r}")
        queue = CampaignQueue(redis, settings.redis.key_prefix)
        try:
            await queue.configure(args.campaign, cps=args.cps, concurrency=args.concurrency)
            added = await queue.enqueue(args.campaign, numbers, invalid)
        except (RedisError, OSError) as exc:
            raise CommandError(f"Redis: {exc} (queueing is idempotent: run it again)") from exc
    print(
        f"queued {added} callees for {args.campaign}; {len(numbers) - added} were queued "
        f"before; {len(invalid)} are not phone numbers (refused)"
    )
    return 0


async def _campaign_status(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from .app import open_redis
    from .outbound.queue import CampaignQueue, progress_document

    async with open_redis(settings, supervise=False) as redis:
        queue = CampaignQueue(redis, settings.redis.key_prefix)
        progress = await queue.progress(args.campaign)
        calls = await queue.calls(args.campaign)
    if args.json:
        print(json.dumps(progress_document(progress, calls)))
        return 0
    document = progress_document(progress, calls)
    print(f"campaign   {args.campaign}")
    for name in ("callees", "waiting", "dialing", "done", "refused"):
        print(f"{name:<10} {document[name]}")
    for outcome, n in document["outcomes"].items():
        print(f"  {outcome:<12}{n}")
    for host, n in document["dialing_by_host"].items():
        print(f"dialing on {host}: {n}")
    return 0


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
