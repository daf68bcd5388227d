"""Settings: defaults, then a TOML file, then ZVONOK_* environment variables.

`config/zvonok.example.toml` documents every setting; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .store.connection import TLS, RedisURLError, parse_redis_url


class ConfigError(ValueError):
    pass


STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


@dataclass(frozen=True)
class AgiSettings:
    host: str = "127.0.0.1"
    port: int = 4573
    # Peers allowed to open FastAGI sessions (addresses or networks).
    allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    max_sessions: int = 500
    # Whole-session budget from accept: env block, decision, reply. Asterisk waits in AGI().
    session_deadline: float = 3.0
    # A connection must send its whole env block this soon after accept; only then does it
    # take one of max_sessions.
    env_deadline: float = 1.0
    # Connections from one host still without their env block; past it the oldest is closed.
    max_pending_per_peer: int = 2000
    # The listen backlog (the kernel caps it at net.core.somaxconn).
    backlog: int = 1024
    # How long SIGTERM lets in-flight sessions finish before ending them with a fallback route.
    drain_deadline: float = 5.0
    # Stop accepting connections (close the listener, so that Asterisk is refused and tries
    # the next engine at once) while the event loop runs more than overload_lag seconds late
    # for overload_for seconds; accept again once it has kept up for overload_recovery
    # seconds. 0: never.
    overload_lag: float = 0.5
    overload_for: float = 1.0
    overload_recovery: float = 5.0
    # Set the route's variables with one EXEC MSet, checked by reading ZV_DECIDED back (else
    # one SET VARIABLE each): 3 round trips to Asterisk instead of 9.
    batch_variables: bool = True
    # A host that failed MSet 3 times in a row gets one SET VARIABLE each; after this many
    # seconds one of its calls tries MSet again.
    batch_retry_interval: float = 300.0
    # The engine's event loop: "uvloop" (the uvloop extra), "asyncio" (the standard one), or
    # "auto": uvloop when it is installed.
    event_loop: str = "auto"


@dataclass(frozen=True)
class RedisSettings:
    # Empty: start and supervise an embedded Redis server with its data under `data_dir`.
    # Else redis://, unix://, redis+sentinel:// or redis+cluster:// (store/connection.py);
    # over TLS: rediss://, rediss+sentinel:// (sentinels and master), rediss+cluster://.
    url: str = ""
    data_dir: str = "var/redis"
    # Per-command budget: a slow store must not eat the session deadline.
    socket_timeout: float = 0.5
    connect_timeout: float = 0.5
    # Connections to Redis at most; a command finding them all busy waits for one, up to
    # socket_timeout (a burst of calls shares a few connections instead of opening one each).
    # Per node of a Cluster, and at least CLUSTER_MIN_CONNECTIONS there (store/connection.py).
    # The inbound route's commands share one more (store/multiplexed.py), where it serves.
    max_connections: int = 32
    # The in-memory routing data is re-checked against Redis this often (the stream of
    # changes brings them sooner).
    refresh_interval: float = 1.0
    key_prefix: str = "zv:"
    # After winning a first-callback claim, wait (Redis WAIT) until this many replicas have
    # it, at most claim_wait seconds: a failover then cannot lose it. 0: no wait.
    claim_replicas: int = 0
    claim_wait: float = 0.1
    # Over TLS: the CA certificate(s) the server's must be signed by (empty: the system's);
    # the client's certificate and key, for a server that asks for one (tls-auth-clients);
    # whether the server's certificate must name the host connected to.
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_check_hostname: bool = True

    @property
    def tls(self) -> TLS:
        return TLS(self.tls_ca_file, self.tls_cert_file, self.tls_key_file, self.tls_check_hostname)


@dataclass(frozen=True)
class RoutingSettings:
    callback_window_days: float = 7.0
    # Region used to read numbers written without a country code.
    default_region: str = "RU"

    @property
    def callback_window(self) -> float:
        return self.callback_window_days * 86400.0


@dataclass(frozen=True)
class DialplanSettings:
    outbound_context: str = "zvonok-outbound-{campaign}"
    inbound_context: str = "zvonok-inbound-{campaign}"
    fallback_context: str = "zvonok-fallback-{fallback}"
    extension: str = "s"
    # The generic contexts that run a campaign's scenario when it has no context of its own.
    outbound_scenario_context: str = "zvonok-scenario-outbound"
    inbound_scenario_context: str = "zvonok-scenario-inbound"


@dataclass(frozen=True)
class AmiSettings:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "zvonok"
    # Give it through ZVONOK_AMI_SECRET rather than in a file.
    secret: str = ""
    # Log in with an MD5 challenge, so the secret never crosses the wire.
    use_md5: bool = True
    action_timeout: float = 5.0
    ping_interval: float = 20.0


@dataclass(frozen=True)
class OutboundSettings:
    # How a callee is dialed; {callee} is the number in E.164 digits.
    channel: str = "PJSIP/{callee}@carrier"
    # The outbound campaign's own context, where an answered call goes (extension s) when the
    # dialplan has it; else the campaign's scenario runs (dialplan.outbound_scenario_context).
    context: str = "zvonok-outbound-{campaign}"
    # Seconds a callee's phone may ring.
    ring_timeout: float = 30.0
    # Seconds after which an attempt with no outcome from Asterisk is settled as failed.
    outcome_timeout: float = 90.0
    # Calls per minute from one service-pool number (spreads load; carriers flag hot numbers).
    pool_calls_per_minute: int = 6
    # A campaign's calls started per second and calls at once, unless set for the campaign.
    calls_per_second: float = 5.0
    concurrency: int = 10
    # The trunk's limit in calls started per second, across every dialer.
    trunk_calls_per_second: float = 20.0


@dataclass(frozen=True)
class DialerSettings:
    # The Asterisk hosts (AMI "host:port") a dialer places calls through, "/N" after one for
    # its own capacity; empty: the [ami] host alone. Name a host the same way on every dialer:
    # the name keys its limit.
    hosts: tuple[str, ...] = ()
    # Calls being placed at once on one host (outcome not yet known), across every dialer.
    host_capacity: int = 100
    # The same on one trunk (the endpoint of outbound.channel), across every dialer and host.
    trunk_capacity: int = 200
    # Calls one dialer process handles at once.
    concurrency: int = 200
    # Seconds between a dialer's word that it still works on the callees it took.
    heartbeat: float = 5.0
    # Seconds without that word after which another dialer takes its callees over.
    claim_after: float = 30.0
    # Seconds between looks for new callees when there is nothing to dial.
    poll_interval: float = 0.2


@dataclass(frozen=True)
class HealthSettings:
    # Rest service-pool numbers whose answer rate falls low (docs/routing.md, "Number health");
    # false: the counts are still kept and shown, no number rests.
    enabled: bool = True
    # The sliding window of calls placed and answered per number, in hours.
    window_hours: float = 24.0
    # A pool number rests when its answer rate is below this share of the pool's median.
    fraction: float = 0.5
    # ... once it has placed at least this many calls in the window (new numbers are not judged
    # on noise), and while fewer than this share of the pool rests (never the whole pool).
    min_placed: int = 30
    max_rested_share: float = 0.25
    # Hours a rested number stays out; then it comes back with a fresh window.
    cooldown_hours: float = 6.0
    # Seconds between a dialer's looks at the pool's health.
    refresh: float = 30.0


@dataclass(frozen=True)
class DialerHost:
    name: str  # "host:port", as configured
    host: str
    port: int
    capacity: int


@dataclass(frozen=True)
class MetricsSettings:
    # A Prometheus /metrics endpoint (needs the "metrics" extra: prometheus_client).
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464  # `serve`
    runner_port: int = 9465  # `campaign run`, `dial` and `dialer`


@dataclass(frozen=True)
class AdminSettings:
    host: str = "127.0.0.1"
    port: int = 8573
    # A host other than loopback is refused unless this says the exposure is meant.
    allow_remote: bool = False
    # The page is reached over HTTPS (a TLS proxy in front): session cookies are Secure.
    https: bool = False
    # The header in which that proxy names the client ("X-Forwarded-For", its last entry);
    # empty: the socket's peer is the client (the limit on failed sign-ins counts by it).
    address_header: str = ""
    # A session ends this long after its last use, and this long after it began.
    session_idle_hours: float = 12.0
    session_max_days: float = 7.0
    # Failed sign-ins for one login from one address in 15 minutes before a wait (six times
    # as many from one address, twenty times for one login from anywhere).
    sign_in_attempts: int = 5
    # The operator's bearer token (staff, every account); empty: one is generated and kept in
    # token_file.
    token: str = ""
    # The generated token (mode 0600), reused at every start; delete it for a new one.
    token_file: str = "var/admin-token"
    # The control plane's SQLite file when store.url is empty (the setting before store.url).
    db_path: str = "var/zvonok.db"
    # Listed first, with their counts, when a customer connects a landline number.
    popular_cities: tuple[str, ...] = (
        "Moscow", "St Petersburg", "Novosibirsk", "Ekaterinburg", "Kazan", "Nizhni Novgorod",
    )
    max_body: int = 65536
    # Requests for numbers (filed where a region has none) one account may have open at once.
    max_open_requests: int = 5


@dataclass(frozen=True)
class WatchdogSettings:
    # End the process when the event loop has not run for `timeout` seconds, after logging
    # the loop's stack: the kernel then closes every FastAGI connection and Asterisk takes
    # its fallback, instead of waiting in AGI() for ever.
    enabled: bool = True
    timeout: float = 2.0
    # A file the watchdog touches every second while the loop runs: a container healthcheck
    # tells a frozen process by its age. Empty: none.
    heartbeat_file: str = ""


@dataclass(frozen=True)
class StoreSettings:
    # The control plane's store, the source of truth for accounts, numbers, campaigns:
    # sqlite:///relative/path, sqlite:////absolute/path, or postgresql://user@host:5432/db.
    # Empty: the SQLite file admin.db_path.
    url: str = ""
    # PostgreSQL: connections per process (a change or a read holds one; the publisher two).
    pool_size: int = 10


@dataclass(frozen=True)
class LogSettings:
    # "json" for production, "console" for a terminal, "auto": console on a TTY.
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class Settings:
    agi: AgiSettings = field(default_factory=AgiSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    dialplan: DialplanSettings = field(default_factory=DialplanSettings)
    ami: AmiSettings = field(default_factory=AmiSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    dialer: DialerSettings = field(default_factory=DialerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def store_url(self) -> str:
        """The control plane's store: store.url, else the SQLite file admin.db_path."""
        return self.store.url or f"sqlite:///{self.admin.db_path}"


