"""The admin API's OpenAPI document: served at /api/openapi.json, checked by the tests (the
document itself, every route against it, every test response against its schema).

Request bodies are read by the fields declared here: a field that is not declared is refused.
Every operation says who may call it (`x-access`, enforced by `auth`): `public`, `user`
(anyone signed in), `account` (a customer for their own account, staff for any), `staff`.
"""

from __future__ import annotations

from typing import Any

from .. import __version__, phone, text
from ..numbers import rules
from ..routing import scenario as scenarios


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], what: str = "OK") -> dict[str, Any]:
    return {"description": what, **_json(schema)}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return {"type": "object", "required": [key],
            "properties": {key: {"type": "array", "items": _ref(item)}}}


# Every operation may write (a signed-in user's session is kept alive), and every one
# needs the store: 503 when it is busy or away.
ERRORS = {
    "400": {"$ref": "#/components/responses/BadInput"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/NotFound"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}
CHANGE_ERRORS = {
    **ERRORS,
    "403": {"$ref": "#/components/responses/Forbidden"},
    "409": {"$ref": "#/components/responses/Conflict"},
    "413": {"$ref": "#/components/responses/TooLarge"},
}


ACCESS = ("public", "user", "account", "staff")


def _op(summary: str, responses: dict[str, Any], *, access: str, body: str | None = None,
        body_required: bool = True, params: list[dict[str, Any]] | None = None,
        change: bool = False) -> dict[str, Any]:
    assert access in ACCESS, access
    op: dict[str, Any] = {
        "summary": summary,
        "x-access": access,
        "responses": {**responses, **(CHANGE_ERRORS if change else ERRORS)},
    }
    if access in ("account", "staff"):
        op["responses"].setdefault("403", {"$ref": "#/components/responses/Forbidden"})
    if body:
        op["requestBody"] = {"required": body_required, **_json(_ref(body))}
    if params:
        op["parameters"] = params
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


def _text(limit: int, required: bool = False) -> dict[str, Any]:
    """Free text: no control, format, private-use or surrogate characters (zvonok_agi.text)."""
    return {"type": "string", "maxLength": limit, **text.json_schema(required)}


ID = {"type": "string", "pattern": rules.ACCOUNT_ID.pattern}
PHONE = {
    "type": "string", "maxLength": phone.MAX_RAW_LENGTH, "pattern": phone.RUSSIAN_WRITTEN,
    "description": "a Russian number as people write it: +7 495 123-45-67, "
                   "8 (495) 123-45-67, 74951234567",
}
DID = _path("did", PHONE, "a phone number (normalised to E.164 digits)")
ACCOUNT = _path("account", ID, "an account id")
CAMPAIGN = _path("campaign", ID, "a campaign id")
REQUEST = _path("request", {"type": "integer", "minimum": 1, "maximum": rules.MAX_ROW_ID},
                "a request's id")
AS_ACCOUNT = _query("as_account", ID, "act as this account: only its own numbers may be changed")
NAME = _text(rules.MAX_NAME)
CALLER_ID = _nullable({"anyOf": [PHONE, {"const": "pool"}]})
RECORDING = {
    "type": "string", "pattern": f"^{scenarios.RECORDING.pattern}$",
    "description": "a file of Asterisk's sounds, without folder or extension",
}
SCENARIO_NAME = {"type": "string", "pattern": f"^{scenarios.ENDPOINT.pattern}$"}
REGION = {**_text(rules.MAX_REGION, required=True),
          "description": "as people type it, in Russian or English: Moscow, Москва, Moskva"}
CHOICE = {"enum": ["mobile", "landline_popular", "landline"]}
NAMES = {
    "type": "object", "required": ["en", "ru"],
    "properties": {"en": {"type": "string"}, "ru": {"type": "string"}},
    "description": "a region's name to show, by language (the plan's Russian name)",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable: clients branch on it"},
                "message": {"type": "string", "description": "for people"},
                "choices": {
                    "type": "array", "items": {"type": "string"},
                    "description": "what may have been meant (unknown_region, "
                                   "ambiguous_region: the regions the name may mean)",
                },
                "choice_names": {"type": "array", "items": NAMES,
                                 "description": "the choices' names to show"},
            },
        }},
    },
    "Account": {
        "type": "object",
        "required": ["id", "name", "verified"],
        "properties": {"id": ID, "name": {"type": "string"}, "verified": {"type": "boolean"}},
    },
    "NewAccount": {
        "type": "object",
        "required": ["id"],
        "additionalProperties": False,
        "properties": {"id": ID, "name": NAME, "verified": {"type": "boolean"}},
    },
    "AccountChange": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"name": NAME, "verified": {"type": "boolean"}},
    },
    "Number": {
        "type": "object",
        "required": ["did", "written", "kind", "region", "region_names", "pool", "status",
                     "owner", "reserved", "callback_rule", "inbound_campaign", "reserved_at"],
        "properties": {
            "did": {"type": "string", "pattern": "^[0-9]{5,15}$"},
            "written": {"type": "string", "description": "as people read it: +7 495 123-45-67"},
            "kind": {"enum": ["mobile", "landline"]},
            "region": {"type": "string"},
            "region_names": NAMES,
            "pool": {"enum": ["service", "reservable"]},
            "status": {"enum": ["active", "disabled"]},
            "owner": _nullable({"type": "string"}),
            "reserved": {"type": "boolean"},
            "callback_rule": {
                "enum": ["force_yes", "as_campaign", "force_no", None],
                "description": "only for reserved numbers",
            },
            "inbound_campaign": _nullable({"type": "string"}),
            "reserved_at": _nullable({"type": "number"}),
        },
    },
    "NumberRow": {
        "allOf": [_ref("Number"), {
            "type": "object",
            "required": ["dialing", "health"],
            "properties": {
                "dialing": {
                    "type": "array", "items": {"type": "string"},
                    "description": "outbound campaigns showing this number as caller ID",
                },
                "health": _nullable(_ref("NumberHealth")),
            },
        }],
    },
    "NumberHealth": {
        "type": "object",
        "description": "calls over the health window (docs/routing.md, Number health); null "
                       "when Redis is not reachable",
        "required": ["placed", "answered", "rate", "rested_until"],
        "properties": {
            "placed": {"type": "integer", "minimum": 0},
            "answered": {"type": "integer", "minimum": 0},
            "rate": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "rested_until": _nullable({"type": "number",
                                       "description": "a resting pool number: until when"}),
        },
    },
    "NumberDetails": {
        "allOf": [_ref("NumberRow"), {
            "type": "object",
            "required": ["history"],
            "properties": {"history": {"type": "array", "items": _ref("AuditEntry")}},
        }],
    },
    "NumbersView": {
        "type": "object",
        "required": ["account", "status", "search", "reserved", "tabs", "numbers"],
        "properties": {
            "account": _nullable({"type": "string"}),
            "status": {"enum": ["active", "disabled"]},
            "search": {"type": "string"},
            "reserved": {
                "type": "object",
                "description": "reserved numbers by kind, then by status",
                "additionalProperties": {"type": "object",
                                         "additionalProperties": {"type": "integer"}},
            },
            "tabs": {
                "type": "object",
                "required": ["active", "disabled"],
                "properties": {"active": {"type": "integer"}, "disabled": {"type": "integer"}},
            },
            "numbers": {"type": "array", "items": _ref("NumberRow")},
        },
    },
    "NewNumber": {
        "type": "object",
        "required": ["did"],
        "additionalProperties": False,
        "properties": {
            "did": {**PHONE, "description": "a Russian mobile or city number (toll-free and "
                    "foreign ones: unsupported_number)"},
            "pool": {"enum": ["service", "reservable"]},
            "kind": {"enum": ["mobile", "landline"]},
            "region": {**_text(rules.MAX_REGION, required=True),
                       "description": "left out: the numbering plan's"},
            "status": {"enum": ["active", "disabled"]},
        },
    },
    "NumberChange": {
        "type": "object",
        "additionalProperties": False,
        "description": "the seed's Change window; fields left out stay as they are",
        "properties": {
            "inbound_campaign": _nullable(ID),
            "callback_rule": {"enum": ["force_yes", "as_campaign", "force_no"]},
        },
    },
    "Region": {
        "type": "object",
        "required": ["region", "names", "available"],
        "properties": {"region": {"type": "string"}, "names": NAMES,
                       "available": {"type": "integer"}},
    },
    "OfferRequest": {
        "type": "object",
        "required": ["choice", "region"],
        "additionalProperties": False,
        "properties": {
            "choice": CHOICE,
            "region": REGION,
        },
    },
    "Offer": {
        "type": "object",
        "required": ["kind", "region", "numbers", "request", "message"],
        "properties": {
            "kind": {"enum": ["mobile", "landline"]},
            "region": {"type": "string"},
            "numbers": {"type": "array", "items": _ref("Number")},
            "request": _nullable(_ref("Request")),
            "message": {"type": "string"},
        },
    },
    "Reservation": {
        "type": "object",
        "required": ["did"],
        "additionalProperties": False,
        "properties": {"did": PHONE},
    },
    "Campaign": {
        "type": "object",
        "required": ["id", "account", "kind", "accept_inbound", "state", "caller_id", "name",
                     "scenario"],
        "properties": {
            "id": ID,
            "account": ID,
            "kind": {"enum": ["outbound", "inbound"]},
            "accept_inbound": {"type": "boolean"},
            "state": {"enum": ["running", "paused", "finished"]},
            "caller_id": _nullable({"type": "string"}),
            "name": {"type": "string"},
            "scenario": {**_nullable(_ref("Scenario")),
                         "description": "null: none, its own dialplan context routes its calls"},
        },
    },
    "Scenario": {
        "type": "object",
        "additionalProperties": False,
        "anyOf": [{"required": ["play"]}, {"required": ["operators"]}],
        "dependentRequired": {"no_answer": ["operators"]},
        "description": "what a campaign's calls do when the dialplan has no context of its own "
                       "for it (docs/routing.md, Scenarios): a recording, operators, or both; "
                       "an outbound campaign's calls need a recording, and reach the operators "
                       "by pressing a digit (1 unless given); an inbound campaign's callers "
                       "reach them at once (no digit)",
        "properties": {
            "version": {"const": scenarios.VERSION},
            "play": RECORDING,
            "operators": {
                "type": "object",
                "additionalProperties": False,
                "description": "a queue or endpoints (one of the two), rung ring_timeout "
                               "seconds",
                "oneOf": [{"required": ["queue"]}, {"required": ["endpoints"]}],
                "properties": {
                    "digit": {"enum": list(scenarios.DIGITS)},
                    "queue": {**SCENARIO_NAME, "description": "a queue of queues.conf"},
                    "endpoints": {
                        "type": "array", "minItems": 1, "maxItems": scenarios.MAX_ENDPOINTS,
                        "uniqueItems": True,
                        "items": {**SCENARIO_NAME, "description": "a PJSIP endpoint"},
                    },
                    "ring_timeout": {"type": "integer", "minimum": scenarios.MIN_RING_TIMEOUT,
                                     "maximum": scenarios.MAX_RING_TIMEOUT,
                                     "default": scenarios.DEFAULT_RING_TIMEOUT},
                },
            },
            "no_answer": {
                "type": "object",
                "additionalProperties": False,
                "required": ["play"],
                "description": "what callers hear when no operator answers (needs operators)",
                "properties": {"play": RECORDING},
            },
        },
    },
    "NewCampaign": {
        "type": "object",
        "required": ["account", "kind"],
        "additionalProperties": False,
        "properties": {
            "id": {**ID, "description": "left out: one is made"},
            "name": NAME,
            "account": ID,
            "kind": {"enum": ["outbound", "inbound"]},
            "accept_inbound": {"type": "boolean"},
            "state": {"enum": ["running", "paused", "finished"]},
            "caller_id": {**CALLER_ID, "description": "a reserved number of the account; "
                          "null or 'pool': the service pool"},
            "scenario": _nullable(_ref("Scenario")),
        },
        "if": {"required": ["kind"], "properties": {"kind": {"const": "inbound"}}},
        "then": {"properties": {"accept_inbound": {"const": False},
                                "caller_id": {"enum": [None, "pool"]},
                                "scenario": {"anyOf": [{"type": "null"}, {"properties": {
                                    "operators": {"not": {"required": ["digit"]}}}}]}},
                 "description": "an inbound campaign has no accept_inbound, no caller ID and "
                                "no digit to press"},
        "else": {"properties": {"scenario": {"anyOf": [{"type": "null"},
                                                       {"required": ["play"]}]}},
                 "description": "an outbound campaign's scenario plays a recording"},
    },
    "CampaignChange": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "accept_inbound": {"type": "boolean"},
            "state": {"enum": ["running", "paused", "finished"]},
            "caller_id": CALLER_ID,
            "name": NAME,
            "scenario": {**_nullable(_ref("Scenario")), "description": "null: none"},
        },
        "description": "what an inbound campaign has (accept_inbound false, the pool) may be "
                       "sent; anything else for one is refused (not_outbound)",
    },
    "Request": {
        "type": "object",
        "required": ["id", "account", "topic", "kind", "region", "region_names", "at",
                     "status"],
        "properties": {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "topic": {"enum": ["numbers", "support"],
                      "description": "numbers: none where asked; support: the customer wrote"},
            "kind": {"enum": ["mobile", "landline", None]},
            "region": _nullable({"type": "string"}),
            "region_names": _nullable(NAMES),
            "comment": {"type": "string", "description": "support: what the customer wrote"},
            "contact": {"type": "string", "description": "support: the phone to call back on"},
            "contact_written": {"type": "string", "description": "support: as people read it"},
            "at": {"type": "number"},
            "status": {"enum": ["open", "closed"]},
            "closed_at": {"type": "number", "description": "only when closed"},
            "closed_by": {"type": "string", "description": "only when closed: who closed it"},
            "note": {**_nullable({"type": "string"}), "description": "only when closed"},
        },
    },
    "SupportRequest": {
        "type": "object",
        "required": ["comment", "contact"],
        "additionalProperties": False,
        "properties": {
            "comment": _text(rules.MAX_NOTE, required=True),
            "contact": {**PHONE, "description": "the phone support calls back on"},
            "choice": {**CHOICE, "description": "the kind of number looked at, if any"},
            "region": {**REGION, "description": "the region looked at, if any"},
        },
    },
    "SignIn": {
        "type": "object",
        "required": ["login", "password"],
        "additionalProperties": False,
        "properties": {
            "login": {"type": "string", "maxLength": 64},
            "password": {"type": "string", "maxLength": 256},
        },
    },
    "PasswordChange": {
        "type": "object",
        "required": ["current", "new"],
        "additionalProperties": False,
        "properties": {
            "current": {"type": "string", "maxLength": 256},
            "new": {"type": "string", "minLength": 8, "maxLength": 256,
                    **text.json_schema(True)},
        },
    },
    "Me": {
        "type": "object",
        "required": ["login", "name", "role", "account", "csrf"],
        "properties": {
            "login": _nullable({"type": "string"}),
            "name": {"type": "string"},
            "role": {"enum": ["customer", "staff"]},
            "account": _nullable(_ref("Account")),
            "csrf": {**_nullable({"type": "string"}),
                     "description": "a session's: send it as X-CSRF-Token with every change "
                                    "(null with the bearer token)"},
        },
    },
    "Ok": {"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}},
    "RequestClosing": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"note": _nullable(_text(rules.MAX_NOTE))},
    },
    "AuditEntry": {
        "type": "object",
        "required": ["id", "at", "actor", "action", "subject", "account", "outcome", "detail"],
        "properties": {
            "id": {"type": "integer"},
            "at": {"type": "number"},
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "subject": {"type": "string"},
            "account": _nullable({"type": "string"}),
            "outcome": {"type": "string", "description": "ok, or the refusal's code"},
            "detail": {"type": "object"},
        },
    },
    "SyncReport": {
        "type": "object",
        "required": ["accounts", "numbers", "campaigns", "removed"],
        "properties": {
            "accounts": {"type": "integer"},
            "numbers": {"type": "integer"},
            "campaigns": {"type": "integer"},
            "removed": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "CalleeList": {
        "type": "object",
        "required": ["callees"],
        "additionalProperties": False,
        "properties": {
            "callees": {
                "type": "array",
                "minItems": 1,
                "maxItems": rules.MAX_CALLEES,
                "items": {"type": "string", "maxLength": phone.MAX_RAW_LENGTH},
                "description": "phone numbers as people write them; a callee queued before "
                               "is not queued again, one that is no phone number is refused",
            },
            "cps": {"type": "number", "exclusiveMinimum": 0, "maximum": rules.MAX_CPS,
                    "description": "the campaign's calls started per second, from now on"},
            "concurrency": {"type": "integer", "minimum": 1,
                            "maximum": rules.MAX_CONCURRENCY,
                            "description": "the campaign's calls at once, from now on"},
        },
    },
    "CalleesQueued": {
        "type": "object",
        "required": ["campaign", "queued", "queued_before", "refused"],
        "properties": {
            "campaign": ID,
            "queued": {"type": "integer", "description": "queued now, for the dialers"},
            "queued_before": {"type": "integer", "description": "already queued: not again"},
            "refused": {"type": "array", "items": {
                "type": "object",
                "required": ["callee", "reason"],
                "properties": {"callee": {"type": "string"}, "reason": {"type": "string"}},
            }},
        },
    },
    "CampaignProgress": {
        "type": "object",
        "required": ["campaign", "callees", "waiting", "dialing", "done", "refused", "outcomes",
                     "dialing_by_host", "cps", "concurrency"],
        "properties": {
            "campaign": ID,
            "callees": {"type": "integer", "description": "given for it, each counted once"},
            "waiting": {"type": "integer", "description": "queued, not dialed yet"},
            "dialing": {"type": "integer", "description": "being placed now, by any dialer"},
            "done": {"type": "integer", "description": "with an outcome"},
            "refused": {"type": "integer",
                        "description": "not dialed: not a number, or a rule or Asterisk said no"},
            "outcomes": {
                "type": "object",
                "required": ["answered", "no_answer", "busy", "failed", "congestion"],
                "properties": {name: {"type": "integer"} for name in
                               ("answered", "no_answer", "busy", "failed", "congestion")},
            },
            "dialing_by_host": {"type": "object", "additionalProperties": {"type": "integer"},
                                "description": "calls being placed, by Asterisk host"},
            "cps": _nullable({"type": "number"}),
            "concurrency": _nullable({"type": "integer"}),
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok", "pending"],
        "properties": {
            "ok": {"type": "boolean"},
            "pending": {"type": "integer", "description": "changes not yet in Redis"},
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref("Error"))}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "zvonok-agi admin API",
        "version": __version__,
        "description": "Subscriber numbers, accounts, campaigns: the control plane. Every "
                       "change is published to the routing engine at once.",
    },
    "security": [{"bearer": []}, {"session": []}],
    "paths": {
        "/api/openapi.json": {"get": {
            "summary": "this document (no credentials needed)",
            "x-access": "public",
            "security": [],
            "responses": {"200": _ok({"type": "object"})},
        }},
        "/api/session": {
            "post": {
                **_op("sign in: the session cookie is set (HttpOnly, SameSite=Strict)",
                      {"200": _ok(_ref("Me")),
                       "401": {"$ref": "#/components/responses/Unauthorized"},
                       "429": {"$ref": "#/components/responses/TooManyAttempts"}},
                      access="public", body="SignIn", change=True),
                "security": [],
            },
            "delete": _op("sign out: the session ends", {"200": _ok(_ref("Ok"))},
                          access="user", change=True),
        },
        "/api/me": {
            "get": _op("who is signed in, their account, the CSRF token of the session",
                       {"200": _ok(_ref("Me"))}, access="user"),
        },
        "/api/me/password": {
            "post": _op("change one's own password: every session ends, a new one begins",
                        {"200": _ok(_ref("Me")),
                         "429": {"$ref": "#/components/responses/TooManyAttempts"}},
                        access="user", body="PasswordChange", change=True),
        },
        "/api/health": {"get": _op("liveness and the publishing backlog",
                                   {"200": _ok(_ref("Health"))}, access="staff")},
        "/api/accounts": {
            "get": _op("every account", {"200": _ok(_list_of("accounts", "Account"))},
                       access="staff"),
            "post": _op("a new account", {"201": _ok(_ref("Account"), "Created")},
                        access="staff", body="NewAccount", change=True),
        },
        "/api/accounts/{account}": {
            "parameters": [ACCOUNT],
            "get": _op("one account", {"200": _ok(_ref("Account"))}, access="account"),
            "patch": _op("change an account (name, verified)", {"200": _ok(_ref("Account"))},
                         access="staff", body="AccountChange", change=True),
        },
        "/api/accounts/{account}/offers": {
            "parameters": [ACCOUNT],
            "post": _op("the available numbers of a region; none: a request for sales is "
                        "filed", {"200": _ok(_ref("Offer"))}, access="account",
                        body="OfferRequest", change=True),
        },
        "/api/accounts/{account}/reservations": {
            "parameters": [ACCOUNT],
            "post": _op("reserve a number (verified accounts; of racing accounts one wins)",
                        {"201": _ok(_ref("Number"), "Reserved")}, access="account",
                        body="Reservation", change=True),
        },
        "/api/accounts/{account}/reservations/{did}": {
            "parameters": [ACCOUNT, DID],
            "delete": _op("release the account's reserved number: back to the stock without "
                          "binding, rule or owner (the number stays)",
                          {"200": _ok(_ref("Number"), "Released")}, access="account",
                          change=True),
        },
        "/api/accounts/{account}/requests": {
            "parameters": [ACCOUNT],
            "post": _op("write to support (e.g. none of the numbers offered suits): a request "
                        "support calls back about", {"201": _ok(_ref("Request"), "Filed")},
                        access="account", body="SupportRequest", change=True),
        },
        "/api/regions": {
            "get": _op(
                "regions with their count of available numbers, for one choice of the Add "
                "menu", {"200": _ok(_list_of("regions", "Region"))}, access="user",
                params=[{**_query("choice", CHOICE, "the Add menu's choice"),
                         "required": True}],
            ),
        },
        "/api/numbers": {
            "get": _op(
                "the numbers view: an account's (its reserved numbers and the service pool) "
                "or every number (staff)", {"200": _ok(_ref("NumbersView"))}, access="account",
                params=[
                    _query("account", ID, "the account whose page this is (a customer's own)"),
                    _query("status", {"enum": ["active", "disabled"]}, "the tab"),
                    _query("search", _text(rules.MAX_SEARCH), "any part of the digits"),
                ],
            ),
            "post": _op("add a number to the stock or the service pool",
                        {"201": _ok(_ref("Number"), "Added")}, access="staff",
                        body="NewNumber", change=True),
        },
        "/api/numbers/{did}": {
            "parameters": [DID],
            "get": _op("one number: settings, campaigns, history (a customer: of their own "
                       "numbers and the service pool, their own campaigns and history)",
                       {"200": _ok(_ref("NumberDetails"))}, access="account"),
            "patch": _op("the Change window: inbound campaign and callback rule",
                         {"200": _ok(_ref("Number"))}, access="account", body="NumberChange",
                         params=[AS_ACCOUNT], change=True),
        },
        "/api/numbers/{did}/disable": {
            "parameters": [DID],
            "post": _op("disable: routes and dials nothing, bindings kept",
                        {"200": _ok(_ref("Number"))}, access="account", params=[AS_ACCOUNT],
                        change=True),
        },
        "/api/numbers/{did}/enable": {
            "parameters": [DID],
            "post": _op("enable: bindings restored", {"200": _ok(_ref("Number"))},
                        access="account", params=[AS_ACCOUNT], change=True),
        },
        "/api/campaigns": {
            "get": _op("campaigns", {"200": _ok(_list_of("campaigns", "Campaign"))},
                       access="account",
                       params=[_query("account", ID, "of this account (a customer's own)")]),
            "post": _op("a new campaign (the caller ID is checked)",
                        {"201": _ok(_ref("Campaign"), "Created")}, access="account",
                        body="NewCampaign", change=True),
        },
        "/api/campaigns/{campaign}": {
            "parameters": [CAMPAIGN],
            "get": _op("one campaign", {"200": _ok(_ref("Campaign"))}, access="account"),
            "patch": _op("change a campaign (the caller ID is checked)",
                         {"200": _ok(_ref("Campaign"))}, access="account",
                         body="CampaignChange", change=True),
        },
        "/api/campaigns/{campaign}/callees": {
            "parameters": [CAMPAIGN],
            "post": _op("queue callees for the dialers (an outbound campaign that may dial)",
                        {"200": _ok(_ref("CalleesQueued"))},
                        access="account", body="CalleeList", change=True),
        },
        "/api/campaigns/{campaign}/progress": {
            "parameters": [CAMPAIGN],
            "get": _op("a campaign's progress, as every dialer left it",
                       {"200": _ok(_ref("CampaignProgress"))},
                       access="account"),
        },
        "/api/requests": {
            "get": _op("requests for numbers where none were available, and to support",
                       {"200": _ok(_list_of("requests", "Request"))}, access="account",
                       params=[_query("status", {"enum": ["open", "closed", "all"]},
                                      "default: open"),
                               _query("account", ID, "of this account (a customer's own)")]),
        },
        "/api/requests/{request}/close": {
            "parameters": [REQUEST],
            "post": _op("close an open request (sales called back), with an optional note",
                        {"200": _ok(_ref("Request"))}, access="staff", body="RequestClosing",
                        body_required=False, change=True),
        },
        "/api/audit": {
            "get": _op("the audit log, newest first",
                       {"200": _ok(_list_of("entries", "AuditEntry"))}, access="staff",
                       params=[_query("subject", _text(rules.MAX_SUBJECT), "a number or an id"),
                               _query("limit", {"type": "integer", "minimum": 1,
                                                "maximum": 1000}, "default: 100")]),
        },
        "/api/sync": {
            "post": _op("rebuild Redis's routing data from the store",
                        {"200": _ok(_ref("SyncReport")),
                         # another process took over publishing meanwhile: sync again
                         "409": {"$ref": "#/components/responses/Conflict"}},
                        access="staff"),
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "the operator's admin token: staff, every account"},
            "session": {"type": "apiKey", "in": "cookie", "name": "zvonok_session",
                        "description": "a signed-in user's (POST /api/session); changes also "
                                       "send X-CSRF-Token"},
        },
        "schemas": SCHEMAS,
        "responses": {
            "BadInput": _error("malformed input: bad JSON, wrong types, a malformed number"),
            "Unauthorized": _error("not signed in, wrong token, or wrong login or password"),
            "Forbidden": _error("not this account's, for staff only, the account is not "
                                "verified, or a change without the session's CSRF token"),
            "TooManyAttempts": {
                **_error("too many failed sign-ins: try again after Retry-After seconds"),
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            },
            "NotFound": _error("no such account, number, campaign or request"),
            "Conflict": _error("refused by a rule (taken, in use, disabled, ...)"),
            "TooLarge": _error("the body is larger than the configured cap"),
            "Unavailable": {
                **_error(
                    "nothing was changed: the store is busy (`store_busy`: other changes held "
                    "its lock past the timeout) or not reachable (`store_unavailable`), both "
                    "with Retry-After seconds to wait; or Redis is not reachable (`no_redis`)"
                ),
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            },
        },
    },
}


def body_fields(schema: str) -> tuple[set[str], set[str], set[str]]:
    """(allowed, required, nullable) fields of a request body schema."""
    declared = SCHEMAS[schema]
    nullable = {name for name, field in declared["properties"].items() if _takes_null(field)}
    return set(declared["properties"]), set(declared.get("required", ())), nullable


def _takes_null(field: dict[str, Any]) -> bool:
    return (None in field.get("enum", ()) or field.get("type") == "null"
            or any(_takes_null(f) for f in field.get("oneOf", []) + field.get("anyOf", [])))
