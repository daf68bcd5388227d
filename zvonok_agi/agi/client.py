"""Asterisk's side of a FastAGI session, as recorded from Asterisk 22: a smoke test without a PBX.

It opens a session the way `AGI(agi://host:port/script)` does (the recorded env block with the
DID and caller put in), answers the server's commands as Asterisk does, and returns the channel
variables the server set once the server closes the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import re

from .protocol import NEED_DATA, AsteriskConnection, Closed, Command

_channels = itertools.count(1)


def recorded_environment(
    did: str, caller: str, script: str = "inbound", host: str = "127.0.0.1", port: int = 4573
) -> dict[str, str]:
    """The env block of agi_env_and_commands.txt, with this call's DID, caller and script."""
    n = next(_channels)
    return {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://{host}:{port}/{script}",
        "agi_channel": f"PJSIP/carrier-{n:08x}",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": f"1795749422.{n}",
        "agi_version": "22.10.1",
        "agi_callerid": caller,
        "agi_calleridname": "Lab Caller",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": did,
        "agi_rdnis": "unknown",
        "agi_context": "zvonok-from-carrier",
        "agi_extension": did,
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140620542392000",
    }


# The usage block res_agi sends for a GET VARIABLE without exactly one name, as recorded
# (agi_env_and_commands.txt). SET VARIABLE has no such check in res_agi.c: it answers
# `200 result=1` and sets the name to the 4th word, or nothing when there is none.
GET_VARIABLE_USAGE = (
    "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set. "
    "Returns <literal>1</literal> if <replaceable>variablename</replaceable> is set and "
    "returns the variable in parentheses.\n"
    "Example return code: 200 result=1 (testvariable)"
)
# Dialplan applications this channel knows; EXEC of any other gives `200 result=-2`, as recorded.
APPLICATIONS = {"MSET", "SET", "NOOP", "VERBOSE", "GOTO", "ANSWER", "WAIT", "HANGUP"}


class FakeChannel:
    """The channel variables and replies of one call, as Asterisk would give them."""

    def __init__(
        self,
        variables: dict[str, str] | None = None,
        builtins: dict[str, str] | None = None,
        *,
        compat_res_agi: bool = False,
    ) -> None:
        self.variables: dict[str, str] = dict(variables or {})  # what the server set
        self.builtins: dict[str, str] = dict(builtins or {})  # EXTEN and such, read-only
        # asterisk.conf `[compat] res_agi = 1.4`: EXEC turns ',' into '\,' and '|' into ','.
        self.compat_res_agi = compat_res_agi
        self.commands: list[tuple[str, ...]] = []

    def answer(self, conn: AsteriskConnection, command: Command) -> bytes:
        words = command.words
        self.commands.append(words)
        verb = " ".join(w.upper() for w in words[:2])
        if verb == "SET VARIABLE":
            if len(words) >= 4:
                self.variables[words[2]] = words[3]
            return conn.send_reply(200, "1")
        if verb == "GET VARIABLE":
            if len(words) != 3:
                return conn.send_reply(520, data=GET_VARIABLE_USAGE)
            if words[2] in self.variables:
                return conn.send_reply(200, "1", self.variables[words[2]])
            return conn.send_reply(200, "0")
        if verb == "GET FULL" and len(words) == 4 and words[2].upper() == "VARIABLE":
            # Only the plain `${NAME}` form; Asterisk substitutes, an unset name gives "".
            name = words[3].removeprefix("${").removesuffix("}")
            value = self.variables.get(name, self.builtins.get(name, ""))
            return conn.send_reply(200, "1", value)
        if verb == "EXEC MSET":
            self._mset(words[2] if len(words) > 2 else "")
            return conn.send_reply(200, "0")
        if words and words[0].upper() == "EXEC":
            known = len(words) > 1 and words[1].upper() in APPLICATIONS
            return conn.send_reply(200, "0" if known else "-2")
        if words and words[0].upper() in ("NOOP", "VERBOSE"):
            return conn.send_reply(200, "0")
        return conn.send_reply(510)

    def _mset(self, data: str) -> None:
        """res_agi.c handle_exec, then pbx_variables.c pbx_builtin_setvar_multiple."""
        if self.compat_res_agi:
            data = data.replace(",", "\\,").replace("|", ",")
        for pair in separate_args(data, ",", remove_chars=True, limit=99):
            parts = separate_args(pair, "=", remove_chars=False, limit=2)
            if len(parts) == 2:
                self.variables[parts[0]] = parts[1]


_NESTING = re.compile(r'[()\[\]"\\]')


def separate_args(data: str, delim: str, *, remove_chars: bool, limit: int) -> list[str]:
    """main/app.c __ast_app_separate_args: split at `delim` outside (), [] and quotes; with
    `remove_chars` quotes and backslashes are dropped (a backslash keeps the next character);
    the last of `limit` arguments takes the rest, and a `delim` at the very end leaves one
    more, empty argument ("A=" is "A" and "")."""
    if not data:
        return []
    if _NESTING.search(data) is None:  # a route's MSet: nothing nests, quotes or escapes
        return data.split(delim, limit - 1)
    return _scan_args(data, delim, remove_chars=remove_chars, limit=limit)


def _scan_args(data: str, delim: str, *, remove_chars: bool, limit: int) -> list[str]:
    """separate_args character by character, as app.c does."""
    args: list[str] = []
    i = 0
    ended_on_delim = False
    while i < len(data) and len(args) < limit - 1:
        current: list[str] = []
        paren = bracket = 0
        quoted = False
        ended_on_delim = False
        while i < len(data):
            char = data[i]
            i += 1
            if char == "(":
                paren += 1
            elif char == ")":
                paren = max(paren - 1, 0)
            elif char == "[":
                bracket += 1
            elif char == "]":
                bracket = max(bracket - 1, 0)
            elif char == '"' and delim != '"':
                quoted = not quoted
                if remove_chars:
                    continue
            elif char == "\\":
                if i < len(data):
                    if not remove_chars:
                        current.append(char)
                    char = data[i]
                    i += 1
            elif char == delim and not (paren or bracket or quoted):
                ended_on_delim = True
                break
            current.append(char)
        args.append("".join(current))
    if i < len(data) or ended_on_delim:
        args.append(data[i:])
    return args


async def agi_call(
    host: str,
    port: int,
    did: str,
    caller: str,
    *,
    script: str = "inbound",
    timeout: float = 5.0,
    channel: FakeChannel | None = None,
) -> dict[str, str]:
    """Play one call against a FastAGI server; the variables it set, once it closed. The
    caller goes into the env block raw, as Asterisk writes it (line breaks and all)."""
    channel = channel or FakeChannel()
    channel.builtins.setdefault("EXTEN", did)  # the AGI runs in the DID's own extension
    conn = AsteriskConnection()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            env = recorded_environment(did, caller, script, host, port)
            writer.write(conn.send_environment(env))
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await reader.read(4096))
                elif isinstance(event, Command):
                    writer.write(channel.answer(conn, event))
                    await writer.drain()
                elif isinstance(event, Closed):
                    return channel.variables
        finally:
            writer.close()
