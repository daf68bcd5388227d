"""The floor: the smallest asyncio FastAGI server that does the engine's protocol exchange.

Reads the env block, sends the commands the engine sends for a call (they come from the
benchmark as JSON, so that the count and the byte sizes follow the engine), reads each reply,
closes. No store, no routing, no logging; standard library only.

    python bench/floor_server.py PORT COMMANDS_JSON [asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

READ_TIMEOUT = 5.0


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(words: list[str]) -> bytes:
    verb, *args = words
    return (" ".join([verb, *map(_quote, args)]) + "\n").encode()


async def main(port: int, commands_words: list[list[str]]) -> None:
    commands = [encode(words) for words in commands_words]

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                while True:  # the env block ends with an empty line
                    line = await reader.readline()
                    if not line:
                        return
                    if line in (b"\n", b"\r\n"):
                        break
                for command in commands:
                    writer.write(command)
                    await writer.drain()
                    if not await reader.readline():  # "200 result=1"
                        return
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    loop_factory = None
    if sys.argv[3:] == ["uvloop"]:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main(int(sys.argv[1]), json.loads(sys.argv[2])))
