"""The running engine end to end: real FastAGI server, real Redis, calls played as Asterisk
plays them. Every example of routing-rules.md goes through the server here."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

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
from zvonok_agi.agi.client import FakeChannel, agi_call, separate_args

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


async def test_after_one_failed_mset_that_asterisk_gets_one_by_one_straight_away(settings):
    inventory = base_inventory()
    async with running_engine(settings, inventory) as engine:
        assert engine.server is not None
        port = engine.server.port
        first, second = FakeChannel(compat_res_agi=True), FakeChannel(compat_res_agi=True)
        await agi_call("127.0.0.1", port, RESERVED, CALLER, channel=first)
        await agi_call("127.0.0.1", port, RESERVED, CALLER, channel=second)
    assert first.commands[0][:2] == ("EXEC", "MSet")
    assert {words[:2] for words in second.commands} == {("SET", "VARIABLE")}
    assert second.variables["ZV_DECIDED"] == "1"


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
    assert var.batched([("ZV_ROUTE", "y" * 1000), *values]) is None  # too long for one line


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
