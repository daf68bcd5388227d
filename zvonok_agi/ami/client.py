"""asyncio AMI client: login, ActionID correlation, keep-alive, reconnect, bounded events.

Design rules, each one a lesson from clients that got it wrong:
- Every action has a deadline (`AMIActionTimeout`), so a caller never hangs on a lost reply.
- An action lives on the one connection it was written to. When that connection dies, its
  pending actions fail at once with `AMIDisconnected` and are NEVER sent again: Asterisk may
  already have acted on them, and a re-sent `Originate` dials the callee twice.
- While the link is down, `send_action` fails at once instead of queueing for later.
- Events go to one bounded queue. When it is full the OLDEST event is dropped (the stream
  stays current; a consumer that fell behind learns it from `dropped_events`).
- A `Ping` every `ping_interval` notices a link that went silent and drops it.
- Reconnects wait an exponential, jittered, capped delay, after a lost link as after a failed
  login (wrong secret: `AMIAuthError`), so a misconfigured client never hammers Asterisk.
  `connect_timeout` covers connect, banner and login: keep it above 1 s, as Asterisk waits
  1 s before it refuses a login.
- Events sent while the link was down are lost. A consumer that tracks calls must listen to
  the link state (`add_state_listener`) and ask Asterisk what became of them (a call's later
  events do reach the new link: Asterisk sends call events to every session reading them).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import itertools
import random
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import structlog

from ..tasks import LoopErrors, cancel_and_wait
from .protocol import (
    NEED_DATA,
    AMIConnection,
    AMIError,
    AMIProtocolError,
    Banner,
    Closed,
    Event,
    Response,
    encode_action,
    ends_event_list,
    starts_event_list,
)

log = structlog.get_logger(__name__)

Fields = Iterable[tuple[str, str]] | Mapping[str, str]


class AMIDisconnected(AMIError):
    """The link is down, or went down while the action waited for its reply.

    The action may or may not have reached Asterisk (`sent`: it was written, or may have
    been); it is not sent again.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class AMIActionTimeout(AMIError):
    """No reply to an action within its deadline (the link itself may still be fine)."""


class AMIAuthError(AMIError):
    """Asterisk refused the login (`Response: Error`); it drops the connection right after."""


class AMIConnectionError(AMIError):
    """Could not open the TCP connection or read the banner in time."""


