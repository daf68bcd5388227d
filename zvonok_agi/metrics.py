"""Prometheus metrics (optional: `pip install zvonok-agi[metrics]`).

Without prometheus_client every recording call is a no-op, so the hot path never checks. The
per-call series (calls routed, decision time) are counted only once an endpoint serves them
(`start_metrics_server`): nobody could read them otherwise. The rest are rare and always kept.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    import prometheus_client as prom
except ImportError:  # the optional extra is not installed
    prom = None

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0)


class MetricsUnavailable(RuntimeError):
    pass


class _Metrics:
    def __init__(self) -> None:
        self.enabled = prom is not None
        self.per_call = False  # set by start_metrics_server
        if prom is None:
            return
        self.calls = prom.Counter(
            "zvonok_calls_routed",
            "Inbound calls routed, by route kind, fallback and reason code",
            ["route", "fallback", "reason"],
        )
        self.latency = prom.Histogram(
            "zvonok_decision_seconds",
            "Time from the env block to the last channel variable set",
            buckets=LATENCY_BUCKETS,
        )
        self.store_errors = prom.Counter(
            "zvonok_store_errors", "Redis operations that failed", ["operation"]
        )
        self.sessions_rejected = prom.Counter(
            "zvonok_fastagi_sessions_rejected", "FastAGI sessions turned away at capacity"
        )
        self.connections_dropped = prom.Counter(
            "zvonok_fastagi_connections_dropped",
            "FastAGI connections closed before they became a session, by why",
            ["why"],
        )
        self._routed: dict[tuple[str, str, str], prom.Counter] = {}
        self._dropped: dict[str, prom.Counter] = {}
        self.ami_up = prom.Gauge(
            "zvonok_ami_link_up", "AMI links logged in (one per Asterisk host a dialer uses)"
        )
        self.originates = prom.Counter(
            "zvonok_originates", "Outbound calls placed, by outcome", ["outcome"]
        )
        self.background_errors = prom.Counter(
            "zvonok_background_errors",
            "Failed steps of background loops (each loop goes on), by loop",
            ["loop"],
        )
        self.routing_loads = prom.Counter(
            "zvonok_routing_full_loads", "Full loads of the routing data (start, gap, reset)"
        )
        self.routing_changes_applied = prom.Counter(
            "zvonok_routing_changes_applied", "Routing data changes applied in memory"
        )
        self.health_changes = prom.Counter(
            "zvonok_number_health_changes",
            "Service-pool numbers rested for a low answer rate, and back from rest",
            ["event"],
        )
        self.rested = prom.Gauge(
            "zvonok_numbers_rested", "Service-pool numbers resting, as this process last saw"
        )
        self.outbox = prom.Gauge(
            "zvonok_outbox_pending", "Control-plane changes committed, not yet in Redis"
        )

    def call_routed(self, route: str, fallback: str | None, reason: str, seconds: float) -> None:
        if self.per_call:  # a labelled child per route, fallback and reason: a few dozen
            labels = (route, fallback or "", reason or "unknown")
            child = self._routed.get(labels)
            if child is None:
                child = self._routed[labels] = self.calls.labels(*labels)
            child.inc()
            self.latency.observe(seconds)

    def store_error(self, operation: str) -> None:
        if self.enabled:
            self.store_errors.labels(operation).inc()

    def session_rejected(self) -> None:
        if self.enabled:
            self.sessions_rejected.inc()

    def connection_dropped(self, why: str) -> None:
        if self.enabled:  # one per connection in a flood: the labelled child is kept
            child = self._dropped.get(why)
            if child is None:
                child = self._dropped[why] = self.connections_dropped.labels(why)
            child.inc()

    def ami_link(self, change: int) -> None:
        """One more AMI link logged in (+1), or one less (-1)."""
        if self.enabled:
            self.ami_up.inc(change)

    def originate(self, outcome: str) -> None:
        if self.enabled:
            self.originates.labels(outcome).inc()

    def background_error(self, loop: str) -> None:
        if self.enabled:
            self.background_errors.labels(loop).inc()

    def routing_loaded(self) -> None:
        if self.enabled:
            self.routing_loads.inc()

    def routing_changes(self, count: int) -> None:
        if self.enabled and count:
            self.routing_changes_applied.inc(count)

    def number_health_change(self, event: str) -> None:
        """A pool number `rested` or `back` (counted by the process that made the change)."""
        if self.enabled:
            self.health_changes.labels(event).inc()

    def numbers_rested(self, count: int) -> None:
        if self.enabled:
            self.rested.set(count)

    def outbox_pending(self, count: int) -> None:
        if self.enabled:
            self.outbox.set(count)


METRICS = _Metrics()


def start_metrics_server(host: str, port: int) -> Callable[[], None]:
    """Serve /metrics over HTTP (in a thread of prometheus_client's); returns its stop."""
    if prom is None:
        raise MetricsUnavailable(
            "metrics.enabled is set but prometheus_client is missing: "
            "pip install 'zvonok-agi[metrics]'"
        )
    server, thread = prom.start_http_server(port, addr=host)
    METRICS.per_call = True

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
