"""The one service layer of the control plane: the admin API and the CLI both call it.

Every change runs in one store transaction that also writes an audit row and marks what it
changed in the outbox. After the commit, and outside the store's lock, the publisher sends the
outbox to Redis (so a running engine follows within milliseconds): Redis never holds what the
store did not commit. With Redis away the change still commits and stays in the outbox until
the publisher gets through (see `publisher`). A refused attempt changes nothing but its audit
row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import structlog
from redis.exceptions import RedisError

from ..inventory import Inventory
from ..regions import RegionIndex
from ..routing import scenario as scenarios
from ..routing.model import (
    Account,
    CallbackRule,
    Campaign,
    CampaignKind,
    CampaignState,
    NumberStatus,
    Pool,
    Scenario,
)
from ..store.number_health import NumberHealth, NumberHealthStore
from ..store.routing_data import Delete, RoutingData, Stored, Superseded
from . import rules
from .publisher import UNAVAILABLE, Publisher, SyncReport
from .rules import Choice, Kind, NumberRecord, Refused, RegionCount, Request
from .store import Queries, Store, StoreConflict, number_rows

log = structlog.get_logger(__name__)

DEFAULT_POPULAR_CITIES = (
    "Moscow", "St Petersburg", "Novosibirsk", "Ekaterinburg", "Kazan", "Nizhni Novgorod",
)
T = TypeVar("T")
Named = TypeVar("Named", Account, Campaign)
KEEP: Any = object()  # "leave this field as it is" in updates (None means the service pool)
NO_HINT = (None, None)  # kind and region from the numbering plan
IMPORT_BATCH = 5000  # records per transaction of an import: other writers get their turn


@dataclass(frozen=True)
class Offer:
    """The answer to "numbers of this kind in this region": some numbers, or a request."""

    kind: Kind
    region: str
    numbers: list[NumberRecord]
    request: Request | None = None

    @property
    def message(self) -> str:
        if self.request is not None:
            return (f"No {self.kind} numbers in {self.region} right now: request "
                    f"#{self.request.id} is filed and our sales team will call you back.")
        return f"{len(self.numbers)} {self.kind} numbers available in {self.region}"


@dataclass(frozen=True)
class NumberRow:
    """One line of the numbers view: the number and the campaigns that use it."""

    number: NumberRecord
    dialing: list[str]  # outbound campaigns showing it as caller ID (service pool: pool ones)

    @property
    def rule(self) -> CallbackRule | None:
        """The callback rule is shown only for reserved numbers."""
        return self.number.callback_rule if self.number.is_reserved else None


@dataclass(frozen=True)
class NumbersView:
    account: str | None
    status: NumberStatus
    search: str
    reserved: dict[str, dict[str, int]]  # {kind: {status: count}} of reserved numbers
    tabs: dict[str, int]  # {status: count} of the numbers the search finds
    rows: list[NumberRow]


@dataclass(frozen=True)
class NumberDetails:
    row: NumberRow
    history: list[dict[str, Any]]  # the number's audit entries, newest first


@dataclass
class _Change:
    q: Queries
    subject: str
    account: str | None
    detail: dict[str, Any]
    quiet: bool = False  # nothing changed: no audit row
    result: Any = None


class NumbersService:
    def __init__(
        self,
        store: Store,
        data: RoutingData | None,
        *,
        popular_cities: Iterable[str] = DEFAULT_POPULAR_CITIES,
        clock: Callable[[], float] = time.time,
        offer_limit: int = 100,
        max_open_requests: int = 5,
        health_window: float = 86400.0,
    ) -> None:
        self.store = store
        self.data = data
        self.publisher = Publisher(store, data) if data is not None else None
        self.popular_cities = tuple(popular_cities)
        self.clock = clock
        self.offer_limit = offer_limit
        self.max_open_requests = max_open_requests
        self.health_store = (
            NumberHealthStore(data.redis, data.prefix, health_window) if data is not None else None
        )

    # accounts

    async def accounts(self) -> list[Account]:
        async with self.store.reading() as q:
            return await q.accounts()

    async def account(self, account_id: str) -> Account:
        async with self.store.reading() as q:
            return _found(await q.account(account_id), "unknown_account", "no such account")

    async def create_account(
        self, actor: str, account_id: str, name: str = "", verified: bool = False
    ) -> Account:
        account = Account(
            rules.ident(account_id, "account id"), _flag(verified, "verified"),
            rules.text(name, "name", rules.MAX_NAME),
        )
        async with self._change(actor, "create_account", account.id, account.id,
                                name=account.name, verified=account.verified) as change:
            if await change.q.account(account.id) is not None:
                raise Refused("already_exists", f"account {account.id} already exists")
            await change.q.put_account(account, self.clock())
        return account

    async def update_account(
        self, actor: str, account_id: str, *, name: Any = KEEP, verified: Any = KEEP
    ) -> Account:
        if name is not KEEP:
            name = rules.text(name, "name", rules.MAX_NAME)
        if verified is not KEEP:
            verified = _flag(verified, "verified")
        detail = _given(name=name, verified=verified)
        async with self._change(actor, "update_account", account_id, account_id,
                                **detail) as change:
            q = change.q
            account = _found(await q.account(account_id), "unknown_account", "no such account")
            account = replace(account, **detail)
            if verified is not KEEP:
                if not account.verified:
                    _check(rules.unverify_refusal(account, await q.reserved_count(account.id)))
            await q.put_account(account, self.clock())
        return account

    # the reservation flow

    async def regions(self, choice: Any) -> list[RegionCount]:
        choice = rules.enum_value(Choice, choice, "choice")
        async with self.store.reading() as q:
            counts = await q.available_counts()
        return rules.region_counts(choice, counts, self.popular_cities)

    async def offer(self, actor: str, account_id: str, choice: Any, region: Any) -> Offer:
        """The available numbers of a region, named as people type it ("moscow", "Москва");
        none there: a request for sales is filed (once per account, kind and region while it
        is open), and nothing else changes. An unknown or ambiguous name is refused with the
        regions it may mean."""
        choice = rules.enum_value(Choice, choice, "choice")
        typed = rules.text(region, "region", rules.MAX_REGION, required=True)
        kind = choice.kind
        async with self._change(actor, "request_number", f"{kind}:{typed}", account_id,
                                kind=kind.value, region=typed) as change:
            q = change.q
            _check(rules.account_refusal(await q.account(account_id)))
            index = RegionIndex([*await q.regions(), *self.popular_cities])
            region = rules.region_named(typed, index)
            change.subject, change.detail["region"] = f"{kind}:{region}", region
            numbers = await q.available(kind, region, self.offer_limit)
            request = None
            if numbers:
                change.quiet = True
            else:
                request = await q.open_request(account_id, kind, region)
                if request is None:
                    _check(rules.requests_refusal(
                        account_id, await q.open_requests(account_id), self.max_open_requests))
                    request = await q.add_request(account_id, kind, region, self.clock())
                change.detail["request"] = request.id
        return Offer(kind, region, numbers, request)

    async def reserve(self, actor: str, account_id: str, did: Any) -> NumberRecord:
        """Verified accounts only; of accounts racing for one number exactly one wins."""
        did = rules.did_of(did)
        async with self._change(actor, "reserve", did, account_id) as change:
            q = change.q
            _check(rules.reserve_refusal(await q.account(account_id), await q.number(did)))
            # The condition in the UPDATE is what makes it atomic, whatever was read above.
            if not await q.claim_number(did, account_id, self.clock()):
                raise Refused("already_taken", f"{did} is already taken: choose another number")
            change.result = await q.number(did)
        return change.result

    # stock (operators)

    async def add_number(
        self, actor: str, did: Any, pool: Any = Pool.RESERVABLE, *, kind: Any = None,
        region: Any = None, status: Any = NumberStatus.ACTIVE,
    ) -> NumberRecord:
        did = rules.did_of(did)
        pool = rules.enum_value(Pool, pool, "pool")
        status = rules.enum_value(NumberStatus, status, "status")
        kind = None if kind is None else rules.enum_value(Kind, kind, "kind")
        if region is not None:
            region = rules.text(region, "region", rules.MAX_REGION, required=True)
        kind, region = rules.classify(did, kind, region)
        number = NumberRecord(did, kind, region, pool, status)
        async with self._change(actor, "add_number", did, None, pool=pool.value,
                                kind=kind.value, region=region, status=status.value) as change:
            if await change.q.number(did) is not None:
                raise Refused("already_exists", f"{did} is already one of our numbers")
            await change.q.insert_number(number, self.clock())
        return number

    # a number's settings

    async def change_number(
        self, actor: str, did: Any, *, inbound_campaign: Any = KEEP, callback_rule: Any = KEEP,
        as_account: str | None = None,
    ) -> NumberRecord:
        """The seed's "Change" window: the inbound campaign the number's calls go to (None: to
        none) and its callback rule, saved together or not at all. Resending the campaign the
        number is bound to changes nothing, so it is no new binding (a disabled number's rule
        can change)."""
        did, as_account = rules.did_of(did), _acting(as_account)
        if inbound_campaign not in (KEEP, None):
            inbound_campaign = rules.ident(inbound_campaign, "campaign id")
        if callback_rule is not KEEP:
            callback_rule = rules.enum_value(CallbackRule, callback_rule, "callback rule")
        detail = _given(inbound_campaign=inbound_campaign, callback_rule=callback_rule)
        async with self._change(actor, "change_number", did, as_account, **detail) as change:
            q = change.q
            number = await q.number(did)
            if number is not None:
                change.account = as_account or number.owner
            _check(rules.reserved_refusal(number, as_account))
            assert number is not None
            if inbound_campaign not in (KEEP, None, number.inbound_campaign):
                campaign = await q.campaign(inbound_campaign)
                _check(rules.binding_refusal(number, campaign, as_account))
            values = _given(inbound_campaign=inbound_campaign, callback_rule=callback_rule)
            if values:
                await q.update_number(did, **values)
            change.result = replace(number, **values)
        return change.result

    async def bind(self, actor: str, did: Any, campaign_id: str | None, *,
                   as_account: str | None = None) -> NumberRecord:
        return await self.change_number(actor, did, inbound_campaign=campaign_id,
                                        as_account=as_account)

    async def set_rule(self, actor: str, did: Any, rule: Any, *,
                       as_account: str | None = None) -> NumberRecord:
        return await self.change_number(actor, did, callback_rule=rule, as_account=as_account)

    async def disable(self, actor: str, did: Any, *, as_account: str | None = None):
        return await self._set_status(actor, did, NumberStatus.DISABLED, as_account)

    async def enable(self, actor: str, did: Any, *, as_account: str | None = None):
        return await self._set_status(actor, did, NumberStatus.ACTIVE, as_account)

    async def _set_status(
        self, actor: str, did: Any, status: NumberStatus, as_account: str | None
    ) -> NumberRecord:
        """Disabled, a number routes nothing and dials nothing; its bindings stay for enable."""
        did, as_account = rules.did_of(did), _acting(as_account)
        action = "enable" if status is NumberStatus.ACTIVE else "disable"
        async with self._change(actor, action, did, as_account) as change:
            q = change.q
            number = _found(await q.number(did), "unknown_number", "no such number")
            change.account = as_account or number.owner
            _check(rules.ownership_refusal(number, as_account))
            await q.update_number(did, status=status)
            change.result = replace(number, status=status)
        return change.result

    async def release(
        self, actor: str, did: Any, *, as_account: str | None = None
    ) -> NumberRecord:
        """Back to the reservable stock, without binding, rule or owner. The old owner's
        callback history stays in Redis, but the decision reads only attempts of the current
        owner's campaigns: it never routes into the old owner's campaigns again."""
        did, as_account = rules.did_of(did), _acting(as_account)
        async with self._change(actor, "release", did, as_account) as change:
            q = change.q
            number = await q.number(did)
            callers = await q.campaigns(caller_id=did)
            if number is not None:
                change.account = as_account or number.owner
            _check(rules.release_refusal(number, as_account, callers))
            assert number is not None
            change.detail["owner"] = number.owner
            for campaign in callers:  # finished ones only: they keep no hold on the number
                await q.put_campaign(replace(campaign, caller_id=None), self.clock())
            await q.update_number(
                did, owner=None, inbound_campaign=None, callback_rule=CallbackRule.AS_CAMPAIGN,
                status=NumberStatus.ACTIVE, reserved_at=None,
            )
            change.result = await q.number(did)
        return change.result

    # the numbers view

    async def numbers_view(
        self, account: str | None = None, status: Any = NumberStatus.ACTIVE, search: str = ""
    ) -> NumbersView:
        """With an account: what its "Subscriber numbers" page shows (its reserved numbers and
        the service pool); without: every number, the unreserved stock too."""
        status = rules.enum_value(NumberStatus, status, "status")
        search = rules.text(search, "search", rules.MAX_SEARCH)
        if account is not None:
            account = rules.ident(account, "account")
        needles = rules.search_needles(search) if search else None
        async with self.store.reading() as q:
            if account is not None:
                _found(await q.account(account), "unknown_account", "no such account")
            found = await q.numbers(account=account, needles=needles)
            campaigns = await q.campaigns(account=account)
            reserved = await q.reserved_counts(account)
        tabs = {s.value: sum(1 for n in found if n.status is s) for s in NumberStatus}
        rows = [_row(n, campaigns) for n in found if n.status is status]
        return NumbersView(account, status, search, reserved, tabs, rows)

    async def number(self, did: Any, account: str | None = None) -> NumberDetails:
        """A number with the campaigns using it and its history. For an account (a customer):
        only its own numbers and the service pool, with only its own campaigns and history."""
        did = rules.did_of(did)
        async with self.store.reading() as q:
            number = _found(await q.number(did), "unknown_number", "no such number")
            if account is not None and number.owner != account and number.pool is Pool.RESERVABLE:
                raise Refused("unknown_number", "no such number")
            if number.pool is Pool.SERVICE:
                campaigns = await q.campaigns(account=account)
            else:  # stock: nobody dials from it
                campaigns = await q.campaigns(account=number.owner) if number.owner else []
            history = await q.audit_log(subject=did, limit=50, account=account)
        return NumberDetails(_row(number, campaigns), history)

    # campaigns

    async def campaigns(self, account: str | None = None) -> list[Campaign]:
        if account is not None:
            account = rules.ident(account, "account")
        async with self.store.reading() as q:
            return await q.campaigns(account=account)

    async def campaign(self, campaign_id: str, account: str | None = None) -> Campaign:
        """One campaign; for an account (a customer), only one of its own."""
        async with self.store.reading() as q:
            campaign = await q.campaign(campaign_id)
        if campaign is None or account not in (None, campaign.account):
            raise Refused("unknown_campaign", "no such campaign")
        return campaign

    async def create_campaign(
        self, actor: str, campaign_id: str | None, account_id: str, kind: Any, *,
        accept_inbound: Any = False, state: Any = CampaignState.RUNNING, caller_id: Any = None,
        name: Any = "", scenario: Any = None,
    ) -> Campaign:
        """A new campaign; without an id, one is made (`c-` and random hex digits)."""
        kind = rules.enum_value(CampaignKind, kind, "kind")
        campaign = Campaign(
            id=rules.ident(campaign_id, "campaign id") if campaign_id is not None
            else f"c-{secrets.token_hex(5)}",
            account=rules.ident(account_id, "account id"),
            kind=kind,
            accept_inbound=_flag(accept_inbound, "accept_inbound"),
            state=rules.enum_value(CampaignState, state, "state"),
            caller_id=None if caller_id in (None, "pool") else rules.did_of(caller_id),
            name=rules.text(name, "name", rules.MAX_NAME),
            scenario=rules.scenario_of(scenario, kind),
        )
        if campaign.kind is CampaignKind.INBOUND and (campaign.accept_inbound
                                                      or campaign.caller_id):
            raise Refused("bad_input", "accept_inbound and the caller ID are settings of "
                          "outbound campaigns")
        async with self._change(actor, "create_campaign", campaign.id, campaign.account,
                                kind=campaign.kind.value, caller_id=campaign.caller_id,
                                **({"name": campaign.name} if campaign.name else {}),
                                **_scenario_detail(campaign.scenario)) as change:
            q = change.q
            if await q.campaign(campaign.id) is not None:
                raise Refused("already_exists", f"campaign {campaign.id} already exists")
            await self._check_caller_id(q, campaign)
            await q.put_campaign(campaign, self.clock())
        return campaign

    async def update_campaign(
        self, actor: str, campaign_id: str, *, accept_inbound: Any = KEEP, state: Any = KEEP,
        caller_id: Any = KEEP, name: Any = KEEP, scenario: Any = KEEP,
        as_account: str | None = None,
    ) -> Campaign:
        """Changes what is given; acting as an account, only one of its own campaigns. The
        scenario (a document, or None: none) is checked for the campaign's kind."""
        as_account = _acting(as_account)
        if name is not KEEP:
            name = rules.text(name, "name", rules.MAX_NAME)
        if accept_inbound is not KEEP:
            accept_inbound = _flag(accept_inbound, "accept_inbound")
        if state is not KEEP:
            state = rules.enum_value(CampaignState, state, "state")
        if caller_id is not KEEP:
            caller_id = None if caller_id in (None, "pool") else rules.did_of(caller_id)
        detail = _given(accept_inbound=accept_inbound, state=state, caller_id=caller_id,
                        name=name)
        async with self._change(actor, "update_campaign", campaign_id, as_account,
                                **detail) as change:
            q = change.q
            campaign = _found(
                await q.campaign(campaign_id), "unknown_campaign", "no such campaign"
            )
            if as_account not in (None, campaign.account):
                raise Refused("not_owner", f"campaign {campaign_id} is not account "
                              f"{as_account}'s")
            change.account = campaign.account
            # What an inbound campaign has already (false, the pool) may be sent: no change.
            if campaign.kind is CampaignKind.INBOUND and (accept_inbound is True
                                                          or caller_id not in (KEEP, None)):
                raise rules.not_outbound(campaign)
            if scenario is not KEEP:  # checked for the campaign's kind
                detail["scenario"] = rules.scenario_of(scenario, campaign.kind)
                change.detail.update(_scenario_detail(detail["scenario"], cleared=True))
            campaign = replace(campaign, **detail)
            if caller_id is not KEEP:
                await self._check_caller_id(q, campaign)
            await q.put_campaign(campaign, self.clock())
            change.result = campaign
        return change.result

    async def _check_caller_id(self, q: Queries, campaign: Campaign) -> None:
        account = _found(await q.account(campaign.account), "unknown_account", "no such account")
        number = await q.number(campaign.caller_id) if campaign.caller_id else None
        _check(rules.caller_id_refusal(account, campaign.kind, campaign.caller_id, number))

    # requests and the audit log

    async def requests(
        self, status: str | None = "open", account: str | None = None
    ) -> list[Request]:
        """Requests (open, closed, or both: None), of every account or of one."""
        if status not in (None, "open", "closed"):
            raise Refused("bad_input", "status must be open or closed")
        if account is not None:
            account = rules.ident(account, "account")
        async with self.store.reading() as q:
            return await q.requests(status, account)

    async def support_request(
        self, actor: str, account_id: str, comment: Any, contact: Any, *, choice: Any = KEEP,
        region: Any = KEEP,
    ) -> Request:
        """The customer writes to support ("none of these numbers suits me", or anything
        else), with a phone to call back on and, from the Add window, the kind and region it
        was looking at (KEEP: none). It counts towards the account's open requests."""
        comment = rules.text(comment, "comment", rules.MAX_NOTE, required=True)
        contact = rules.did_of(contact)
        kind = None if choice is KEEP else rules.enum_value(Choice, choice, "choice").kind
        region = None if region is KEEP else rules.text(region, "region", rules.MAX_REGION,
                                                         required=True)
        async with self._change(actor, "support_request", "support", account_id,
                                kind=kind and kind.value, region=region) as change:
            q = change.q
            _found(await q.account(account_id), "unknown_account", "no such account")
            _check(rules.requests_refusal(
                account_id, await q.open_requests(account_id), self.max_open_requests))
            change.result = await q.add_request(account_id, kind, region, self.clock(),
                                                "support", comment, contact)
            change.subject = f"request:{change.result.id}"
        return change.result

    async def close_request(self, actor: str, request_id: Any, note: Any = None) -> Request:
        """Sales called the customer back. A closed request stays as it was closed (who, when,
        the note): closing it again is refused."""
        request_id = rules.request_id(request_id)
        # Checked before the change frame, like a malformed number: an oversized note is
        # refused without being copied into the audit log.
        note = None if note is None else rules.text(note, "note", rules.MAX_NOTE) or None
        async with self._change(actor, "close_request", f"request:{request_id}", None,
                                **({"note": note} if note else {})) as change:
            q = change.q
            request = _found(await q.request(request_id), "unknown_request", "no such request")
            change.account = request.account
            if request.status == "closed":
                raise Refused("request_closed",
                              f"request #{request.id} is already closed (by {request.closed_by})")
            await q.close_request(request.id, self.clock(), actor, note)
            change.result = await q.request(request.id)
        return change.result

    # number health (kept in Redis by the dialers: store/number_health.py)

    async def health(self, dids: Iterable[str]) -> dict[str, NumberHealth] | None:
        """The numbers' health now; None when Redis is away (the numbers show without it)."""
        if self.health_store is None:
            return None
        try:
            return await self.health_store.read(dids, self.clock())
        except (RedisError, OSError) as exc:
            log.warning("number health unavailable", error=str(exc))
            return None

    async def audit_health_events(self) -> int:
        """Copies the dialers' rests and returns of pool numbers into the audit log (actor
        `dialer`, action `rest` / `return`); how many it copied. Each event once: an event
        whose row is there already (a copy cut off before its cursor moved) is skipped."""
        if self.health_store is None:
            return 0
        redis, cursor_key = self.data.redis, self.health_store.events_key + ":audited"
        after = await redis.get(cursor_key)
        events = await self.health_store.events(after.decode() if after else "0-0", 500)
        if not events:
            return 0
        copied = 0
        async with self.store.transaction() as q:
            for event_id, fields in events:
                did = fields["did"]
                rows = await q.audit_log(subject=did, limit=20)
                if any(row["detail"].get("event_id") == event_id for row in rows):
                    continue
                action = "rest" if fields["event"] == "rested" else "return"
                detail = {"event_id": event_id, **{
                    k: v for k, v in fields.items() if k not in ("did", "event", "at") and v
                }}
                await q.audit(float(fields["at"]), "dialer", action, did, None, "ok", detail)
                copied += 1
        await redis.set(cursor_key, events[-1][0])
        return copied

    async def audit_log(self, subject: str | None = None, limit: int = 100) -> list[dict]:
        if subject is not None:
            subject = rules.text(subject, "subject", rules.MAX_SUBJECT)
        async with self.store.reading() as q:
            return await q.audit_log(subject, max(1, min(limit, 1000)))

    # import (`zvonok-agi load`)

    async def import_inventory(
        self, actor: str, inventory: Inventory,
        overrides: Mapping[str, tuple[Kind | None, str | None]] | None = None,
    ) -> dict[str, int]:
        """Upserts an inventory's accounts, campaigns and numbers (kind and region from the
        numbering plan unless `overrides` says otherwise). Bindings and caller IDs are checked
        against the rules before anything is written: a file breaking one writes nothing. It is
        then written in batches, other writers getting their turn between them, each batch
        published after its commit; loading a file again writes only what differs."""
        overrides = overrides or {}
        counts = {"accounts": len(inventory.accounts), "numbers": len(inventory.numbers),
                  "campaigns": len(inventory.campaigns)}
        try:
            accounts = [_named(account) for account in inventory.accounts]
            campaigns = [_named(campaign) for campaign in inventory.campaigns]
            numbers = [
                NumberRecord(item.did, *_checked(rules.classify, item.did,
                                                 *overrides.get(item.did, NO_HINT),
                                                 where=f"number {item.did}"),
                             item.pool, item.status, item.owner, item.callback_rule,
                             item.inbound_campaign)
                for item in inventory.numbers
            ]
            async with self.store.reading() as q:
                await _check_import(q, inventory, numbers)
        except Refused as exc:
            await self._audit(actor, "import", "inventory", exc.code,
                              {**counts, "message": exc.message})
            raise
        now = self.clock()
        inbound = [c for c in campaigns if c.kind is CampaignKind.INBOUND]
        outbound = [c for c in campaigns if c.kind is CampaignKind.OUTBOUND]
        # Referenced before referencing: numbers name inbound campaigns, outbound campaigns
        # name numbers. Each batch's rows are built in a thread while the batch before it is
        # written: the store runs a batch's statements without the interpreter's lock.
        steps = [(Queries.import_accounts, list, accounts),
                 (Queries.import_campaigns, list, inbound),
                 (Queries.import_numbers, functools.partial(number_rows, now=now), numbers),
                 (Queries.import_campaigns, list, outbound)]
        batches = [(write, ready, items[start : start + IMPORT_BATCH])
                   for write, ready, items in steps
                   for start in range(0, len(items), IMPORT_BATCH)]
        await self._published()  # first what was left (and an emptied Redis filled)
        changed = done = 0
        publishing: asyncio.Task[None] | None = None
        ahead: asyncio.Future[Any] | None = None  # the next batch's rows, being built
        try:
            for i, (write, ready, batch) in enumerate(batches):
                rows = await ahead if ahead is not None else ready(batch)
                ahead = None
                if i + 1 < len(batches):
                    _, ready_next, batch_next = batches[i + 1]
                    ahead = asyncio.ensure_future(asyncio.to_thread(ready_next, batch_next))
                try:
                    async with self.store.transaction() as q:
                        written, published = await write(q, rows, now)
                except StoreConflict as exc:
                    # Only a change made meanwhile by someone else can get here.
                    refused = Refused(
                        "conflict", f"the store changed during the import ({exc}): {done} "
                        f"of {sum(counts.values())} records written; load the file again")
                    await self._audit(actor, "import", "inventory", refused.code,
                                      {**counts, "message": refused.message})
                    raise refused from exc
                changed, done = changed + written, done + len(batch)
                # Published while the next batch is written, one batch after the other.
                if publishing is not None:
                    await publishing
                if self.publisher is not None:
                    publishing = asyncio.create_task(self.publisher.publish_rows(published))
        finally:
            if ahead is not None:
                ahead.cancel()
            if publishing is not None:
                await publishing
        await self._audit(actor, "import", "inventory", "ok", {**counts, "changed": changed})
        return counts

    # publishing

    async def flush(self) -> bool:
        """Publishes what is still in the outbox (after Redis was away); True when empty."""
        if self.publisher is None:
            return await self.pending() == 0
        try:
            await self.publisher.publish()
        except UNAVAILABLE as exc:
            log.warning("routing data not published yet; kept for later", error=str(exc))
            return False
        return True

    async def pending(self) -> int:
        async with self.store.reading() as q:
            return await q.outbox_size()

    async def sync(self, actor: str) -> SyncReport:
        """Rebuilds Redis's routing data from the store (after a Redis loss, or to be sure),
        in batches, outside the store's lock: changes go on meanwhile."""
        if self.publisher is None:
            raise Refused("no_redis", "sync needs Redis")
        try:
            report = await self.publisher.rebuild()
        except Superseded as exc:  # its lock lost: what it wrote stands, the rest is refused
            raise Refused(
                "conflict", f"another process took over publishing during the sync ({exc}); "
                "sync again"
            ) from exc
        except (RedisError, OSError) as exc:
            raise Refused(
                "no_redis", f"Redis is not reachable ({exc}); the store is unchanged: sync "
                "again once Redis is back"
            ) from exc
        await self._audit(actor, "sync", "routing", "ok", asdict(report))
        return report

    async def _published(self, rows: Sequence[tuple[int, Stored | Delete]] = ()) -> None:
        if self.publisher is not None:
            await self.publisher.after_commit(rows)

    async def _audit(
        self, actor: str, action: str, subject: str, outcome: str, detail: dict[str, Any]
    ) -> None:
        async with self.store.transaction() as q:
            await q.audit(self.clock(), actor, action, subject, None, outcome, detail)

    # the change frame: transaction, refusal, audit; published after the commit

    @contextlib.asynccontextmanager
    async def _change(
        self, actor: str, action: str, subject: str, account: str | None, **detail: Any
    ) -> AsyncIterator[_Change]:
        change: _Change | None = None
        try:
            async with self.store.transaction() as q:
                change = _Change(q, subject, account, dict(detail))
                yield change
                if not change.quiet:
                    await q.audit(self.clock(), actor, action, change.subject, change.account,
                                  "ok", change.detail)
        except Refused as exc:  # rolled back: only the refusal's audit row is written
            if change is None:
                raise
            change.detail["message"] = exc.message
            async with self.store.transaction() as q:
                await q.audit(self.clock(), actor, action, change.subject, change.account,
                              exc.code, change.detail)
            raise
        await self._published(q.outboxed)