class LinkState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Delay before reconnect attempt `attempt` (1, 2, ...): exponential, capped, jittered.

    The delay is drawn from [d/2, d] with d = min(cap, base * 2**(attempt-1)): never zero
    (no reconnect storm), and spread out so that many clients do not retry in step.
    """
    # The exponent is bounded: 2.0**1100 would overflow after a long outage.
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 64))
    return ceiling * (0.5 + rand() / 2)


@dataclass
class _Pending:
    future: asyncio.Future[tuple[Response, list[Event]]]
    collect_list: bool
    response: Response | None = None  # set once `EventList: start` arrived
    events: list[Event] = field(default_factory=list)


class _Link:
    """One TCP connection: its parser, its reader task and the actions waiting on it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_event: Callable[[Event], None],
        errors: LoopErrors,
        event_names: Collection[str] | None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.on_event = on_event
        self.errors = errors
        self.conn = AMIConnection(events=event_names)
        self.pending: dict[str, _Pending] = {}
        self.banner: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.lost = asyncio.Event()
        self.reason = ""
        self.reader_task = asyncio.create_task(self._read_loop(), name="ami-reader")

    async def _read_loop(self) -> None:
        reason = "closed by peer"
        try:
            while True:
                data = await self.reader.read(65536)
                self.conn.receive_data(data)
                if self._drain_events():
                    break
        except AMIProtocolError as exc:
            reason = f"protocol error: {exc}"
        except OSError as exc:
            reason = f"socket error: {exc!r}"
        except Exception as exc:  # a defect: this link goes, and the client connects again
            reason = f"internal error: {exc!r}"
            self.errors.failed(exc)
        finally:
            self.abort(reason)

    def _drain_events(self) -> bool:
        """Dispatch every complete event; True once the peer closed the connection."""
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return False
            if isinstance(event, Closed):
                return True
            if isinstance(event, Banner):
                if not self.banner.done():
                    self.banner.set_result(event.text)
            elif isinstance(event, Response):
                self._on_response(event)
            elif isinstance(event, Event):
                self._on_event(event)
            # An Action coming from Asterisk would make no sense: ignored.

    def _on_response(self, response: Response) -> None:
        pending = self.pending.get(response.action_id or "")
        if pending is None:
            # A reply that came after its action timed out, or one we never asked for.
            log.debug("ami.response_unclaimed", action_id=response.action_id)
            return
        if pending.collect_list and starts_event_list(response):
            pending.response = response
            return
        del self.pending[response.action_id or ""]
        if not pending.future.done():
            pending.future.set_result((response, []))

    def _on_event(self, event: Event) -> None:
        pending = self.pending.get(event.action_id or "")
        if pending is None or pending.response is None:
            self.on_event(event)
            return
        if ends_event_list(event):
            del self.pending[event.action_id or ""]
            if not pending.future.done():
                pending.future.set_result((pending.response, pending.events))
        else:
            pending.events.append(event)

    async def request(
        self, name: str, action_id: str, fields: Fields, timeout: float, collect_list: bool
    ) -> tuple[Response, list[Event]]:
        if self.lost.is_set():
            raise AMIDisconnected(f"link lost ({self.reason}); {name} not sent", sent=False)
        future: asyncio.Future[tuple[Response, list[Event]]]
        future = asyncio.get_running_loop().create_future()
        self.pending[action_id] = _Pending(future, collect_list)
        try:
            async with asyncio.timeout(timeout):
                self.writer.write(encode_action(name, action_id, fields))
                await self.writer.drain()
                return await future
        except TimeoutError:
            raise AMIActionTimeout(f"no reply to {name} ({action_id}) in {timeout}s") from None
        except OSError as exc:
            # drain() on a reset connection; the reader reports the loss on its side.
            raise AMIDisconnected(f"link lost while sending {name}: {exc!r}") from exc
        finally:
            self.pending.pop(action_id, None)

    def abort(self, reason: str) -> None:
        """Mark the link lost, fail everything waiting on it, close the socket."""
        if self.lost.is_set():
            return
        self.reason = reason
        self.lost.set()
        pending, self.pending = self.pending, {}
        for action_id, item in pending.items():
            if not item.future.done():
                item.future.set_exception(
                    AMIDisconnected(f"link lost ({reason}) before the reply to {action_id}")
                )
        if not self.banner.done():
            self.banner.set_exception(AMIConnectionError(f"no banner: {reason}"))
            self.banner.exception()  # mark retrieved: nobody may be waiting for it
        self.writer.close()

    async def close(self, reason: str) -> None:
        self.abort(reason)
        await cancel_and_wait(self.reader_task)
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class _EventIterator:
    def __init__(self, client: AMIClient) -> None:
        self._client = client

    def __aiter__(self) -> _EventIterator:
        return self

    async def __anext__(self) -> Event:
        event = await self._client.get_event()
        if event is None:
            raise StopAsyncIteration
        return event


