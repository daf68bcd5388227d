"""The inventory file: accounts, numbers, campaigns (and, for tests and demos, past attempts),
parsed and checked whole before anything is written: a bad file changes nothing.

`zvonok-agi load FILE` imports it into the control plane (`numbers.importer`), which publishes
it. `load_inventory` writes a parsed inventory straight into Redis, through the routing-data
module: the tests and benchmarks use it to set up an engine without a control plane.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from . import phone
from .routing import scenario as scenarios
from .routing.model import (
    CAMPAIGN_ID,
    Account,
    Attempt,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    Number,
    NumberStatus,
    Outcome,
    Pool,
)
from .store.history import CallbackHistory
from .store.routing_data import Put, RoutingData

ACCOUNT_ID = CAMPAIGN_ID
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
E = TypeVar("E", bound=Enum)
PARSE_ERRORS = (KeyError, ValueError, TypeError, AttributeError)  # named by the item they came from


class InventoryError(ValueError):
    pass


@dataclass
class Inventory:
    accounts: list[Account] = field(default_factory=list)
    numbers: list[Number] = field(default_factory=list)
    campaigns: list[Campaign] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)


SECTIONS = ("accounts", "numbers", "campaigns", "attempts")


def parse_inventory(data: dict[str, Any], now: float) -> Inventory:
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise InventoryError(f"unknown section(s): {', '.join(sorted(unknown))}")
    builder = InventoryBuilder(now)
    for section in SECTIONS:
        for i, item in enumerate(data.get(section, [])):
            builder.add(section, f"{section}[{i}]", item)
    return builder.finish()


class InventoryBuilder:
    """An inventory read one table at a time, each checked as it comes (errors name it by
    `where`); `finish` checks the references between them."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.inventory = Inventory()
        self._campaigns: dict[str, Campaign] = {}
        self._attempts: list[tuple[str, dict[str, Any]]] = []

    def add(self, section: str, where: str, item: Any) -> Account | Number | Campaign | None:
        """Checks and keeps one table; the record it makes (attempts: None, read at the end)."""
        if section not in SECTIONS:
            raise InventoryError(f"unknown section: {section}")
        inv = self.inventory
        try:
            if not isinstance(item, dict):
                raise InventoryError("not a table")
            record: Account | Number | Campaign
            if section == "accounts":
                verified, name = bool(item.get("verified", False)), str(item.get("name", ""))
                record = Account(_ident(item, "id"), verified, name)
                inv.accounts.append(record)
            elif section == "numbers":
                record = _number(item)
                inv.numbers.append(record)
            elif section == "campaigns":
                record = _campaign(item)
                inv.campaigns.append(record)
                self._campaigns[record.id] = record
            else:  # read once every campaign is known: a file may list attempts first
                self._attempts.append((where, item))
                return None
        except PARSE_ERRORS as exc:
            raise _named(where, exc) from exc
        return record

    def finish(self) -> Inventory:
        for where, item in self._attempts:
            try:
                self.inventory.attempts.append(_attempt(item, self.now, self._campaigns))
            except PARSE_ERRORS as exc:
                raise _named(where, exc) from exc
        self._attempts = []
        _check_references(self.inventory)
        return self.inventory


async def load_inventory(
    inv: Inventory, data: RoutingData, history: CallbackHistory, now: float
) -> None:
    await data.write(Put(record) for record in [*inv.accounts, *inv.campaigns, *inv.numbers])
    for attempt in inv.attempts:
        await history.record(attempt, now)


def _campaign(item: dict[str, Any]) -> Campaign:
    kind = CampaignKind(item["kind"])
    scenario = None
    if "scenario" in item:  # left out: the store's, if it has one, is kept
        try:
            scenario = scenarios.for_kind(scenarios.parse(item["scenario"]), kind)
        except scenarios.ScenarioError as exc:
            raise InventoryError(exc.message) from None
    return Campaign(
        id=_ident(item, "id"),
        account=_ident(item, "account"),
        kind=kind,
        accept_inbound=bool(item.get("accept_inbound", False)),
        state=CampaignState(item.get("state", "running")),
        caller_id=_caller_id(item.get("caller_id", "pool")),
        name=str(item.get("name", "")),
        scenario=scenario,
    )