SECTIONS = {f.name: f.default_factory for f in fields(Settings)}  # type: ignore[misc]
# A context name the engine sends as it is: what a Goto takes whole (no ',', no space).
DIALPLAN_NAME = re.compile(r"[A-Za-z0-9_-]{1,79}")
# An extension the dialplan can go to as it stands: no separator (`,`), bracket or `$` that
# DIALPLAN_EXISTS() or Goto() would read as syntax.
DIALPLAN_EXTENSION = re.compile(r"[A-Za-z0-9_+*#-]{1,79}")


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Defaults, overridden by the TOML file at `path` (or $ZVONOK_CONFIG), then by
    ZVONOK_<SECTION>_<KEY> environment variables (e.g. ZVONOK_REDIS_URL)."""
    environ = dict(os.environ) if environ is None else environ
    path = path or environ.get("ZVONOK_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    sections = {}
    for name, factory in SECTIONS.items():
        section = factory()
        values = dict(data.get(name, {}))
        for f in fields(section):
            env_value = environ.get(f"ZVONOK_{name}_{f.name}".upper())
            if env_value is not None:
                values[f.name] = env_value
        sections[name] = _apply(name, section, values)
    settings = Settings(**sections)
    _validate(settings)
    return settings


def _apply(name: str, section: Any, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(section)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {name}.{key}")
        default = getattr(section, key)
        changes[key] = _coerce(f"{name}.{key}", value, default)
    return replace(section, **changes)


def _coerce(where: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [item.strip() for item in value.split(",") if item.strip()]
            return tuple(str(item) for item in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {where}: {value!r}") from exc


def _validate_redis_url(redis: RedisSettings) -> None:
    """The URL, and the TLS files its scheme needs (read now: a wrong path fails the start,
    not the first call)."""
    try:
        tls = parse_redis_url(redis.url).tls if redis.url else False
    except RedisURLError as exc:
        raise ConfigError(f"redis.url: {exc}") from exc
    if not tls:
        if redis.tls.given:
            raise ConfigError(
                "redis.tls_* settings are set but redis.url is not over TLS (rediss://, "
                "rediss+sentinel://, rediss+cluster://)"
            )
        return
    try:
        redis.tls.context()
    except RedisURLError as exc:
        raise ConfigError(str(exc)) from exc


def _validate(settings: Settings) -> None:
    for entry in settings.agi.allow:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ConfigError(f"agi.allow: {entry!r} is not an address or network") from exc
    if not 0 <= settings.agi.port < 65536:
        raise ConfigError("agi.port must be 0..65535 (0: any free port)")
    for name in ("max_sessions", "max_pending_per_peer", "backlog"):
        if getattr(settings.agi, name) < 1:
            raise ConfigError(f"agi.{name} must be at least 1")
    if settings.agi.event_loop not in ("auto", "asyncio", "uvloop"):
        raise ConfigError("agi.event_loop must be auto, asyncio or uvloop")
    for name in ("session_deadline", "env_deadline", "drain_deadline", "batch_retry_interval"):
        if getattr(settings.agi, name) <= 0:
            raise ConfigError(f"agi.{name} must be positive")
    if settings.redis.max_connections < 2:  # the routing data's follower holds one
        raise ConfigError("redis.max_connections must be at least 2")
    _validate_redis_url(settings.redis)
    if settings.redis.claim_replicas < 0:
        raise ConfigError("redis.claim_replicas must be 0 (no wait) or more")
    if not 0 < settings.redis.claim_wait < settings.redis.socket_timeout:
        raise ConfigError(
            "redis.claim_wait must be positive and shorter than redis.socket_timeout (the "
            "claim and its WAIT are one command's read)"
        )
    if "{" in settings.redis.key_prefix or "}" in settings.redis.key_prefix:
        raise ConfigError(
            "redis.key_prefix must not hold { or }: they mark the hash tags that keep the keys "
            "of one script in one Redis Cluster slot"
        )
    agi = settings.agi
    if agi.overload_lag < 0 or agi.overload_for < 0 or agi.overload_recovery < 0:
        raise ConfigError("agi.overload_lag, overload_for, overload_recovery must not be negative")
    if settings.watchdog.timeout <= 0:
        raise ConfigError("watchdog.timeout must be positive")
    if settings.watchdog.enabled and agi.overload_lag >= settings.watchdog.timeout:
        raise ConfigError(
            "agi.overload_lag must be shorter than watchdog.timeout: a loop that late is ended "
            "by the watchdog before it could count as overloaded"
        )
    if settings.routing.callback_window_days <= 0:
        raise ConfigError("routing.callback_window_days must be positive")
    templates = settings.dialplan
    for name, key in (
        ("outbound_context", "campaign"),
        ("inbound_context", "campaign"),
        ("fallback_context", "fallback"),
    ):
        template = getattr(templates, name)
        if "{" + key + "}" not in template:
            raise ConfigError(f"dialplan.{name} must contain {{{key}}}")
        try:
            template.format(**{key: "x"})
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"dialplan.{name}: {template!r} may hold only {{{key}}} ({exc!r})"
            ) from exc
        # The shipped dialplan sends a call only into zvonok- contexts, anything else to
        # engine_error: refuse such a template at start rather than on every call.
        if not template.startswith("zvonok-"):
            raise ConfigError(f"dialplan.{name} must start with zvonok-, got {template!r}")
    if not DIALPLAN_EXTENSION.fullmatch(templates.extension):
        raise ConfigError(
            "dialplan.extension must be an extension name (letters, digits, _ + * # -), "
            f"got {templates.extension!r}"
        )
    for name in ("outbound_scenario_context", "inbound_scenario_context"):
        context = getattr(templates, name)
        if not DIALPLAN_NAME.fullmatch(context) or not context.startswith("zvonok-"):
            raise ConfigError(
                f"dialplan.{name} must be a context name starting with zvonok-, got {context!r}"
            )
    if not 0 <= settings.admin.port < 65536:
        raise ConfigError("admin.port must be 0..65535 (0: any free port)")
    if not settings.admin.allow_remote and not is_loopback(settings.admin.host):
        raise ConfigError(
            f"admin.host {settings.admin.host!r} is not a loopback address: the admin API "
            "changes who owns which number, over plain HTTP. Keep it on 127.0.0.1 (behind a "
            "TLS proxy for remote use), or set admin.allow_remote = true to expose it anyway"
        )
    if not settings.admin.token and not settings.admin.token_file:
        raise ConfigError("admin.token_file is needed when admin.token is empty")
    if settings.admin.max_body < 1024:
        raise ConfigError("admin.max_body must be at least 1024")
    if settings.admin.max_open_requests < 1:
        raise ConfigError("admin.max_open_requests must be at least 1")
    if settings.store.url and not settings.store.url.startswith(STORE_SCHEMES):
        raise ConfigError(  # the URL is not repeated: it may hold a password
            "store.url must start with sqlite:/// or postgresql:// (e.g. "
            "postgresql://zvonok@db.example.net:5432/zvonok)"
        )
    if settings.store.pool_size < 2:
        raise ConfigError("store.pool_size must be at least 2")
    if settings.admin.session_idle_hours <= 0 or settings.admin.session_max_days <= 0:
        raise ConfigError("admin.session_idle_hours and session_max_days must be positive")
    if settings.admin.sign_in_attempts < 1:
        raise ConfigError("admin.sign_in_attempts must be at least 1")
    out = settings.outbound
    if "{callee}" not in out.channel or "{campaign}" not in out.context:
        raise ConfigError("outbound.channel needs {callee}, outbound.context {campaign}")
    if not out.context.startswith("zvonok-"):
        # An answered call follows it through zvonok-route, which enters only zvonok- contexts.
        raise ConfigError(f"outbound.context must start with zvonok-, got {out.context!r}")
    for name in ("ring_timeout", "outcome_timeout", "calls_per_second", "trunk_calls_per_second"):
        if getattr(out, name) <= 0:
            raise ConfigError(f"outbound.{name} must be positive")
    if out.outcome_timeout <= out.ring_timeout:
        raise ConfigError("outbound.outcome_timeout must be longer than ring_timeout")
    if out.pool_calls_per_minute < 1 or out.concurrency < 1:
        raise ConfigError("outbound.pool_calls_per_minute and concurrency must be at least 1")
    dialer = settings.dialer
    for name in ("host_capacity", "trunk_capacity", "concurrency"):
        if getattr(dialer, name) < 1:
            raise ConfigError(f"dialer.{name} must be at least 1")
    for name in ("heartbeat", "claim_after", "poll_interval"):
        if getattr(dialer, name) <= 0:
            raise ConfigError(f"dialer.{name} must be positive")
    if dialer.claim_after < 2 * dialer.heartbeat:
        raise ConfigError("dialer.claim_after must be at least twice dialer.heartbeat")
    dialer_hosts(settings)
    health = settings.health
    for name in ("window_hours", "cooldown_hours", "refresh"):
        if getattr(health, name) <= 0:
            raise ConfigError(f"health.{name} must be positive")
    if not 0 < health.fraction <= 1:
        raise ConfigError("health.fraction must be more than 0 and at most 1")
    if health.min_placed < 1:
        raise ConfigError("health.min_placed must be at least 1")
    if not 0 <= health.max_rested_share <= 1:
        raise ConfigError("health.max_rested_share must be between 0 and 1")
    if settings.log.format not in ("auto", "json", "console"):
        raise ConfigError("log.format must be auto, json or console")


def dialer_hosts(settings: Settings) -> list[DialerHost]:
    """The Asterisk hosts of dialer.hosts ("host:port[/capacity]"), else the [ami] one."""
    entries = settings.dialer.hosts or (f"{settings.ami.host}:{settings.ami.port}",)
    hosts = []
    for entry in entries:
        name, _, capacity = entry.strip().partition("/")
        host, colon, port = name.rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"dialer.hosts: {entry!r} is not host:port[/capacity]")
        if capacity and (not capacity.isdigit() or int(capacity) < 1):
            raise ConfigError(f"dialer.hosts: {entry!r}: the capacity must be a whole number >= 1")
        if any(known.name == name for known in hosts):
            raise ConfigError(f"dialer.hosts: {name} is listed twice")
        size = int(capacity) if capacity else settings.dialer.host_capacity
        hosts.append(DialerHost(name, host, int(port), size))
    return hosts


def is_loopback(host: str) -> bool:
    """Whether a listening socket on `host` is reachable from this machine only. "" and
    0.0.0.0/:: mean every interface; a host name other than localhost may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
