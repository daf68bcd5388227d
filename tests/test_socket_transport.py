"""The FastAGI server's socket transport, over real connected sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from zvonok_agi.agi.socket_transport import SocketTransport


class Recorder(SocketTransport):
    """Keeps what the transport tells it."""

    __slots__ = ("data", "eof", "keep_open", "lost_calls")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, keep_open=False):
        super().__init__(loop, sock)
        self.data = bytearray()
        self.eof = False
        self.keep_open = keep_open
        self.lost_calls = 0

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return self.keep_open

    def connection_lost(self) -> None:
        self.lost_calls += 1


@contextlib.contextmanager
def connected_pair():
    """A connected TCP pair: the transport's socket (non-blocking) and its peer's."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    with peer, ours:
        yield ours, peer


@pytest.fixture
def pair():
    with connected_pair() as sockets:
        yield sockets


async def until(condition, turns: int = 1000) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def read_all(sock: socket.socket) -> bytes:
    """Everything the peer is sent until the transport closes its side."""
    sock.setblocking(True)
    sock.settimeout(5)
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_bytes_come_in_order_and_eof_closes_it_once(pair):
    ours, peer = pair
    transport = Recorder(asyncio.get_running_loop(), ours)
    transport.start_reading()
    peer.sendall(b"agi_network: yes\n")
    peer.sendall(b"\n")
    peer.shutdown(socket.SHUT_WR)
    await until(lambda: transport.lost)
    assert transport.data == b"agi_network: yes\n\n"
    assert transport.eof
    assert transport.lost_calls == 1
    transport.close()
    transport.abort()
    assert transport.lost_calls == 1


async def test_half_closed_it_still_writes_then_closes(pair):
    ours, peer = pair
    transport = Recorder(asyncio.get_running_loop(), ours, keep_open=True)
    transport.start_reading()
    peer.shutdown(socket.SHUT_WR)
    await until(lambda: transport.eof)
    assert not transport.lost
    transport.write(b'SET VARIABLE "ZV_DECIDED" "1"\n')
    transport.close()
    assert transport.lost_calls == 1
    assert read_all(peer) == b'SET VARIABLE "ZV_DECIDED" "1"\n'


async def test_what_the_socket_does_not_take_is_sent_when_it_can_then_closed(pair):
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport = Recorder(asyncio.get_running_loop(), ours)
    payload = bytes(range(256)) * 256  # 64 KB: far more than the buffers hold
    transport.write(payload[:1000])
    transport.write(payload[1000:])
    transport.write(b"end\n")
    assert transport._buffer  # the socket took only part of it
    transport.close()
    assert not transport.lost  # closed only once all of it is sent
    received = await asyncio.to_thread(read_all, peer)
    assert received == payload + b"end\n"
    assert transport.lost_calls == 1


async def test_abort_drops_what_was_not_sent(pair):
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = Recorder(asyncio.get_running_loop(), ours)
    transport.write(b"x" * (1 << 20))
    assert transport._buffer
    transport.abort()
    assert transport.lost_calls == 1
    assert len(read_all(peer)) < 1 << 20


async def test_a_write_to_a_reset_peer_loses_the_connection_without_raising(pair):
    ours, peer = pair
    transport = Recorder(asyncio.get_running_loop(), ours)
    transport.start_reading()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # linger 0: a reset
    await until(lambda: transport.lost)
    assert transport.lost_calls == 1
    transport.write(b"too late\n")  # nothing happens
    assert transport.is_closing()


async def test_nothing_is_read_while_paused(pair):
    ours, peer = pair
    transport = Recorder(asyncio.get_running_loop(), ours)
    transport.start_reading()
    transport.pause_reading()
    peer.sendall(b"200 result=1\n")
    await asyncio.sleep(0.02)
    assert transport.data == b""
    transport.start_reading()
    await until(lambda: transport.data)
    assert transport.data == b"200 result=1\n"
    transport.close()


SCENARIOS = [
    test_bytes_come_in_order_and_eof_closes_it_once,
    test_half_closed_it_still_writes_then_closes,
    test_what_the_socket_does_not_take_is_sent_when_it_can_then_closed,
    test_abort_drops_what_was_not_sent,
    test_a_write_to_a_reset_peer_loses_the_connection_without_raising,
    test_nothing_is_read_while_paused,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__[5:])
def test_the_same_on_uvloop(scenario):
    """uvloop is the event loop production installs run on."""
    uvloop = pytest.importorskip("uvloop")
    with connected_pair() as sockets, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario(sockets))
