"""The admin API's handlers: HTTP in, one service call, JSON out. No rule lives here.

Bodies are read by the fields the OpenAPI document declares; the values themselves are checked
by the service (the CLI hands it the same raw values), whose refusals `app` turns into errors.
Every call is made as its caller (`auth`): a customer's reach only their own account, whatever
the path or the query names; staff's any.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from .. import phone
from ..access.users import Users
from ..numbers import documents, rules
from ..numbers.rules import Refused
from ..numbers.service import KEEP, NumbersService
from ..outbound.queue import CampaignQueue, progress_document, split_callees
from .auth import COOKIE, Access, Caller, caller
from .openapi import DOCUMENT, body_fields


def own(request: web.Request, account: str | None) -> str | None:
    """The account a call is made for: a customer's own (naming another is refused); staff:
    the one named, or None (every account)."""
    who = caller(request)
    if who.staff:
        return account
    if account is not None and account != who.account:
        raise Refused("not_owner", "this belongs to another account")
    return who.account


class Api:
    def __init__(
        self, service: NumbersService, users: Users, access: Access,
        region: str = phone.DEFAULT_REGION,
    ) -> None:
        self.service = service
        self.users = users
        self.access = access
        self.region = region  # of callees written without a country code

    def add_routes(self, app: web.Application) -> None:
        app.router.add_routes([
            web.get("/api/openapi.json", self.openapi),
            web.post("/api/session", self.sign_in),
            web.delete("/api/session", self.sign_out),
            web.get("/api/me", self.me),
            web.post("/api/me/password", self.change_password),
            web.get("/api/health", self.health),
            web.get("/api/accounts", self.accounts),
            web.post("/api/accounts", self.create_account),
            web.get("/api/accounts/{account}", self.account),
            web.patch("/api/accounts/{account}", self.update_account),
            web.post("/api/accounts/{account}/offers", self.offer),
            web.post("/api/accounts/{account}/reservations", self.reserve),
            web.delete("/api/accounts/{account}/reservations/{did}", self.release),
            web.post("/api/accounts/{account}/requests", self.support_request),
            web.get("/api/regions", self.regions),
            web.get("/api/numbers", self.numbers),
            web.post("/api/numbers", self.add_number),
            web.get("/api/numbers/{did}", self.number),
            web.patch("/api/numbers/{did}", self.change_number),
            web.post("/api/numbers/{did}/disable", self.disable),
            web.post("/api/numbers/{did}/enable", self.enable),
            web.get("/api/campaigns", self.campaigns),
            web.post("/api/campaigns", self.create_campaign),
            web.get("/api/campaigns/{campaign}", self.campaign),
            web.patch("/api/campaigns/{campaign}", self.update_campaign),
            web.post("/api/campaigns/{campaign}/callees", self.queue_callees),
            web.get("/api/campaigns/{campaign}/progress", self.campaign_progress),
            web.get("/api/requests", self.requests),
            web.post("/api/requests/{request}/close", self.close_request),
            web.get("/api/audit", self.audit),
            web.post("/api/sync", self.sync),
        ])

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(DOCUMENT)

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "pending": await self.service.pending()})

    # signing in

    async def sign_in(self, request: web.Request) -> web.Response:
        self.access.check_origin(request)
        body = await _body(request, "SignIn")
        session = await self.users.sign_in(body["login"], body["password"],
                                           self.access.address(request))
        who = Caller(session.user.actor, session.user.account, session)
        response = await self._me(who)
        self.access.start_session(response, session)
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        token = request.cookies.get(COOKIE) if caller(request).session else None
        if token:
            await self.users.sign_out(token)
        response = _json({"ok": True})
        self.access.end_session(response)
        return response

    async def me(self, request: web.Request) -> web.Response:
        return await self._me(caller(request))

    async def change_password(self, request: web.Request) -> web.Response:
        who = caller(request)
        if who.session is None:
            raise Refused("forbidden", "the admin token has no password: sign in as a user")
        body = await _body(request, "PasswordChange")
        session = await self.users.change_password(who.session, body["current"], body["new"],
                                                    self.access.address(request))
        response = await self._me(Caller(who.actor, who.account, session))
        self.access.start_session(response, session)
        return response

    async def _me(self, who: Caller) -> web.Response:
        account = await self.service.account(who.account) if who.account else None
        user = who.session.user if who.session else None
        return _json({
            "login": user.login if user else None,
            "name": user.name if user else "",
            "role": user.role.value if user else "staff",
            "account": documents.account(account) if account else None,
            "csrf": who.session.csrf if who.session else None,
        })

    # accounts

    async def accounts(self, request: web.Request) -> web.Response:
        accounts = await self.service.accounts()
        return _json({"accounts": [documents.account(a) for a in accounts]})

    async def create_account(self, request: web.Request) -> web.Response:
        body = await _body(request, "NewAccount")
        account = await self.service.create_account(
            caller(request).actor, body["id"], body.get("name", ""), body.get("verified", False)
        )
        return _json(documents.account(account), 201)

    async def account(self, request: web.Request) -> web.Response:
        account = await self.service.account(own(request, request.match_info["account"]))
        return _json(documents.account(account))

    async def update_account(self, request: web.Request) -> web.Response:
        body = await _body(request, "AccountChange")
        account = await self.service.update_account(
            caller(request).actor, request.match_info["account"], name=body.get("name", KEEP),
            verified=body.get("verified", KEEP),
        )
        return _json(documents.account(account))

    # the reservation flow

    async def regions(self, request: web.Request) -> web.Response:
        regions = await self.service.regions(_query(request, "choice", required=True))
        return _json({"regions": [documents.region(r) for r in regions]})

    async def offer(self, request: web.Request) -> web.Response:
        body = await _body(request, "OfferRequest")
        offer = await self.service.offer(
            caller(request).actor, own(request, request.match_info["account"]), body["choice"],
            body["region"],
        )
        return _json(documents.offer(offer))

    async def reserve(self, request: web.Request) -> web.Response:
        body = await _body(request, "Reservation")
        number = await self.service.reserve(
            caller(request).actor, own(request, request.match_info["account"]), body["did"]
        )
        return _json(documents.number(number), 201)

    async def support_request(self, request: web.Request) -> web.Response:
        body = await _body(request, "SupportRequest")
        filed = await self.service.support_request(
            caller(request).actor, own(request, request.match_info["account"]),
            body["comment"], body["contact"], choice=body.get("choice", KEEP),
            region=body.get("region", KEEP),
        )
        return _json(documents.request(filed), 201)

    # numbers

    async def numbers(self, request: web.Request) -> web.Response:
        view = await self.service.numbers_view(
            own(request, _query(request, "account")),
            _query(request, "status", default="active"),
            _query(request, "search", default=""),
        )
        health = await self.service.health(r.number.did for r in view.rows)
        return _json(documents.view(view, health))

    async def add_number(self, request: web.Request) -> web.Response:
        body = await _body(request, "NewNumber")
        number = await self.service.add_number(
            caller(request).actor, body["did"], body.get("pool", "reservable"),
            kind=body.get("kind"), region=body.get("region"),
            status=body.get("status", "active"),
        )
        return _json(documents.number(number), 201)

    async def number(self, request: web.Request) -> web.Response:
        details = await self.service.number(request.match_info["did"], own(request, None))
        health = await self.service.health([details.row.number.did])
        return _json(documents.details(details, health))

    async def change_number(self, request: web.Request) -> web.Response:
        body = await _body(request, "NumberChange")
        number = await self.service.change_number(
            caller(request).actor, request.match_info["did"],
            inbound_campaign=body.get("inbound_campaign", KEEP),
            callback_rule=body.get("callback_rule", KEEP),
            as_account=own(request, _query(request, "as_account")),
        )
        return _json(documents.number(number))

    async def release(self, request: web.Request) -> web.Response:
        number = await self.service.release(
            caller(request).actor, request.match_info["did"],
            as_account=own(request, request.match_info["account"]),
        )
        return _json(documents.number(number))

    async def disable(self, request: web.Request) -> web.Response:
        number = await self.service.disable(
            caller(request).actor, request.match_info["did"],
            as_account=own(request, _query(request, "as_account")),
        )
        return _json(documents.number(number))

    async def enable(self, request: web.Request) -> web.Response:
        number = await self.service.enable(
            caller(request).actor, request.match_info["did"],
            as_account=own(request, _query(request, "as_account")),
        )
        return _json(documents.number(number))

    # campaigns

    async def campaigns(self, request: web.Request) -> web.Response:
        campaigns = await self.service.campaigns(own(request, _query(request, "account")))
        return _json({"campaigns": [documents.campaign(c) for c in campaigns]})

    async def create_campaign(self, request: web.Request) -> web.Response:
        body = await _body(request, "NewCampaign")
        campaign = await self.service.create_campaign(
            caller(request).actor, body.get("id"), own(request, body["account"]), body["kind"],
            accept_inbound=body.get("accept_inbound", False),
            state=body.get("state", "running"), caller_id=body.get("caller_id"),
            name=body.get("name", ""), scenario=body.get("scenario"),
        )
        return _json(documents.campaign(campaign), 201)

    async def campaign(self, request: web.Request) -> web.Response:
        campaign = await self.service.campaign(request.match_info["campaign"],
                                               own(request, None))
        return _json(documents.campaign(campaign))

    async def update_campaign(self, request: web.Request) -> web.Response:
        body = await _body(request, "CampaignChange")
        campaign = await self.service.update_campaign(
            caller(request).actor, request.match_info["campaign"],
            accept_inbound=body.get("accept_inbound", KEEP), state=body.get("state", KEEP),
            caller_id=body.get("caller_id", KEEP), name=body.get("name", KEEP),
            scenario=body.get("scenario", KEEP), as_account=own(request, None),
        )
        return _json(documents.campaign(campaign))

    # dialing

    async def queue_callees(self, request: web.Request) -> web.Response:
        body = await _body(request, "CalleeList")
        callees = rules.callee_list(body["callees"])
        cps = rules.calls_per_second(body.get("cps"))
        concurrency = rules.concurrency(body.get("concurrency"))
        campaign = await self.service.campaign(request.match_info["campaign"],
                                               own(request, None))
        refusal = rules.dialing_refusal(campaign)
        if refusal is not None:
            raise refusal
        numbers, invalid = split_callees(callees, self.region)
        queue = self._queue()
        try:
            await queue.configure(campaign.id, cps=cps, concurrency=concurrency)
            queued = await queue.enqueue(campaign.id, numbers, invalid)
        except (RedisError, OSError) as exc:
            raise Refused("no_redis", f"Redis is not reachable: {exc}") from exc
        return _json({
            "campaign": campaign.id,
            "queued": queued,
            "queued_before": len(numbers) - queued,
            "refused": [{"callee": callee, "reason": why} for callee, why in invalid],
        })

    async def campaign_progress(self, request: web.Request) -> web.Response:
        campaign = await self.service.campaign(request.match_info["campaign"],
                                               own(request, None))
        queue = self._queue()
        try:
            progress = await queue.progress(campaign.id)
            calls = await queue.calls(campaign.id)
        except (RedisError, OSError) as exc:
            raise Refused("no_redis", f"Redis is not reachable: {exc}") from exc
        return _json(progress_document(progress, calls))

    def _queue(self) -> CampaignQueue:
        if self.service.data is None:
            raise Refused("no_redis", "this server has no Redis")
        return CampaignQueue(self.service.data.redis, self.service.data.prefix)

    # requests, audit, sync

    async def requests(self, request: web.Request) -> web.Response:
        status = _query(request, "status", default="open")
        requests = await self.service.requests(None if status == "all" else status,
                                               own(request, _query(request, "account")))
        return _json({"requests": [documents.request(r) for r in requests]})

    async def close_request(self, request: web.Request) -> web.Response:
        body = await _body(request, "RequestClosing", optional=True)
        closed = await self.service.close_request(
            caller(request).actor, request.match_info["request"], body.get("note")
        )
        return _json(documents.request(closed))

    async def audit(self, request: web.Request) -> web.Response:
        limit = _query(request, "limit", default="100")
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 1000:
            raise Refused("bad_input", "limit must be a whole number from 1 to 1000")
        entries = await self.service.audit_log(_query(request, "subject"), int(limit))
        return _json({"entries": entries})

    async def sync(self, request: web.Request) -> web.Response:
        return _json(documents.sync_report(await self.service.sync(caller(request).actor)))


def _json(document: Any, status: int = 200) -> web.Response:
    return web.json_response(
        document, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False)
    )


def _query(
    request: web.Request, name: str, required: bool = False, default: str | None = None
) -> str | None:
    """A query parameter given at most once; left out: `default` (`name=` is given, empty)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise Refused("bad_input", f"{name} is given more than once")
    if not values:
        if required:
            raise Refused("bad_input", f"the query parameter {name} is required")
        return default
    return values[0]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def _body(request: web.Request, schema: str, optional: bool = False) -> dict[str, Any]:
    """The JSON object in the body, with only the fields the document declares for it
    (`optional`: no body at all reads as an empty object)."""
    raw = await request.read()  # past the cap: 413, turned into JSON by the app
    if optional and not raw:
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        raise Refused("bad_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refused("bad_input", "the body must be a JSON object")
    allowed, required, nullable = body_fields(schema)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Refused("bad_input", f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(required - set(body))
    if missing:
        raise Refused("bad_input", f"missing field(s): {', '.join(missing)}")
    null = sorted(name for name, value in body.items() if value is None and name not in nullable)
    if null:  # a field left out means "as it is" or "the default"; null is neither
        raise Refused("bad_input", f"field(s) that may not be null: {', '.join(null)}")
    return body
