"""The FastAGI server over real sockets: recorded Asterisk traffic, deadlines, drain, limits."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import select
import socket
import time

import pytest
import structlog
from structlog.testing import capture_logs

from transcripts import FROM_ASTERISK, TRANSCRIPTS_DIR, read_transcript
from zvonok_agi.agi.client import agi_call, recorded_environment
from zvonok_agi.agi.protocol import HANGUP_LINE, encode_environment
from zvonok_agi.agi.server import FastAGIServer, ServerConfig, run_server
from zvonok_agi.agi.session import AGISession

RECORDED = read_transcript(TRANSCRIPTS_DIR / "agi_env_and_commands.txt")
ENV_BLOCK = b"".join(e.data for e in RECORDED if e.direction == FROM_ASTERISK)[
    : b"".join(e.data for e in RECORDED if e.direction == FROM_ASTERISK).index(b"\n\n") + 2
]


async def route_to(session: AGISession) -> None:
    await session.set_variable("ROUTE", "handled")


async def fallback(session: AGISession, why: str) -> None:
    await session.set_variable("ROUTE", "fallback")
    await session.set_variable("WHY", why)


def config(**overrides) -> ServerConfig:
    return ServerConfig(port=0, **overrides)


async def asterisk(port: int, payload: bytes, *, reply_delay: float = 0.0,
                   close_after_send: bool = False) -> list[bytes]:
    """A raw Asterisk side: send `payload`, answer every command `200 result=1`, return the
    command lines received until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    if close_after_send:
        writer.close()
        return []
    commands = []
    try:
        while line := await reader.readline():
            commands.append(line)
            await asyncio.sleep(reply_delay)
            writer.write(b"200 result=1\n")
            await writer.drain()
    except ConnectionResetError:
        pass  # the server closed while our env block was still unread: it never read it
    finally:
        writer.close()
    return commands


