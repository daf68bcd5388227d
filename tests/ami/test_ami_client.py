"""The asyncio AMI client against the fake peer that replays real Asterisk traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from structlog.testing import capture_logs

from conftest import background_errors
from fake_ami import ORIGINATE_CASES, FakeAMI, packets, recording
from zvonok_agi.ami import client as client_module
from zvonok_agi.ami.client import (
    AMIActionTimeout,
    AMIAuthError,
    AMIClient,
    AMIConnectionError,
    AMIDisconnected,
    LinkState,
    backoff_delay,
)
from zvonok_agi.ami.protocol import Event

NUMBERS = {case: f"7900000000{i}" for i, case in enumerate(ORIGINATE_CASES)}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAMI]:
    async with FakeAMI(cases={number: case for case, number in NUMBERS.items()}) as peer:
        yield peer


def make_client(peer: FakeAMI, **options: object) -> AMIClient:
    settings: dict[str, object] = {
        "action_timeout": 2.0,
        "ping_interval": 60.0,
        "reconnect_base": 0.01,
        "reconnect_cap": 0.05,
    }
    settings.update(options)
    secret = str(settings.pop("secret", "labsecret"))
    return AMIClient("127.0.0.1", peer.port, "lab", secret, **settings)  # type: ignore[arg-type]


def ami_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("ami-") and not t.done()]


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def next_event(client: AMIClient) -> Event:
    async with asyncio.timeout(2):
        event = await client.get_event()
    assert event is not None
    return event


def originate_fields(case: str, channel_id: str | None = None) -> list[tuple[str, str]]:
    fields = [
        ("Channel", f"PJSIP/{NUMBERS[case]}@carrier"),
        ("Context", "campaign-outbound"),
        ("Exten", "s"),
        ("Priority", "1"),
        ("CallerID", '"Svc" <74950000001>'),
        ("Async", "true"),
    ]
    if channel_id:
        fields.append(("ChannelId", channel_id))
    return fields


@pytest.mark.parametrize("use_md5", [True, False])
async def test_login_then_ping(fake: FakeAMI, use_md5: bool) -> None:
    async with make_client(fake, use_md5=use_md5) as ami:
        assert ami.connected and ami.state is LinkState.CONNECTED
        assert ami.banner == "Asterisk Call Manager/11.0.0"
        assert fake.logins == ["md5" if use_md5 else "plain"]
        pong = await ami.send_action("Ping")
        assert pong.ok and pong["Ping"] == "Pong"
        assert (await next_event(ami)).name == "FullyBooted"
    assert ami.state is LinkState.CLOSED
    assert [a.name for a in fake.actions][-1] == "Logoff"
    assert ami_tasks() == []


@pytest.mark.parametrize("use_md5", [True, False])
async def test_bad_login_raises_auth_error_and_stops(fake: FakeAMI, use_md5: bool) -> None:
    with pytest.raises(AMIAuthError, match="Authentication failed"):
        async with make_client(fake, secret="wrong", use_md5=use_md5):
            pass
    assert fake.login_failures == 1
    assert ami_tasks() == []


async def test_bad_login_is_an_auth_error_despite_asterisks_delay() -> None:
    async with FakeAMI(auth_fail_delay=0.3) as fake:  # Asterisk sleeps 1 s
        ami = make_client(fake, secret="wrong", action_timeout=0.1, connect_timeout=1.0)
        with pytest.raises(AMIAuthError):
            await ami.connect()


async def test_bad_login_in_background_backs_off(fake: FakeAMI) -> None:
    ami = make_client(
        fake, secret="wrong", reconnect_base=0.05, reconnect_cap=0.2, rand=lambda: 1.0
    )
    ami.start()
    await asyncio.sleep(0.6)
    # Delays 0.05, 0.1, 0.2, 0.2 ...: about 5 attempts in 0.6 s, not hundreds.
    assert 2 <= fake.login_failures <= 6
    assert isinstance(ami.last_error, AMIAuthError)
    assert not ami.connected
    await ami.close()
    assert ami_tasks() == []


async def test_connection_refused_raises_connection_error(fake: FakeAMI) -> None:
    await fake.stop_listening()
    with pytest.raises(AMIConnectionError):
        await make_client(fake).connect()
    assert ami_tasks() == []


async def test_action_timeout_keeps_the_link(fake: FakeAMI) -> None:
    fake.ignore_actions = {"command"}
    async with make_client(fake) as ami:
        started = time.monotonic()
        with pytest.raises(AMIActionTimeout, match="Command"):
            await ami.send_action("Command", [("Command", "core show uptime")], timeout=0.1)
        assert time.monotonic() - started < 10  # its own timeout, not the link's
        assert ami.connected
        assert (await ami.send_action("Ping")).ok
        assert ami._link is not None and ami._link.pending == {}


async def test_error_response_is_returned_not_raised(fake: FakeAMI) -> None:
    async with make_client(fake) as ami:
        response = await ami.send_action(
            "Originate", [("Channel", "PJSIP/1@carrier"), ("Exten", "s")]
        )
        assert not response.ok
        assert response.message == "Originate with 'Exten' requires 'Context' and 'Priority'"


async def test_event_list(fake: FakeAMI) -> None:
    fake.channels = [{"Channel": f"PJSIP/carrier-{n:08x}", "Uniqueid": f"1.{n}"} for n in range(3)]
    async with make_client(fake) as ami:
        response, events = await ami.send_action_list("CoreShowChannels")
        assert response.ok and response.message == "Channels will follow"
        assert [e.name for e in events] == ["CoreShowChannel"] * 3
        assert {e.action_id for e in events} == {response.action_id}
        assert [e["Uniqueid"] for e in events] == ["1.0", "1.1", "1.2"]
        # A list action answered with an error has no list.
        response, events = await ami.send_action_list("NoSuchList")
        assert not response.ok and events == []
        # List items and the Complete event did not leak into the event stream.
        assert (await next_event(ami)).name == "FullyBooted"
        assert ami._queue.empty()


async def test_action_ids_are_unique_and_correlated(fake: FakeAMI) -> None:
    async with make_client(fake) as ami:
        responses = await asyncio.gather(*(ami.send_action("Ping") for _ in range(50)))
        ids = [r.action_id for r in responses]
        assert len(set(ids)) == 50
        assert ids == [a.action_id for a in fake.actions if a.name == "Ping"]


@pytest.mark.parametrize("case", ORIGINATE_CASES)
async def test_originate_receives_the_recorded_events(fake: FakeAMI, case: str) -> None:
    channel_id = f"zv-{case}-1"
    async with make_client(fake) as ami:
        assert (await next_event(ami)).name == "FullyBooted"
        queued = await ami.send_action("Originate", originate_fields(case, channel_id))
        assert queued.message == "Originate successfully queued"
        await fake.wait_replays()
        await ami.send_action("Ping")  # everything sent before the Pong has been read
        expected = [
            packet.decode().split("\r\n")[0].partition(": ")[2]
            for chunk in recording(case).chunks
            for packet in packets(chunk.data)
        ]
        expected.remove("Success")  # the Response; the rest are events, in wire order
        events = [await next_event(ami) for _ in expected]
        assert [e.name for e in events] == expected

    assert fake.originate_count == 1
    result = next(e for e in events if e.name == "OriginateResponse")
    assert result.action_id == queued.action_id == fake.originates[0].action_id
    assert result["Uniqueid"] == channel_id
    for event in events:
        for key in ("Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid"):
            assert event.get(key) in (None, channel_id)
    rang_out = ("noanswer", "nolistener", "ringing_listed", "link_cut")
    reason = "4" if case == "answered" else "3" if case in rang_out else "0"
    assert result["Reason"] == reason
    hangups = [e["Cause"] for e in events if e.name == "Hangup"]
    expected_cause = {"answered": "16", "busy": "17", "busy_with_channelid": "17"}
    assert hangups == ([] if case == "unknown_endpoint" else [expected_cause.get(case, "19")])
    if case != "answered":
        assert result["Channel"] == f"PJSIP/{NUMBERS[case]}@carrier"


async def test_originate_without_channel_id_gets_fresh_ids(fake: FakeAMI) -> None:
    async with make_client(fake) as ami:
        for _ in range(2):
            await ami.send_action("Originate", originate_fields("busy"))
        await fake.wait_replays()
        await ami.send_action("Ping")
        events = []
        while not ami._queue.empty():
            events.append(await next_event(ami))
    hangups = [e for e in events if e.name == "Hangup"]
    results = [e for e in events if e.name == "OriginateResponse"]
    assert len({h["Uniqueid"] for h in hangups}) == 2
    assert len({h["Channel"] for h in hangups}) == 2
    assert [r["Uniqueid"] for r in results] == ["<unknown>", "<unknown>"]


async def test_link_dropped_on_originate_fails_it_at_once_and_never_resends() -> None:
    async with FakeAMI(drop_on_originate=True) as fake:
        ami = make_client(fake, action_timeout=30.0)
        await ami.connect()
        started = time.monotonic()
        with pytest.raises(AMIDisconnected):
            await ami.send_action("Originate", originate_fields("answered", "zv-1"))
        assert time.monotonic() - started < 10  # not after the 30 s action timeout
        fake.drop_on_originate = False
        await eventually(lambda: ami.connected and fake.connections == 2)
        await ami.send_action("Ping")
        await asyncio.sleep(0.1)
        assert fake.originate_count == 1
        await ami.close()


async def test_link_dropped_after_originate_queued_fails_pending_actions() -> None:
    async with FakeAMI(drop_after_originate_queued=True) as fake:
        fake.ignore_actions = {"command"}
        ami = make_client(fake, action_timeout=30.0)
        await ami.connect()
        started = time.monotonic()
        waiting = asyncio.create_task(ami.send_action("Command", [("Command", "x")]))
        await eventually(lambda: len(fake.actions) == 3)  # Challenge, Login, Command
        queued = await ami.send_action("Originate", originate_fields("answered", "zv-2"))
        assert queued.message == "Originate successfully queued"
        with pytest.raises(AMIDisconnected):
            await waiting
        assert time.monotonic() - started < 10  # not after the 30 s action timeout
        fake.drop_after_originate_queued = False
        await eventually(lambda: ami.connected and fake.connections == 2)
        await ami.send_action("Ping")
        assert fake.originate_count == 1
        await ami.close()


async def test_actions_fail_at_once_while_disconnected(fake: FakeAMI) -> None:
    ami = make_client(fake)
    with pytest.raises(AMIDisconnected):
        await ami.send_action("Ping")
    await ami.connect()
    await fake.stop_listening()
    fake.drop()
    await eventually(lambda: not ami.connected)
    with pytest.raises(AMIDisconnected):
        await ami.send_action("Originate", originate_fields("busy"))
    assert fake.originate_count == 0
    await ami.close()


async def test_reconnect_with_backoff(fake: FakeAMI, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[tuple[int, float]] = []

    def recording_backoff(
        attempt: int, base: float, cap: float, rand: Callable[[], float]
    ) -> float:
        delay = backoff_delay(attempt, base, cap, rand)
        delays.append((attempt, delay))
        return delay

    monkeypatch.setattr(client_module, "backoff_delay", recording_backoff)
    states: list[LinkState] = []
    ami = make_client(fake, reconnect_base=0.01, reconnect_cap=0.04)
    ami.add_state_listener(states.append)
    await ami.connect()
    await fake.stop_listening()  # Asterisk restarting: refused for a while
    fake.drop()
    await eventually(lambda: len(delays) >= 5)
    assert not ami.connected
    assert isinstance(ami.last_error, AMIConnectionError)
    await fake.start_listening()
    async with asyncio.timeout(2):
        await ami.wait_connected()
    assert fake.connections == 2 and fake.logins == ["md5", "md5"]
    attempts = [a for a, _ in delays]
    assert attempts[:5] == [1, 2, 3, 4, 5]
    assert all(0.005 <= d <= 0.04 for _, d in delays)
    assert states[:4] == [
        LinkState.CONNECTING,
        LinkState.CONNECTED,
        LinkState.DISCONNECTED,
        LinkState.CONNECTING,
    ]
    assert states[-1] is LinkState.CONNECTED
    await ami.close()
    assert states[-1] is LinkState.CLOSED


def test_backoff_delay_is_exponential_capped_and_jittered() -> None:
    def low() -> float:
        return 0.0

    def high() -> float:
        return 1.0

    assert [backoff_delay(n, 0.5, 30, high) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(1, 0.5, 30, low) == 0.25
    assert backoff_delay(20, 0.5, 30, high) == 30
    assert backoff_delay(20, 0.5, 30, low) == 15


async def test_full_queue_drops_the_oldest_and_counts(fake: FakeAMI) -> None:
    async with make_client(fake, event_queue_size=3) as ami:
        await ami.send_action("Originate", originate_fields("answered", "zv-q"))
        await fake.wait_replays()
        await ami.send_action("Ping")
        replayed = [c for c in recording("answered").chunks if c.data.startswith(b"Event:")]
        assert ami.dropped_events == 1 + len(replayed) - 3  # FullyBooted + the call
        kept = [(await next_event(ami)).name for _ in range(3)]
        assert kept == ["VarSet", "VarSet", "Hangup"]


async def test_keepalive_drops_a_silent_link(fake: FakeAMI) -> None:
    ami = make_client(fake, ping_interval=0.05, action_timeout=0.2, connect_timeout=0.2)
    lost = asyncio.Event()
    ami.add_state_listener(lambda s: lost.set() if s is LinkState.DISCONNECTED else None)
    await ami.connect()
    fake.silent = True  # the TCP link stays up, Asterisk answers nothing
    async with asyncio.timeout(2):
        await lost.wait()
    assert fake.pings >= 1
    fake.silent = False
    async with asyncio.timeout(2):
        await ami.wait_connected()
    await ami.close()


async def test_a_defect_reading_the_link_is_logged_counted_and_the_client_reconnects(
    fake: FakeAMI,
) -> None:
    before = background_errors("ami-reader")
    ami = make_client(fake)
    put_event, defects = ami._put_event, [RuntimeError("injected defect")]

    def fails_once(event: Event) -> None:  # hits the FullyBooted after the first login
        if defects:
            raise defects.pop()
        put_event(event)

    ami._put_event = fails_once  # type: ignore[method-assign]
    with capture_logs() as logs:
        ami.start()
        await eventually(lambda: fake.connections == 2 and ami.connected)
    try:
        await ami.send_action("Originate", originate_fields("answered", "zv-after"))
        while (event := await next_event(ami)).name != "OriginateResponse":
            pass
        assert event["Uniqueid"] == "zv-after"
    finally:
        await ami.close()
    assert background_errors("ami-reader") == before + 1
    [failure] = [e for e in logs if e["event"] == "background loop step failed; going on"]
    assert failure["loop"] == "ami-reader" and "injected defect" in failure["error"]
    [lost] = [e for e in logs if e["event"] == "ami.link_lost"]
    assert lost["reason"] == "internal error: RuntimeError('injected defect')"


async def test_close_ends_consumers_and_leaves_no_task() -> None:
    async with FakeAMI() as fake:
        ami = make_client(fake, ping_interval=0.01)
        seen: list[str] = []

        async def consume() -> None:
            async for event in ami.events():
                seen.append(event.name)

        consumer = asyncio.create_task(consume())
        await ami.connect()
        await ami.send_action("Originate", originate_fields("busy", "zv-c"))
        await fake.wait_replays()
        await asyncio.sleep(0.05)
        await ami.close()
        async with asyncio.timeout(1):
            await consumer
        assert "Hangup" in seen
        await ami.close()  # idempotent
    assert asyncio.all_tasks() == {asyncio.current_task()}


@pytest.mark.parametrize("secret", ["labsecret", "wrong"])
async def test_cancelling_the_supervisor_at_any_moment_stops_it(fake: FakeAMI, secret: str) -> None:
    for step in range(40):
        ami = make_client(fake, secret=secret, reconnect_base=0.001, reconnect_cap=0.002)
        ami.start()
        await asyncio.sleep(step * 0.0005)
        fake.drop()
        await asyncio.sleep(step * 0.0002)
        supervisor = ami._supervisor
        assert supervisor is not None
        supervisor.cancel()
        done, _ = await asyncio.wait([supervisor], timeout=1)
        assert done == {supervisor}
        await ami.close()
    assert ami_tasks() == []


async def test_replay_keeps_recorded_delays_scaled() -> None:
    async with FakeAMI(default_case="noanswer", time_scale=0.005) as fake:  # 10 s -> 50 ms
        async with make_client(fake) as ami:
            await ami.send_action("Originate", originate_fields("noanswer", "zv-t"))
            queued_at = time.monotonic()
            while (event := await next_event(ami)).name != "OriginateResponse":
                pass
            assert time.monotonic() - queued_at >= 0.045
            assert event["Reason"] == "3"


async def test_a_client_asking_for_some_events_gets_those_and_its_lists(fake: FakeAMI) -> None:
    fake.time_scale = 0.01  # the call rings a moment: CoreShowChannels lists it meanwhile
    async with make_client(fake, event_names=("Hangup",)) as ami:
        await ami.send_action("Originate", originate_fields("noanswer", "zv-only-1"))
        await eventually(lambda: fake.calls_in_progress == ["zv-only-1"])
        _, listed = await ami.send_action_list("CoreShowChannels")
        assert [e["Uniqueid"] for e in listed] == ["zv-only-1"]
        await fake.wait_replays()
        await ami.send_action("Ping")
        names = []
        while not ami._queue.empty():
            names.append((await next_event(ami)).name)
    # The OriginateResponse carries the Originate's ActionID: it comes through as well. Not
    # FullyBooted, Newchannel, DialBegin, Newstate, DialState ...
    assert names == ["OriginateResponse", "Hangup"]