class AMIClient:
    """A long-lived AMI connection to one Asterisk.

    Use `async with AMIClient(...) as ami:` (fails fast if the first login fails), or
    `start()` + `wait_connected()` for a service that must ride out Asterisk being down.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        use_md5: bool = True,
        events: str = "on",
        event_names: Collection[str] | None = None,
        action_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        reconnect_base: float = 0.5,
        reconnect_cap: float = 30.0,
        event_queue_size: int = 10_000,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if event_queue_size < 1:
            raise ValueError("event_queue_size must be at least 1: the queue is bounded")
        self.host = host
        self.port = port
        self.username = username
        self.secret = secret
        self.use_md5 = use_md5
        self.events_mask = events
        self.event_names = event_names  # the only events wanted; others skipped unread
        self.action_timeout = action_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self._rand = rand

        self.banner: str | None = None
        self.links = 0  # logins so far: an action sent on link n went out before link n + 1
        self.dropped_events = 0
        self.last_error: BaseException | None = None
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=event_queue_size)
        self._state = LinkState.DISCONNECTED
        self._listeners: list[Callable[[LinkState], None]] = []
        self._connected = asyncio.Event()
        self._link: _Link | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._closing = False
        self._reader_errors = LoopErrors("ami-reader", expected=())
        # Unique across reconnects and across clients sharing one Asterisk: OriginateResponse
        # events, ActionID included, reach every AMI session allowed to read call events.
        self._ids = (f"{secrets.token_hex(4)}-{n}" for n in itertools.count(1))

    # ---- link state -------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is LinkState.CONNECTED

    def add_state_listener(self, callback: Callable[[LinkState], None]) -> None:
        """Call `callback(state)` on every state change (e.g. for a metrics gauge)."""
        self._listeners.append(callback)

    def remove_state_listener(self, callback: Callable[[LinkState], None]) -> None:
        self._listeners.remove(callback)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def _set_state(self, state: LinkState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is LinkState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        log.info("ami.link_state", state=state.value, host=self.host, port=self.port)
        for callback in list(self._listeners):
            try:
                callback(state)
            except Exception:
                log.exception("ami.state_listener_failed")

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background (and reconnecting, for as long as it runs)."""
        if self._closing:
            raise RuntimeError("AMIClient is closed")
        if self._supervisor is None:
            self._first_attempt = asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.create_task(self._run(), name="ami-supervisor")

    async def connect(self) -> None:
        """Start, and wait for the first login. On failure raise its error and stop."""
        self.start()
        assert self._first_attempt is not None
        try:
            await self._first_attempt
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Log off (briefly), drop the link, stop the background tasks. Idempotent."""
        if self._closing:
            return
        self._closing = True
        link = self._link
        try:
            if link is not None and self.connected:
                with contextlib.suppress(AMIError):
                    await link.request(
                        "Logoff", next(self._ids), (), min(1.0, self.action_timeout), False
                    )
        finally:
            if self._supervisor is not None:
                await cancel_and_wait(self._supervisor)
        self._set_state(LinkState.CLOSED)
        # Wake the consumer: drop the oldest event if needed to make room for the end marker.
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                self._set_state(LinkState.CONNECTING)
                try:
                    link = await self._open_link()
                except Exception as exc:  # noqa: BLE001 - whatever it was, retry after a backoff
                    self.last_error = exc
                    self._report_first_attempt(exc)
                    log.warning("ami.connect_failed", error=repr(exc), attempt=attempt + 1)
                else:
                    self.last_error = None
                    self._report_first_attempt(None)
                    up_since = time.monotonic()
                    await self._serve(link)
                    if self._closing:
                        return
                    # A link that outlived the longest backoff was healthy: start over.
                    if time.monotonic() - up_since > self.reconnect_cap:
                        attempt = 0
                self._set_state(LinkState.DISCONNECTED)
                attempt += 1
                delay = backoff_delay(attempt, self.reconnect_base, self.reconnect_cap, self._rand)
                log.info("ami.reconnect_wait", delay=round(delay, 3), attempt=attempt)
                await asyncio.sleep(delay)
        finally:
            if self._link is not None:
                await self._link.close("client closed")
                self._link = None
            self._report_first_attempt(AMIDisconnected("client closed"))

    def _report_first_attempt(self, error: BaseException | None) -> None:
        first = self._first_attempt
        if first is None or first.done():
            return
        if error is None:
            first.set_result(None)
        else:
            first.set_exception(error)
            first.exception()  # retrieved: with start() nobody awaits it

    async def _open_link(self) -> _Link:
        """Connect, read the banner, log in. The link is closed again on any failure."""
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise AMIConnectionError(f"cannot connect to {where}: {exc!r}") from exc
        link = _Link(reader, writer, self._put_event, self._reader_errors, self.event_names)
        self._link = link
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    self.banner = await link.banner
            except TimeoutError:
                raise AMIConnectionError(f"no banner from {where}") from None
            await self._login(link)
        except BaseException:
            self._link = None
            await link.close("login failed")
            raise
        log.info("ami.logged_in", banner=self.banner, md5=self.use_md5)
        self.links += 1
        self._reader_errors.succeeded()
        return link

    async def _login(self, link: _Link) -> None:
        # connect_timeout, not action_timeout: Asterisk waits 1 s before refusing a login.
        timeout = self.connect_timeout
        fields: list[tuple[str, str]] = [("Username", self.username)]
        if self.use_md5:
            challenge, _ = await link.request(
                "Challenge", next(self._ids), [("AuthType", "MD5")], timeout, False
            )
            if not challenge.ok or not challenge.get("Challenge"):
                raise AMIAuthError(f"MD5 challenge refused: {challenge.message}")
            key = hashlib.md5((challenge["Challenge"] + self.secret).encode()).hexdigest()
            fields += [("AuthType", "MD5"), ("Key", key)]
        else:
            fields.append(("Secret", self.secret))
        fields.append(("Events", self.events_mask))
        response, _ = await link.request("Login", next(self._ids), fields, timeout, False)
        if not response.ok:
            raise AMIAuthError(f"login refused for {self.username!r}: {response.message}")

    async def _serve(self, link: _Link) -> None:
        """Run the link until it is lost; keep it alive with Pings meanwhile."""
        self._set_state(LinkState.CONNECTED)
        pinger = asyncio.create_task(self._keepalive(link), name="ami-keepalive")
        try:
            await link.lost.wait()
            log.warning("ami.link_lost", reason=link.reason)
        finally:
            await cancel_and_wait(pinger)
            self._link = None
            await link.close("link lost")

    async def _keepalive(self, link: _Link) -> None:
        if not self.ping_interval:
            return
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await link.request("Ping", next(self._ids), (), self.action_timeout, False)
            except AMIActionTimeout:
                link.abort(f"no reply to Ping in {self.action_timeout}s")
                return
            except AMIDisconnected:
                return

    # ---- events ---------------------------------------------------------------------------

    def _put_event(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # drop the oldest
            self.dropped_events += 1
            if self.dropped_events == 1 or self.dropped_events % 1000 == 0:
                log.warning("ami.events_dropped", total=self.dropped_events)
        self._queue.put_nowait(event)

    async def get_event(self) -> Event | None:
        """The next event; None once the client is closed and the queue is empty."""
        if self._closing and self._queue.empty():
            return None
        return await self._queue.get()

    def events(self) -> _EventIterator:
        """`async for event in client.events():` until the client is closed (one consumer)."""
        return _EventIterator(self)

    def __aiter__(self) -> _EventIterator:
        return _EventIterator(self)

    # ---- actions ----------------------------------------------------------------------------

    def new_action_id(self) -> str:
        return next(self._ids)

    async def send_action(
        self,
        name: str,
        fields: Fields = (),
        *,
        timeout: float | None = None,
        action_id: str | None = None,
    ) -> Response:
        """Send one action and return its Response (`Response: Error` is returned, not raised).

        Raises AMIDisconnected (link down, or lost before the reply) or AMIActionTimeout.
        """
        response, _ = await self._request(name, fields, timeout, action_id, False)
        return response

    async def send_action_list(
        self,
        name: str,
        fields: Fields = (),
        *,
        timeout: float | None = None,
        action_id: str | None = None,
    ) -> tuple[Response, list[Event]]:
        """Send an action answered by an event list (`EventList: start` ... `Complete`).

        Returns the Response and the events between, without the closing `...Complete`
        event. The timeout covers the whole list. If the Response does not start a list
        (e.g. `Response: Error`), the list is empty.
        """
        return await self._request(name, fields, timeout, action_id, True)

    async def _request(
        self,
        name: str,
        fields: Fields,
        timeout: float | None,
        action_id: str | None,
        collect_list: bool,
    ) -> tuple[Response, list[Event]]:
        link = self._link
        if link is None or not self.connected:
            raise AMIDisconnected(f"AMI link is {self._state.value}; {name} not sent", sent=False)
        action_id = action_id or next(self._ids)
        if action_id in link.pending:
            raise ValueError(f"ActionID {action_id!r} is already waiting for a reply")
        timeout = self.action_timeout if timeout is None else timeout
        return await link.request(name, action_id, fields, timeout, collect_list)