async def _check_import(q: Queries, inventory: Inventory, numbers: list[NumberRecord]) -> None:
    """An inventory's bindings and caller IDs by the rules, against the store as it will be
    (the file's records over the stored ones)."""
    by_did = {n.did: n for n in numbers}
    accounts = {a.id: a for a in inventory.accounts}
    campaigns = {c.id: c for c in inventory.campaigns}
    bound = {n.inbound_campaign for n in numbers if n.inbound_campaign} - campaigns.keys()
    campaigns.update((c.id, c) for c in await q.campaigns_in(bound))
    callers = {c.caller_id for c in inventory.campaigns if c.caller_id} - by_did.keys()
    by_did.update((n.did, n) for n in await q.numbers_in(callers))
    # A disabled number keeps its binding and its campaigns: check them as if active.
    for number in numbers:
        if number.inbound_campaign:
            campaign = campaigns.get(number.inbound_campaign)
            _check(rules.binding_refusal(_active(number), campaign, None), number.did)
    for campaign in inventory.campaigns:
        if campaign.caller_id:
            number = by_did.get(campaign.caller_id)
            _check(rules.caller_id_refusal(accounts[campaign.account], campaign.kind,
                                           campaign.caller_id, number and _active(number)),
                   f"campaign {campaign.id}")


