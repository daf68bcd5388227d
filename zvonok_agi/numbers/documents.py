"""The JSON shapes of the control plane's records: what the admin API answers and what the CLI
prints with `--json`. The OpenAPI document (`zvonok_agi.web.openapi`) describes these shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import phone, regions
from ..routing import scenario as scenarios
from ..routing.model import Account, Campaign
from ..store.number_health import NumberHealth
from .rules import NumberRecord, RegionCount, Request
from .service import NumberDetails, NumberRow, NumbersView, Offer, SyncReport


def account(a: Account) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "verified": a.verified}


def number(n: NumberRecord) -> dict[str, Any]:
    return {
        "did": n.did,
        "written": phone.written(n.did),
        "kind": n.kind.value,
        "region": n.region,
        "region_names": regions.display_names(n.region),
        "pool": n.pool.value,
        "status": n.status.value,
        "owner": n.owner,
        "reserved": n.is_reserved,
        # The rule is shown only for reserved numbers (routing-rules.md, the numbers view).
        "callback_rule": n.callback_rule.value if n.is_reserved else None,
        "inbound_campaign": n.inbound_campaign,
        "reserved_at": n.reserved_at,
    }


Health = Mapping[str, NumberHealth] | None  # None: Redis away, health unknown


def row(r: NumberRow, health: Health = None) -> dict[str, Any]:
    return {**number(r.number), "dialing": r.dialing,
            "health": number_health(health.get(r.number.did) if health is not None else None)}


def number_health(h: NumberHealth | None) -> dict[str, Any] | None:
    """Calls placed and answered over the window, the answer rate (None before any call) and,
    while the number rests, until when."""
    if h is None:
        return None
    return {"placed": h.counts.placed, "answered": h.counts.answered, "rate": h.counts.rate,
            "rested_until": h.rested_until}


def view(v: NumbersView, health: Health = None) -> dict[str, Any]:
    return {
        "account": v.account,
        "status": v.status.value,
        "search": v.search,
        "reserved": v.reserved,
        "tabs": v.tabs,
        "numbers": [row(r, health) for r in v.rows],
    }


def details(d: NumberDetails, health: Health = None) -> dict[str, Any]:
    return {**row(d.row, health), "history": d.history}


def campaign(c: Campaign) -> dict[str, Any]:
    return {
        "id": c.id,
        "account": c.account,
        "kind": c.kind.value,
        "accept_inbound": c.accept_inbound,
        "state": c.state.value,
        "caller_id": c.caller_id,  # None: the service pool
        "name": c.name,
        "scenario": None if c.scenario is None else scenarios.document(c.scenario),
    }


def region(r: RegionCount) -> dict[str, Any]:
    return {"region": r.region, "names": regions.display_names(r.region),
            "available": r.available}


def request(r: Request) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": r.id, "account": r.account, "topic": r.topic, "kind": r.kind and r.kind.value,
        "region": r.region,
        "region_names": regions.display_names(r.region) if r.region else None,
        "at": r.at, "status": r.status,
    }
    if r.topic == "support":
        document.update(comment=r.comment, contact=r.contact,
                        contact_written=r.contact and phone.written(r.contact))
    if r.status == "closed":
        document.update(closed_at=r.closed_at, closed_by=r.closed_by, note=r.note)
    return document


def offer(o: Offer) -> dict[str, Any]:
    return {
        "kind": o.kind.value,
        "region": o.region,
        "numbers": [number(n) for n in o.numbers],
        "request": request(o.request) if o.request else None,
        "message": o.message,
    }


def sync_report(r: SyncReport) -> dict[str, Any]:
    return {"accounts": r.accounts, "numbers": r.numbers, "campaigns": r.campaigns,
            "removed": r.removed}