async def wait_idle(server, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while server.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.connections == 0


async def test_recorded_env_block_reaches_the_handler_and_the_socket_closes():
    seen = {}

    async def handler(session: AGISession) -> None:
        seen["env"] = session.env
        await route_to(session)

    async with run_server({"route": handler}, fallback, config()) as server:
        commands = await asterisk(server.port, ENV_BLOCK)
        await wait_idle(server)
    assert commands == [b'SET VARIABLE "ROUTE" "handled"\n']
    assert seen["env"].get("agi_callerid") == "79161234567"
    assert seen["env"].get("agi_accountcode") == ""


@pytest.mark.parametrize("cut", [0, 1, 17, len(ENV_BLOCK) // 2, len(ENV_BLOCK) - 1])
async def test_eof_before_the_env_block_ends_closes_the_session_without_spinning(cut):
    async with run_server({"route": route_to}, fallback, config()) as server:
        cpu = time.process_time()
        await asterisk(server.port, ENV_BLOCK[:cut], close_after_send=True)
        await wait_idle(server)
        await asyncio.sleep(0.2)
        assert time.process_time() - cpu < 0.2
    assert server.sessions_total == 0  # never a session: it took no slot


async def test_hangup_before_and_between_commands_does_not_desync():
    async def handler(session: AGISession) -> None:
        first = await session.command("GET VARIABLE", "X")
        second = await session.command("GET VARIABLE", "Y")
        await session.set_variable("RESULTS", f"{first.result},{second.result},{session.hungup}")

    async with run_server({"route": handler}, fallback, config()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(ENV_BLOCK + HANGUP_LINE)  # the caller hung up at once (transcript: CANCEL)
        lines = []
        for reply in (b"HANGUP\n200 result=1 (x)\n", b"200 result=0\n", b"200 result=1\n"):
            lines.append(await reader.readline())
            writer.write(reply)
        assert await reader.read() == b""  # the server closed
        writer.close()
    assert lines[2] == b'SET VARIABLE "RESULTS" "1,0,True"\n'


async def test_agiexitonhangup_recording_replayed_ends_cleanly():
    """Asterisk sends HANGUP twice then closes: the session ends, nothing stays open."""
    recorded = read_transcript(TRANSCRIPTS_DIR / "agi_hangup_midway_agiexitonhangup.txt")
    from_asterisk = [e.data for e in recorded if e.direction == FROM_ASTERISK]
    calls = []

    async def handler(session: AGISession) -> None:
        calls.append(await session.command("GET VARIABLE", "CALLERID(num)"))
        await asyncio.sleep(0.05)
        await session.command("GET VARIABLE", "CALLERID(num)")

    async with run_server({"route": handler}, fallback, config()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        env_end = from_asterisk.index(b"\n") + 1
        writer.write(b"".join(from_asterisk[:env_end]))
        await reader.readline()
        writer.write(b"".join(d for d in from_asterisk[env_end:] if d))  # reply, HANGUP x2
        writer.write_eof()
        await reader.read()
        writer.close()
        await wait_idle(server)
    assert calls[0].data == "79161234567"


async def test_unknown_script_gets_the_fallback():
    async with run_server({"inbound": route_to}, fallback, config()) as server:
        commands = await asterisk(server.port, ENV_BLOCK)  # script "route" is not served
    assert commands[0] == b'SET VARIABLE "ROUTE" "fallback"\n'
    assert b"no handler" in commands[1]


async def test_handler_exception_gets_the_fallback():
    async def broken(session: AGISession) -> None:
        raise RuntimeError("boom")

    async with run_server({"route": broken}, fallback, config()) as server:
        commands = await asterisk(server.port, ENV_BLOCK)
    assert commands == [
        b'SET VARIABLE "ROUTE" "fallback"\n',
        b'SET VARIABLE "WHY" "engine error"\n',
    ]


async def test_session_deadline_sends_the_handlers_own_fallback():
    async def slow(session: AGISession) -> None:
        async def mine(why: str) -> None:
            await session.set_variable("ROUTE", f"known-without-store ({why})")

        session.on_failure = mine
        await asyncio.sleep(30)

    async with run_server({"route": slow}, fallback, config(session_deadline=0.2)) as server:
        started = time.monotonic()
        commands = await asterisk(server.port, ENV_BLOCK)
        assert time.monotonic() - started < 10  # the deadline, not the handler's 30 s
    assert commands == [b'SET VARIABLE "ROUTE" "known-without-store (session deadline passed)"\n']


async def test_shutdown_drains_then_ends_late_sessions_with_a_route():
    gate = asyncio.Event()

    async def quick_after_gate(session: AGISession) -> None:
        await gate.wait()
        await route_to(session)

    async def stuck(session: AGISession) -> None:
        await asyncio.sleep(30)

    routes = {"quick": quick_after_gate, "stuck": stuck}
    cfg = config(session_deadline=60, drain_deadline=0.3)
    async with run_server(routes, fallback, cfg) as server:
        env_quick = encode_environment(recorded_environment("74951234567", "79161234567", "quick"))
        env_stuck = encode_environment(recorded_environment("74951234567", "79161234567", "stuck"))
        quick = asyncio.create_task(asterisk(server.port, env_quick))
        stuck_call = asyncio.create_task(asterisk(server.port, env_stuck))
        while server.active_sessions < 2:
            await asyncio.sleep(0.01)
        shutdown = asyncio.create_task(server.shutdown())
        await asyncio.sleep(0.1)
        with pytest.raises(OSError):  # no longer accepting
            await asyncio.open_connection("127.0.0.1", server.port)
        gate.set()  # the in-flight quick session finishes within the drain deadline
        started = time.monotonic()
        await shutdown
        assert time.monotonic() - started < 10  # the drain deadline, not the 60 s session's
    assert await quick == [b'SET VARIABLE "ROUTE" "handled"\n']
    assert (await stuck_call)[0] == b'SET VARIABLE "ROUTE" "fallback"\n'


async def test_peer_outside_the_allowlist_is_closed_at_once():
    async with run_server({"route": route_to}, fallback, config(allow=["10.0.0.0/8"])) as server:
        commands = await asterisk(server.port, ENV_BLOCK)
    assert commands == []
    assert server.sessions_total == 0


async def test_sessions_beyond_the_cap_are_turned_away():
    release = asyncio.Event()

    async def holding(session: AGISession) -> None:
        await release.wait()
        await route_to(session)

    async with run_server({"route": holding}, fallback, config(max_sessions=2)) as server:
        held = [asyncio.create_task(asterisk(server.port, ENV_BLOCK)) for _ in range(2)]
        while server.active_sessions < 2:
            await asyncio.sleep(0.01)
        assert await asterisk(server.port, ENV_BLOCK) == []  # closed: dialplan's engine_error
        release.set()
        assert [await task for task in held] == [[b'SET VARIABLE "ROUTE" "handled"\n']] * 2
    assert server.sessions_rejected == 1


async def test_agi_call_client_reads_what_the_server_set():
    async def handler(session: AGISession) -> None:
        await session.set_variable("ZV_ROUTE", "inbound")
        await session.set_variable("ZV_REASON", 'a "quoted" (reason)')

    async with run_server({"inbound": handler}, fallback, config()) as server:
        variables = await agi_call("127.0.0.1", server.port, "74951234567", "79161234567")
    assert variables == {"ZV_ROUTE": "inbound", "ZV_REASON": 'a "quoted" (reason)'}


# --- connections that send nothing, floods, the listen backlog, shutdown ----------------------


async def idle_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5.0) == b""
    except ConnectionResetError:
        return True


async def test_connections_that_send_nothing_take_no_session_slot():
    async with run_server({"route": route_to}, fallback, config(max_sessions=2)) as server:
        idle = [await idle_connection(server.port) for _ in range(20)]
        calls = await asyncio.gather(*(asterisk(server.port, ENV_BLOCK) for _ in range(5)))
        assert calls == [[b'SET VARIABLE "ROUTE" "handled"\n']] * 5
        assert server.sessions_rejected == 0
        for _, writer in idle:
            writer.close()


async def test_a_connection_without_its_env_block_in_time_is_closed():
    async with run_server({"route": route_to}, fallback, config(env_deadline=0.2)) as server:
        reader, writer = await idle_connection(server.port)
        writer.write(ENV_BLOCK[:40])  # a start, and then nothing
        assert await closed_by_server(reader)
        writer.close()
        await wait_idle(server)
    assert server.sessions_total == 0


async def test_past_the_pending_cap_of_a_peer_its_oldest_pending_connection_is_closed():
    cfg = config(max_pending_per_peer=5, env_deadline=30, session_deadline=30)
    async with run_server({"route": route_to}, fallback, cfg) as server:
        idle = [await idle_connection(server.port) for _ in range(5)]
        while server.connections < 5:
            await asyncio.sleep(0.01)
        commands = await asterisk(server.port, ENV_BLOCK)  # the sixth: the oldest makes room
        assert commands == [b'SET VARIABLE "ROUTE" "handled"\n']
        assert await closed_by_server(idle[0][0])
        newer = [await idle_connection(server.port) for _ in range(2)]  # 5 pending, then 6
        assert await closed_by_server(idle[1][0])  # so the next oldest goes
        for _, writer in [*idle, *newer]:
            writer.close()


async def test_at_the_pending_cap_a_silent_connection_goes_before_one_that_has_sent_bytes():
    cfg = config(max_pending_per_peer=3, env_deadline=30, session_deadline=30)
    async with run_server({"route": route_to}, fallback, cfg) as server:
        reading = [await idle_connection(server.port) for _ in range(2)]
        for _, writer in reading:
            writer.write(ENV_BLOCK[:40])  # the start of an env block
        silent = await idle_connection(server.port)  # younger, and has sent nothing
        while server.connections < 3:
            await asyncio.sleep(0.01)
        late = await idle_connection(server.port)  # the fourth
        assert await closed_by_server(silent[0])
        for _, writer in reading:
            writer.write(ENV_BLOCK[40:])  # the older ones still become sessions
        for reader, _ in reading:
            assert await reader.readline() == b'SET VARIABLE "ROUTE" "handled"\n'
        for _, writer in [*reading, silent, late]:
            writer.close()


async def test_late_connections_are_closed_a_batch_at_a_time_the_oldest_first():
    """Idle connections that came together are not closed together (they would come back
    together): each sweep closes a batch. The sweep is called here with a time of the test's
    own; the server's sweeper waits 30 s."""
    cfg = config(env_deadline=30, session_deadline=30)
    async with run_server({"route": route_to}, fallback, cfg) as server:
        idle = []
        for _ in range(25):
            idle.append(await idle_connection(server.port))
            while server.connections < len(idle):  # accepted in this order
                await asyncio.sleep(0.01)
        later = asyncio.get_running_loop().time() + 60
        assert server._close_late(later, 10) == 10
        assert server.connections == 15
        for reader, _ in idle[:10]:
            assert await closed_by_server(reader)
        assert server._close_late(later, 10) == 10
        assert server._close_late(later, 10) == 5
        assert server.connections == 0
        for _, writer in idle:
            writer.close()


async def test_with_a_pending_cap_of_one_each_new_connection_closes_the_one_before():
    cfg = config(max_pending_per_peer=1, env_deadline=30, session_deadline=30)
    async with run_server({"route": route_to}, fallback, cfg) as server:
        idle = []
        for _ in range(3):
            idle.append(await idle_connection(server.port))
            if len(idle) > 1:
                assert await closed_by_server(idle[-2][0])
            while server.connections != 1:
                await asyncio.sleep(0.01)
        assert await asterisk(server.port, ENV_BLOCK) == [b'SET VARIABLE "ROUTE" "handled"\n']
        assert await closed_by_server(idle[-1][0])
        for _, writer in idle:
            writer.close()


async def test_out_of_descriptors_accepting_pauses_instead_of_spinning_then_goes_on():
    async with run_server({"route": route_to}, fallback, config()) as server:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        clients = []
        with capture_logs() as logs:
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
            try:
                with pytest.raises(OSError):  # EMFILE: every descriptor taken by a client
                    while True:
                        clients.append(socket.create_connection(("127.0.0.1", server.port)))
                for _ in range(20):  # the server's turns, with connections it cannot accept
                    await asyncio.sleep(0.01)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for sock in clients:
                sock.sendall(ENV_BLOCK)
            served = await asyncio.gather(*(answer_on(sock) for sock in clients))
        assert served == [[b'SET VARIABLE "ROUTE" "handled"\n']] * len(clients)
    pauses = [entry for entry in logs if entry["event"] == "fastagi cannot accept: pausing"]
    assert len(pauses) == 1


@pytest.fixture
def collector_paused():
    """The garbage collector runs only when the test calls it."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


async def test_a_connection_that_sends_nothing_holds_nothing_the_collector_walks(
    collector_paused,
):
    """An idle connection is a descriptor in a selector (its key the one object tracked), not
    a transport with its protocol objects: a flood of them would make every collection walk
    more than a dozen objects each."""
    async with run_server({"route": route_to}, fallback, config()) as server:
        clients = [socket.socket() for _ in range(200)]
        gc.collect()
        before = len(gc.get_objects())
        for sock in clients:
            sock.connect(("127.0.0.1", server.port))
        while server.connections < len(clients):
            await asyncio.sleep(0.01)
        gc.collect()  # what is still tracked lives as long as the connections
        held = len(gc.get_objects()) - before
        for sock in clients:
            sock.close()
    assert held < 2 * len(clients)


async def test_connections_closed_for_want_of_an_env_block_leave_no_garbage(collector_paused):
    """Closed, they are freed at once, not left in reference cycles for the collector."""
    async with run_server({"route": route_to}, fallback, config(env_deadline=0.2)) as server:
        clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        await wait_idle(server)  # every one closed by the server
        garbage = gc.collect()
        for sock in clients:
            sock.close()
    assert garbage < 10  # a transport each: 600


async def test_warnings_about_turned_away_connections_are_counted_not_repeated():
    async with run_server({"route": route_to}, fallback, config(allow=["10.0.0.0/8"])) as server:
        with capture_logs() as logs:
            for _ in range(200):
                await asterisk(server.port, ENV_BLOCK)
            await server.shutdown()  # the counts still open go out
    lines = [entry for entry in logs if entry["event"] == "fastagi peer not allowed"]
    assert [entry.get("repeated") for entry in lines] == [None, 199]


def established(sockets: list[socket.socket]) -> int:
    """How many non-blocking connects completed (the kernel's handshake, nothing accepted)."""
    count = 0
    for sock in sockets:
        _, writable, _ = select.select([], [sock], [], 0)
        if writable and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            count += 1
    return count


@pytest.mark.parametrize(("backlog", "most"), [(None, 300), (100, 101)])
async def test_a_burst_waits_in_the_listen_backlog(backlog, most):
    """While the server's loop is busy, the kernel completes connections into the backlog;
    past it their SYNs are dropped and retried a second later. The default holds a burst."""
    overrides = {} if backlog is None else {"backlog": backlog}
    async with run_server({"route": route_to}, fallback, config(**overrides)) as server:
        burst = []
        try:
            for _ in range(300):  # the loop does not run meanwhile: nothing is accepted
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", server.port))
                burst.append(sock)
            done = 0
            for _ in range(50):  # handshakes on loopback: well within this
                time.sleep(0.01)
                done = established(burst)
                if done >= most:
                    break
            time.sleep(0.05)
            assert established(burst) == most
        finally:
            for sock in burst:
                sock.close()


async def test_a_timeout_inside_a_handler_is_an_engine_error_not_the_deadline():
    async def times_out(session: AGISession) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    async with run_server({"route": times_out}, fallback, config()) as server:
        commands = await asterisk(server.port, ENV_BLOCK)
    assert commands[1] == b'SET VARIABLE "WHY" "engine error"\n'


async def test_shutdown_waits_for_every_connection_including_those_waiting_for_a_slot():
    running: set[asyncio.Task] = set()

    async def stuck(session: AGISession) -> None:
        task = asyncio.current_task()
        running.add(task)
        try:
            await asyncio.sleep(30)
        finally:
            running.discard(task)

    cfg = config(max_sessions=1, session_deadline=30, drain_deadline=0.1, env_deadline=30)
    server = FastAGIServer({"route": stuck}, fallback, cfg)
    await server.start()
    calls = [asyncio.create_task(asterisk(server.port, ENV_BLOCK)) for _ in range(2)]
    idle = await idle_connection(server.port)  # and one that never sends its env block
    while server.connections < 3:
        await asyncio.sleep(0.01)
    await server.shutdown()
    assert not running  # no handler outlives the shutdown
    assert server.connections == 0
    assert await closed_by_server(idle[0])
    idle[1].close()
    async with asyncio.timeout(10):
        ended = await asyncio.gather(*calls)
    assert [commands[:1] for commands in ended].count([b'SET VARIABLE "ROUTE" "fallback"\n']) >= 1


async def test_shutdown_lets_a_session_already_sending_its_fallback_finish():
    async def broken(session: AGISession) -> None:
        raise RuntimeError("boom")

    async with run_server({"route": broken}, fallback, config(drain_deadline=0.05)) as server:
        call = asyncio.create_task(asterisk(server.port, ENV_BLOCK, reply_delay=0.3))
        while not server.connections:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the handler failed at once: its fallback is on the way
        await server.shutdown()
    assert await call == [
        b'SET VARIABLE "ROUTE" "fallback"\n',
        b'SET VARIABLE "WHY" "engine error"\n',
    ]


async def test_a_protocol_error_between_commands_reaches_the_next_command():
    """Bytes are parsed as they arrive: garbage while no command waits fails the next one
    with the protocol error (not as a closed session), and the fallback is not attempted on
    a broken connection."""
    seen: list[BaseException] = []

    async def handler(session: AGISession) -> None:
        await session.command("GET VARIABLE", "X")
        await asyncio.sleep(0.1)  # the garbage arrives now
        try:
            await session.command("GET VARIABLE", "Y")
        except Exception as exc:
            seen.append(exc)
            raise

    async with run_server({"route": handler}, fallback, config()) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(ENV_BLOCK)
        assert await reader.readline() == b'GET VARIABLE "X"\n'
        with capture_logs() as logs:
            writer.write(b"200 result=1 (x)\nnot a reply\n")
            assert await reader.read() == b""  # nothing more sent: closed
        writer.close()
        await wait_idle(server)
    assert [type(exc).__name__ for exc in seen] == ["AGIProtocolError"]
    assert any(entry["event"] == "fastagi protocol error" for entry in logs)


async def answer_on(sock: socket.socket) -> list[bytes]:
    """`asterisk()` on a connection already made (its env block already sent)."""
    reader, writer = await asyncio.open_connection(sock=sock)
    commands = []
    try:
        while line := await reader.readline():
            commands.append(line)
            writer.write(b"200 result=1\n")
            await writer.drain()
    finally:
        writer.close()
    return commands


async def test_not_listening_refuses_and_serves_the_connections_already_completed():
    """Closing the listener would reset the connections the kernel completed while the loop
    was busy (Asterisk has sent their env blocks): they are taken first and served."""
    async with run_server({"route": route_to}, fallback, config()) as server:
        port = server.port
        # The loop does not run meanwhile: the kernel completes these, nobody accepts them.
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        for sock in waiting:
            sock.sendall(ENV_BLOCK)
        server.stop_listening()
        assert not server.listening
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        async with asyncio.timeout(10):
            served = await asyncio.gather(*(answer_on(sock) for sock in waiting))
        assert served == [[b'SET VARIABLE "ROUTE" "handled"\n']] * 5

        await server.listen()  # on the same port again
        assert server.listening and server.port == port
        assert await asterisk(port, ENV_BLOCK) == [b'SET VARIABLE "ROUTE" "handled"\n']


async def test_shutdown_waits_for_the_connections_taken_from_the_listener():
    async def slow(session: AGISession) -> None:
        await asyncio.sleep(0.2)
        await session.set_variable("ROUTE", "handled")

    server = FastAGIServer({"route": slow}, fallback, config())
    await server.start()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(ENV_BLOCK)
    answered = asyncio.create_task(answer_on(sock))
    await server.shutdown()  # takes the completed connection, then drains it
    assert server.connections == 0
    assert await answered == [b'SET VARIABLE "ROUTE" "handled"\n']
    await server.listen()
    assert not server.listening  # never again once shut down


async def test_each_sessions_log_lines_name_that_session_and_no_other():
    log = structlog.get_logger("test")

    async def logs(session: AGISession) -> None:
        log.info("in the handler", did=session.env.get("agi_extension"))
        await route_to(session)

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs_seen:
        async with run_server({"route": logs}, fallback, config()) as server:
            await asyncio.gather(*(asterisk(server.port, ENV_BLOCK) for _ in range(3)))
        log.info("outside")
    lines = [entry for entry in logs_seen if entry["event"] == "in the handler"]
    assert sorted(entry["session"] for entry in lines) == [1, 2, 3]
    (outside,) = [entry for entry in logs_seen if entry["event"] == "outside"]
    assert "session" not in outside


async def test_sessions_leave_no_timers_behind():
    """The sweep brings a late session's deadline forward: no timer per session, which stayed
    in the loop's heap, with the call's context, for seconds after the call had ended."""
    loop = asyncio.get_running_loop()
    async with run_server({"route": route_to}, fallback, config()) as server:
        await asterisk(server.port, ENV_BLOCK)
        before = len(loop._scheduled)  # the sweep's, the repeated warnings'
        for _ in range(50):
            await asterisk(server.port, ENV_BLOCK)
        assert len(loop._scheduled) <= before + 1