def _number(item: dict[str, Any]) -> Number:
    did = phone.normalize(str(item["did"]))
    if did is None:
        raise InventoryError(f"did {item['did']!r} is not a phone number")
    pool = _member(Pool, item.get("pool", "reservable"))
    owner = item.get("owner") or None
    inbound_campaign = item.get("inbound_campaign") or None
    if pool is Pool.SERVICE and (owner or inbound_campaign):
        raise InventoryError("a service number has no owner and no inbound campaign")
    if inbound_campaign and not owner:
        raise InventoryError("an inbound campaign can be bound only to a reserved number")
    status = _member(NumberStatus, item.get("status", "active"))
    rule = _member(CallbackRule, item.get("callback_rule", "as_campaign"))
    return Number(did, pool, status, owner, rule, inbound_campaign)


_MEMBERS: dict[type[Enum], dict[Any, Enum]] = {
    enum: {member.value: member for member in enum} for enum in (Pool, NumberStatus, CallbackRule)
}


def _member(enum: type[E], value: Any) -> E:
    """`enum(value)`, looked up: a number's three fields, at half a million numbers a tenth of
    the reading time by the enum's own call."""
    try:
        return _MEMBERS[enum][value]  # type: ignore[return-value]
    except (KeyError, TypeError):
        return enum(value)  # the ValueError naming the value


def _attempt(item: dict[str, Any], now: float, campaigns: dict[str, Campaign]) -> Attempt:
    campaign = campaigns.get(item["campaign"])
    if campaign is None or campaign.kind is not CampaignKind.OUTBOUND:
        raise InventoryError(f"campaign {item['campaign']!r} is not an outbound campaign here")
    did, callee = phone.normalize(str(item["did"])), phone.normalize(str(item["callee"]))
    if did is None or callee is None:
        raise InventoryError("did and callee must be phone numbers")
    return Attempt(
        id=_ident(item, "id") if "id" in item else uuid.uuid4().hex,
        campaign=campaign.id,
        account=campaign.account,
        did=did,
        callee=callee,
        at=_when(item, now),
        outcome=Outcome(item.get("outcome", "pending")),
        callbacks=int(item.get("callbacks", 0)),
    )


def _caller_id(value: object) -> str | None:
    """`pool` (the default) or a reserved number; whether it may be used is checked at dial."""
    if value in (None, "", "pool"):
        return None
    did = phone.normalize(str(value))
    if did is None:
        raise InventoryError(f"caller_id {value!r} is neither 'pool' nor a phone number")
    return did


def _when(item: dict[str, Any], now: float) -> float:
    if "ago" in item:
        match = DURATION.match(str(item["ago"]).strip())
        if not match:
            raise InventoryError(f"ago must look like 90s, 15m, 1h or 8d, not {item['ago']!r}")
        return now - float(match[1]) * UNITS[match[2]]
    if "at" in item:
        at = item["at"]
        if isinstance(at, str):
            at = datetime.fromisoformat(at)
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise InventoryError("at must be a date-time with a time zone")
        return at.timestamp()
    raise InventoryError("an attempt needs 'ago' or 'at'")


def _ident(item: dict[str, Any], key: str) -> str:
    value = str(item[key])
    if not ACCOUNT_ID.fullmatch(value):
        raise InventoryError(f"{key} {value!r}: letters, digits, '-' and '_' only, up to 48")
    return value


def _check_references(inv: Inventory) -> None:
    accounts = {a.id for a in inv.accounts}
    campaigns = {c.id: c for c in inv.campaigns}
    for c in inv.campaigns:
        if c.account not in accounts:
            raise InventoryError(f"campaign {c.id}: unknown account {c.account!r}")
    for n in inv.numbers:
        if n.owner and n.owner not in accounts:
            raise InventoryError(f"number {n.did}: unknown owner {n.owner!r}")
        bound = campaigns.get(n.inbound_campaign or "")
        if n.inbound_campaign and (
            bound is None or bound.kind is not CampaignKind.INBOUND or bound.account != n.owner
        ):
            raise InventoryError(
                f"number {n.did}: {n.inbound_campaign!r} is not an inbound campaign of {n.owner}"
            )


def _named(where: str, exc: Exception) -> InventoryError:
    """The error naming the item `where`, for `exc` raised while it was parsed."""
    if isinstance(exc, KeyError):
        return InventoryError(f"{where}: missing {exc.args[0]!r}")
    return InventoryError(f"{where}: {exc}")
