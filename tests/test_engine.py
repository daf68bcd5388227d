"""The running engine end to end: real FastAGI server, real Redis, calls played as Asterisk
plays them. Every example of routing-rules.md goes through the server here."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from engine_helpers import (
    CALLER,
    RESERVED,
    SERVICE,
    attempt,
    base_inventory,
    call,
    load,
    running_engine,
)
from zvonok_agi.agi import variables as var
from zvonok_agi.agi.client import FakeChannel, agi_call, recorded_environment, separate_args
from zvonok_agi.agi.protocol import encode_environment

# (id, inventory options, attempts, DID, caller, expected ZV_ROUTE, campaign or fallback)
EXAMPLES = [
    ("as_campaign-accept-no_answer", dict(rule="as_campaign", accept_inbound=True),
     [attempt("spring-sale")], RESERVED, CALLER, "outbound", "spring-sale"),
    ("as_campaign-accept-second_callback", dict(rule="as_campaign", accept_inbound=True),
     [attempt("spring-sale", callbacks=1)], RESERVED, CALLER, "inbound", "support"),
    ("as_campaign-accept-answered", dict(rule="as_campaign", accept_inbound=True),
     [attempt("spring-sale", outcome="answered")], RESERVED, CALLER, "inbound", "support"),
    ("as_campaign-no_accept-no_answer", dict(rule="as_campaign", accept_inbound=False),
     [attempt("spring-sale")], RESERVED, CALLER, "inbound", "support"),
    ("force_yes-no_accept-busy", dict(rule="force_yes", accept_inbound=False),
     [attempt("spring-sale", outcome="busy")], RESERVED, CALLER, "outbound", "spring-sale"),
    ("force_no-accept-no_answer", dict(rule="force_no", accept_inbound=True),
     [attempt("spring-sale")], RESERVED, CALLER, "inbound", "support"),
    *[
        (f"{rule}-accept_{accept}-never_dialed", dict(rule=rule, accept_inbound=accept),
         [], RESERVED, CALLER, "inbound", "support")
        for rule in ("force_yes", "as_campaign", "force_no")
        for accept in (True, False)
    ],
    ("dialed_8_days_ago", dict(accept_inbound=True),
     [attempt("spring-sale", ago="8d")], RESERVED, CALLER, "inbound", "support"),
    ("dialed_by_previous_owner", dict(accept_inbound=True),
     [attempt("oldco-sale")], RESERVED, CALLER, "inbound", "support"),
    ("no_answer-campaign_finished", dict(accept_inbound=True, state="finished"),
     [attempt("spring-sale")], RESERVED, CALLER, "inbound", "support"),
    ("no_inbound_campaign_bound", dict(accept_inbound=True, inbound_bound=False),
     [], RESERVED, CALLER, "fallback", "no_inbound_campaign"),
    ("service_number-no_answer", dict(accept_inbound=True),
     [attempt("pool-promo", did=SERVICE)], SERVICE, CALLER, "outbound", "pool-promo"),
    *[
        (f"service_number-accept_{accept}-never_dialed", dict(accept_inbound=accept),
         [], SERVICE, CALLER, "fallback", "service_number")
        for accept in (True, False)
    ],
    *[
        (f"disabled_number-{did}-{hist}", dict(status="disabled"),
         [attempt(c, did=did)] if hist == "dialed" else [], did, CALLER, "fallback",
         "unknown_number")
        for did, c in ((RESERVED, "spring-sale"), (SERVICE, "pool-promo"))
        for hist in ("dialed", "never")
    ],
    *[
        (f"caller_{name}", dict(accept_inbound=True), [attempt("spring-sale")], RESERVED,
         raw, "inbound", "support")
        for name, raw in (("anonymous", "anonymous"), ("unknown", "unknown"), ("empty", ""),
                          ("garbage", "<script>"))
    ],
    ("caller_anonymous-no_inbound", dict(inbound_bound=False), [], RESERVED, "anonymous",
     "fallback", "no_inbound_campaign"),
    ("unknown_did", dict(), [], "74990000000", CALLER, "fallback", "unknown_number"),
]


@pytest.mark.parametrize(
    "options, attempts, did, caller, route, target",
    [example[1:] for example in EXAMPLES],
    ids=[example[0] for example in EXAMPLES],
)
async def test_routing_rules_examples_through_the_server(
    settings, options, attempts, did, caller, route, target
):
    inventory = base_inventory(**options)
    inventory["attempts"] = attempts
    async with running_engine(settings, inventory) as engine:
        variables = await call(engine, did, caller)
    assert variables["ZV_DECIDED"] == "1"
    assert variables["ZV_ROUTE"] == route
    if route == "fallback":
        assert variables["ZV_FALLBACK"] == target
        assert variables["ZV_TARGET_CONTEXT"] == f"zvonok-fallback-{target}"
        assert variables["ZV_CAMPAIGN"] == ""
    else:
        assert variables["ZV_CAMPAIGN"] == target
        assert variables["ZV_TARGET_CONTEXT"] == f"zvonok-{route}-{target}"
    assert variables["ZV_TARGET_EXTEN"] == "s"
    assert variables["ZV_REASON"]
    assert variables["ZV_DID"] == did


async def test_callback_then_second_callback(settings):
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    async with running_engine(settings, inventory) as engine:
        first = await call(engine, RESERVED, "+7 (916) 123-45-67")
        second = await call(engine, RESERVED, "89161234567")
    assert (first["ZV_ROUTE"], first["ZV_CAMPAIGN"]) == ("outbound", "spring-sale")
    assert first["ZV_ATTEMPT"]
    assert first["ZV_CALLER"] == CALLER
    assert (second["ZV_ROUTE"], second["ZV_CAMPAIGN"]) == ("inbound", "support")


async def test_fifty_simultaneous_callbacks_route_exactly_one_outbound(settings):
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    async with running_engine(settings, inventory) as engine:
        results = await asyncio.gather(*(call(engine, RESERVED, CALLER) for _ in range(50)))
    routes = [r["ZV_ROUTE"] for r in results]
    assert routes.count("outbound") == 1
    assert routes.count("inbound") == 49
    assert all(r["ZV_DECIDED"] == "1" for r in results)


async def test_routing_change_reaches_a_running_engine_without_restart(settings):
    inventory = base_inventory(rule="as_campaign", accept_inbound=False)
    inventory["attempts"] = [attempt("spring-sale")]
    async with running_engine(settings, inventory) as engine:
        assert (await call(engine, RESERVED, CALLER))["ZV_ROUTE"] == "inbound"
        changed = base_inventory(rule="force_yes", accept_inbound=False)
        await load(settings, {k: v for k, v in changed.items() if k != "attempts"})
        for _ in range(100):
            if engine.cache.snapshot.numbers[RESERVED].callback_rule == "force_yes":
                break
            await asyncio.sleep(0.02)
        assert (await call(engine, RESERVED, CALLER))["ZV_ROUTE"] == "outbound"


# Crafted caller IDs: Asterisk writes the caller number raw into the env block.
CRAFTED_CALLERS = {
    "newline_injecting_the_did": f"{CALLER}\nagi_extension: {SERVICE}",
    "newline_alone": f"{CALLER}\nX",
    "carriage_return": f"{CALLER}\r\nagi_dnid: {SERVICE}",
    "quotes": f'"{CALLER}"',
    "4_kb": CALLER * 373,
    "non_digits": "7916123456x",
    "dialplan_expression": "${SHELL(id)}",
}


@pytest.mark.parametrize("raw", CRAFTED_CALLERS.values(), ids=CRAFTED_CALLERS.keys())
async def test_a_crafted_caller_id_is_treated_as_no_caller(settings, raw):
    # The caller was dialed: a genuine callback would go to the outbound campaign.
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    channel = FakeChannel()
    async with running_engine(settings, inventory) as engine:
        assert engine.server is not None
        variables = await agi_call(
            "127.0.0.1", engine.server.port, RESERVED, raw, channel=channel
        )
        genuine = await call(engine, RESERVED, CALLER)
    assert (variables["ZV_ROUTE"], variables["ZV_CAMPAIGN"]) == ("inbound", "support")
    assert variables["ZV_DID"] == RESERVED  # never the DID the caller ID tried to inject
    assert variables["ZV_CALLER"] == ""
    assert variables["ZV_DECIDED"] == "1"
    sent = " ".join(" ".join(words) for words in channel.commands)
    assert raw not in sent and "SHELL" not in sent and SERVICE not in sent
    assert (genuine["ZV_ROUTE"], genuine["ZV_CAMPAIGN"]) == ("outbound", "spring-sale")


# --- how the variables reach Asterisk ----------------------------------------------------------


async def first_callback(settings, channel: FakeChannel) -> dict[str, str]:
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    async with running_engine(settings, inventory) as engine:
        assert engine.server is not None
        return await agi_call("127.0.0.1", engine.server.port, RESERVED, CALLER, channel=channel)


def but_the_attempt(variables: dict[str, str]) -> dict[str, str]:
    """Each run loads its own attempt (a new id): the rest must be equal."""
    return {name: value for name, value in variables.items() if name != "ZV_ATTEMPT"}


async def test_variables_go_in_one_mset_checked_by_reading_decided_back(settings):
    batched, one_by_one = FakeChannel(), FakeChannel()
    variables = await first_callback(settings, batched)
    off = replace(settings, agi=replace(settings.agi, batch_variables=False))
    assert but_the_attempt(await first_callback(off, one_by_one)) == but_the_attempt(variables)
    verbs = [" ".join(words[:2]) for words in batched.commands]
    assert verbs == ["EXEC MSet", "GET VARIABLE"]  # all of them, then the check
    assert batched.commands[0][2].endswith(",ZV_DECIDED=1")
    assert batched.commands[1][2] == "ZV_DECIDED"
    assert {words[2] for words in one_by_one.commands} == set(variables)
    assert one_by_one.commands[-1][2:] == ("ZV_DECIDED", "1")
    assert (variables["ZV_ROUTE"], variables["ZV_CAMPAIGN"]) == ("outbound", "spring-sale")


async def test_an_asterisk_that_reads_mset_otherwise_gets_every_variable_one_by_one(settings):
    # res_agi 1.4 compatibility makes MSet's commas literal: one variable holding everything.
    compat, plain = FakeChannel(compat_res_agi=True), FakeChannel()
    variables = await first_callback(settings, compat)
    expected = await first_callback(settings, plain)
    assert but_the_attempt(variables) == but_the_attempt(expected)
    assert [" ".join(w[:2]) for w in compat.commands[:2]] == ["EXEC MSet", "GET VARIABLE"]
    assert compat.commands[-1][2:] == ("ZV_DECIDED", "1")  # set one by one, last


def verbs(channel: FakeChannel) -> set[tuple[str, ...]]:
    return {words[:2] for words in channel.commands}


MSET = {("EXEC", "MSet"), ("GET", "VARIABLE")}
ONE_BY_ONE = {("SET", "VARIABLE")}


async def test_mset_is_given_up_only_after_three_misses_in_a_row_and_tried_again_later(settings):
    settings = replace(settings, agi=replace(settings.agi, batch_retry_interval=0.5))
    async with running_engine(settings, base_inventory()) as engine:
        assert engine.server is not None
        port = engine.server.port

        async def call(compat: bool) -> FakeChannel:
            channel = FakeChannel(compat_res_agi=compat)
            variables = await agi_call("127.0.0.1", port, RESERVED, CALLER, channel=channel)
            assert variables["ZV_DECIDED"] == "1"  # routed either way
            return channel

        odd, fine = await call(compat=True), await call(compat=False)
        assert verbs(odd) == MSET | ONE_BY_ONE and verbs(fine) == MSET  # one odd reply: no switch
        misses = [await call(compat=True) for _ in range(3)]
        assert all(verbs(channel) == MSET | ONE_BY_ONE for channel in misses)
        assert verbs(await call(compat=True)) == ONE_BY_ONE  # after three in a row
        assert verbs(await call(compat=False)) == ONE_BY_ONE  # for a while
        await asyncio.sleep(0.6)
        assert verbs(await call(compat=False)) == MSET  # tried again: Asterisk takes it now
        assert verbs(await call(compat=False)) == MSET


def test_values_mset_could_misread_are_set_on_their_own_before_the_batch():
    values = [
        ("ZV_ROUTE", "inbound"),
        ("ZV_REASON", 'store unavailable (ConnectionError); "x", y=z\\'),
        ("ZV_TARGET_CONTEXT", "zvonok-inbound-support"),
        ("ZV_DECIDED", "1"),
    ]
    assert var.batched(values) == [
        ("SET VARIABLE", "ZV_REASON", 'store unavailable (ConnectionError); "x", y=z\\'),
        ("EXEC", "MSet", "ZV_ROUTE=inbound,ZV_TARGET_CONTEXT=zvonok-inbound-support,ZV_DECIDED=1"),
        ("GET VARIABLE", "ZV_DECIDED"),
    ]
    assert var.batched(values[:1] + values[-1:]) is None  # two: no gain
    assert var.batched([("ZV_REASON", "x," * 500), *values]) is not None  # long ones go alone
    too_long = "y" * var.MAX_BATCH
    assert var.batched([("ZV_ROUTE", too_long), *values]) is None  # too long for one line


def test_the_fake_channel_splits_mset_as_asterisk_does():
    assert separate_args('A=1,B="2,3",C=(4,5),D=6\\,7', ",", remove_chars=True, limit=99) == [
        "A=1", "B=2,3", "C=(4,5)", "D=6,7"
    ]
    assert separate_args("C=x=y", "=", remove_chars=False, limit=2) == ["C", "x=y"]
    assert separate_args("C=", "=", remove_chars=False, limit=2) == ["C", ""]
    channel = FakeChannel({"ZV_ATTEMPT": "earlier"})
    channel._mset("ZV_ATTEMPT=,ZV_DECIDED=1")
    assert channel.variables == {"ZV_ATTEMPT": "", "ZV_DECIDED": "1"}
    channel = FakeChannel(compat_res_agi=True)
    channel._mset("A=1,B=2")
    assert channel.variables == {"A": "1,B=2"}


# --- hardening: idle connections, claims whose route never reached Asterisk --------------------


async def test_a_flood_of_idle_connections_does_not_keep_real_calls_out(settings):
    """Idle connections from the calls' own host, each reconnecting as soon as it is closed,
    many times the session slots: every real call is routed."""
    agi = replace(settings.agi, max_sessions=20, env_deadline=0.3, max_pending_per_peer=400)
    stop = asyncio.Event()
    reconnects = 0

    async def idle_forever(port: int) -> None:
        nonlocal reconnects
        stopped = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            closed = asyncio.ensure_future(reader.read())
            await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            writer.close()
            reconnects += 1

    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    async with running_engine(replace(settings, agi=agi), inventory) as engine:
        assert engine.server is not None
        flood = [asyncio.create_task(idle_forever(engine.server.port)) for _ in range(300)]
        while engine.server.connections < 300:
            await asyncio.sleep(0.01)
        calls = []
        for _ in range(40):  # 20 a second for two seconds, as Asterisk would place them
            calls.append(asyncio.create_task(call(engine, RESERVED, CALLER)))
            await asyncio.sleep(0.05)
        routed = await asyncio.gather(*calls)
        stop.set()
        await asyncio.gather(*flood)
    assert all(variables.get("ZV_DECIDED") == "1" for variables in routed)
    assert sorted(v["ZV_ROUTE"] for v in routed) == ["inbound"] * 39 + ["outbound"]
    assert reconnects > 300  # the flood went on all along


async def asterisk_that_goes_quiet(port: int, did: str, caller: str, *,
                                   close_after: int | None = None) -> list[bytes]:
    """Sends the env block, then answers nothing: reads the commands until the engine closes
    (or closes itself after `close_after` of them, as a caller hanging up does)."""
    env = encode_environment(recorded_environment(did, caller))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(env)
    commands = []
    try:
        async with asyncio.timeout(10):
            while line := await reader.readline():
                commands.append(line)
                if close_after is not None and len(commands) >= close_after:
                    break
    finally:
        writer.close()
    return commands


def routed_lines(logs: list[dict]) -> list[dict]:
    return [entry for entry in logs if entry["event"] == "call routed"]


@pytest.mark.parametrize(
    ("close_after", "why"),
    [(None, "session deadline passed"), (1, "Asterisk closed the session")],
    ids=["silence", "hung_up"],
)
async def test_a_callback_whose_route_never_reached_asterisk_gives_its_claim_back(
    settings, close_after, why
):
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    quick = replace(settings, agi=replace(settings.agi, session_deadline=0.5))
    with capture_logs() as logs:
        async with running_engine(quick, inventory) as engine:
            assert engine.server is not None
            sent = await asterisk_that_goes_quiet(
                engine.server.port, RESERVED, CALLER, close_after=close_after
            )
            while engine.server.connections:  # the failed session's clean-up
                await asyncio.sleep(0.01)
            real = await call(engine, RESERVED, CALLER)
    assert sent[0].startswith(b'EXEC "MSet" "ZV_ROUTE=outbound,ZV_CAMPAIGN=spring-sale')
    assert (real["ZV_ROUTE"], real["ZV_CAMPAIGN"]) == ("outbound", "spring-sale")
    failed, ok = routed_lines(logs)  # exactly one line per call
    assert failed["failed"] == why
    assert (failed["confirmed"], failed["claim_released"]) == (False, True)
    assert (failed["did"], failed["caller"]) == (RESERVED, CALLER)
    assert failed["attempt"] == real["ZV_ATTEMPT"]
    assert (ok["confirmed"], ok["claim_released"], ok["failed"]) == (True, False, None)


async def test_every_session_ends_with_one_call_routed_line(settings):
    inventory = base_inventory()
    inventory["attempts"] = [attempt("spring-sale")]
    with capture_logs() as logs:
        async with running_engine(settings, inventory) as engine:
            assert engine.server is not None
            first = await call(engine, RESERVED, CALLER)
            second = await call(engine, RESERVED, CALLER)
            unknown = await call(engine, "74990000000", CALLER)
            unserved = await agi_call(
                "127.0.0.1", engine.server.port, RESERVED, CALLER, script="nope"
            )
    lines = routed_lines(logs)
    assert [(line["route"], line["campaign"] or line["fallback"]) for line in lines] == [
        ("outbound", "spring-sale"),
        ("inbound", "support"),
        ("fallback", "unknown_number"),
        ("fallback", "engine_error"),
    ]
    assert lines[0]["attempt"] == first["ZV_ATTEMPT"]
    assert all(line["did"] and line["caller"] == CALLER for line in lines)
    assert lines[3]["failed"] == "no handler for AGI script 'nope'"
    assert [v["ZV_ROUTE"] for v in (second, unknown, unserved)] == [
        "inbound", "fallback", "fallback"
    ]