def _active(number: NumberRecord) -> NumberRecord:
    return number if number.active else replace(number, status=NumberStatus.ACTIVE)


def _row(number: NumberRecord, campaigns: list[Campaign]) -> NumberRow:
    if number.pool is Pool.SERVICE:
        dialing = [c.id for c in campaigns
                   if c.kind is CampaignKind.OUTBOUND and c.caller_id is None]
    else:
        dialing = [c.id for c in campaigns if c.caller_id == number.did]
    return NumberRow(number, dialing)


def _found(value: T | None, code: str, message: str) -> T:
    if value is None:
        raise Refused(code, message)
    return value


def _check(refusal: Refused | None, where: str = "") -> None:
    if refusal is not None:
        if where:
            raise Refused(refusal.code, f"{where}: {refusal.message}")
        raise refusal


def _named(record: Named) -> Named:
    """An imported account or campaign, its name checked as any other's."""
    where = f"{'account' if isinstance(record, Account) else 'campaign'} {record.id}"
    name = _checked(rules.text, record.name, "name", rules.MAX_NAME, where=where)
    return record if name == record.name else replace(record, name=name)


def _checked(check: Callable[..., T], *args: Any, where: str) -> T:
    """A check of input whose refusal says where the input was (an import's item)."""
    try:
        return check(*args)
    except Refused as exc:
        raise Refused(exc.code, f"{where}: {exc.message}") from None


def _acting(as_account: Any) -> str | None:
    """The account a change is made as (None: an operator)."""
    return None if as_account is None else rules.ident(as_account, "as_account")


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise Refused("bad_input", f"{what} must be true or false")
    return value


def _scenario_detail(scenario: Scenario | None, cleared: bool = False) -> dict[str, Any]:
    """A scenario as the audit log keeps it: its document, or None when `cleared`."""
    if scenario is None:
        return {"scenario": None} if cleared else {}
    return {"scenario": scenarios.document(scenario)}


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not KEEP}
