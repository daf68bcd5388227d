"""The JSON shapes of the control plane's records: what the admin API answers and what the CLI
prints with `--json`. The OpenAPI document (`zvonok_agi.web.openapi`) describes these shapes."""

from __future__ import annotations

from typing import Any

from .. import phone, regions
from ..routing.model import Account, Campaign
from .rules import NumberRecord, RegionCount, Request
from .service import NumberDetails, NumberRow, NumbersView, Offer, SyncReport


def account(a: Account) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "verified": a.verified}


def number(n: NumberRecord) -> dict[str, Any]:
    return {
        "did": n.did,
        "written": phone.plan(n.did).written,
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


def row(r: NumberRow) -> dict[str, Any]:
    return {**number(r.number), "dialing": r.dialing}


def view(v: NumbersView) -> dict[str, Any]:
    return {
        "account": v.account,
        "status": v.status.value,
        "search": v.search,
        "reserved": v.reserved,
        "tabs": v.tabs,
        "numbers": [row(r) for r in v.rows],
    }


def details(d: NumberDetails) -> dict[str, Any]:
    return {**row(d.row), "history": d.history}


def campaign(c: Campaign) -> dict[str, Any]:
    return {
        "id": c.id,
        "account": c.account,
        "kind": c.kind.value,
        "accept_inbound": c.accept_inbound,
        "state": c.state.value,
        "caller_id": c.caller_id,  # None: the service pool
        "name": c.name,
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
                        contact_written=r.contact and phone.plan(r.contact).written)
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
