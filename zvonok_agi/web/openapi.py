"""The admin API's OpenAPI document: served at /api/openapi.json, checked by the tests (the
document itself, every route against it, every test response against its schema).

Request bodies are read by the fields declared here: a field that is not declared is refused.
"""

from __future__ import annotations

from typing import Any

from .. import __version__, phone, text
from ..numbers import rules


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


ERRORS = {
    "400": {"$ref": "#/components/responses/BadInput"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/NotFound"},
}
CHANGE_ERRORS = {
    **ERRORS,
    "403": {"$ref": "#/components/responses/Forbidden"},
    "409": {"$ref": "#/components/responses/Conflict"},
    "413": {"$ref": "#/components/responses/TooLarge"},
}


def _op(summary: str, responses: dict[str, Any], *, body: str | None = None,
        body_required: bool = True, params: list[dict[str, Any]] | None = None,
        change: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {**responses, **(CHANGE_ERRORS if change else ERRORS)},
    }
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
REGION = {**_text(rules.MAX_REGION, required=True),
          "description": "as people type it, in Russian or English: Moscow, Москва, Moskva"}

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
        "required": ["did", "kind", "region", "pool", "status", "owner", "reserved",
                     "callback_rule", "inbound_campaign", "reserved_at"],
        "properties": {
            "did": {"type": "string", "pattern": "^[0-9]{5,15}$"},
            "kind": {"enum": ["mobile", "landline"]},
            "region": {"type": "string"},
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
            "required": ["dialing"],
            "properties": {"dialing": {
                "type": "array", "items": {"type": "string"},
                "description": "outbound campaigns showing this number as caller ID",
            }},
        }],
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
        "required": ["region", "available"],
        "properties": {"region": {"type": "string"}, "available": {"type": "integer"}},
    },
    "OfferRequest": {
        "type": "object",
        "required": ["choice", "region"],
        "additionalProperties": False,
        "properties": {
            "choice": {"enum": ["mobile", "landline_popular", "landline"]},
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
        "required": ["id", "account", "kind", "accept_inbound", "state", "caller_id"],
        "properties": {
            "id": ID,
            "account": ID,
            "kind": {"enum": ["outbound", "inbound"]},
            "accept_inbound": {"type": "boolean"},
            "state": {"enum": ["running", "paused", "finished"]},
            "caller_id": _nullable({"type": "string"}),
        },
    },
    "NewCampaign": {
        "type": "object",
        "required": ["id", "account", "kind"],
        "additionalProperties": False,
        "properties": {
            "id": ID,
            "account": ID,
            "kind": {"enum": ["outbound", "inbound"]},
            "accept_inbound": {"type": "boolean"},
            "state": {"enum": ["running", "paused", "finished"]},
            "caller_id": {**CALLER_ID, "description": "a reserved number of the account; "
                          "null or 'pool': the service pool"},
        },
        "if": {"required": ["kind"], "properties": {"kind": {"const": "inbound"}}},
        "then": {"properties": {"accept_inbound": {"const": False},
                                "caller_id": {"enum": [None, "pool"]}},
                 "description": "an inbound campaign has no accept_inbound and no caller ID"},
    },
    "CampaignChange": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "accept_inbound": {"type": "boolean"},
            "state": {"enum": ["running", "paused", "finished"]},
            "caller_id": CALLER_ID,
        },
        "description": "what an inbound campaign has (accept_inbound false, the pool) may be "
                       "sent; anything else for one is refused (not_outbound)",
    },
    "Request": {
        "type": "object",
        "required": ["id", "account", "kind", "region", "at", "status"],
        "properties": {
            "id": {"type": "integer"},
            "account": {"type": "string"},
            "kind": {"enum": ["mobile", "landline"]},
            "region": {"type": "string"},
            "at": {"type": "number"},
            "status": {"enum": ["open", "closed"]},
            "closed_at": {"type": "number", "description": "only when closed"},
            "closed_by": {"type": "string", "description": "only when closed: who closed it"},
            "note": {**_nullable({"type": "string"}), "description": "only when closed"},
        },
    },
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
    "security": [{"bearer": []}],
    "paths": {
        "/api/openapi.json": {"get": {
            "summary": "this document (no token needed)",
            "security": [],
            "responses": {"200": _ok({"type": "object"})},
        }},
        "/api/health": {"get": _op("liveness and the publishing backlog",
                                   {"200": _ok(_ref("Health"))})},
        "/api/accounts": {
            "get": _op("every account", {"200": _ok(_list_of("accounts", "Account"))}),
            "post": _op("a new account", {"201": _ok(_ref("Account"), "Created")},
                        body="NewAccount", change=True),
        },
        "/api/accounts/{account}": {
            "parameters": [ACCOUNT],
            "get": _op("one account", {"200": _ok(_ref("Account"))}),
            "patch": _op("change an account (name, verified)", {"200": _ok(_ref("Account"))},
                         body="AccountChange", change=True),
        },
        "/api/accounts/{account}/offers": {
            "parameters": [ACCOUNT],
            "post": _op("the available numbers of a region; none: a request for sales is "
                        "filed", {"200": _ok(_ref("Offer"))}, body="OfferRequest", change=True),
        },
        "/api/accounts/{account}/reservations": {
            "parameters": [ACCOUNT],
            "post": _op("reserve a number (verified accounts; of racing accounts one wins)",
                        {"201": _ok(_ref("Number"), "Reserved")}, body="Reservation",
                        change=True),
        },
        "/api/accounts/{account}/reservations/{did}": {
            "parameters": [ACCOUNT, DID],
            "delete": _op("release the account's reserved number: back to the stock without "
                          "binding, rule or owner (the number stays)",
                          {"200": _ok(_ref("Number"), "Released")}, change=True),
        },
        "/api/regions": {
            "get": _op(
                "regions with their count of available numbers, for one choice of the Add "
                "menu", {"200": _ok(_list_of("regions", "Region"))},
                params=[{**_query("choice", {"enum": ["mobile", "landline_popular",
                                                      "landline"]}, "the Add menu's choice"),
                         "required": True}],
            ),
        },
        "/api/numbers": {
            "get": _op(
                "the numbers view: an account's (its reserved numbers and the service pool) "
                "or every number", {"200": _ok(_ref("NumbersView"))},
                params=[
                    _query("account", ID, "the account whose page this is"),
                    _query("status", {"enum": ["active", "disabled"]}, "the tab"),
                    _query("search", _text(rules.MAX_SEARCH), "any part of the digits"),
                ],
            ),
            "post": _op("add a number to the stock or the service pool (operators)",
                        {"201": _ok(_ref("Number"), "Added")}, body="NewNumber", change=True),
        },
        "/api/numbers/{did}": {
            "parameters": [DID],
            "get": _op("one number: settings, campaigns, history",
                       {"200": _ok(_ref("NumberDetails"))}),
            "patch": _op("the Change window: inbound campaign and callback rule",
                         {"200": _ok(_ref("Number"))}, body="NumberChange",
                         params=[AS_ACCOUNT], change=True),
        },
        "/api/numbers/{did}/disable": {
            "parameters": [DID],
            "post": _op("disable: routes and dials nothing, bindings kept",
                        {"200": _ok(_ref("Number"))}, params=[AS_ACCOUNT], change=True),
        },
        "/api/numbers/{did}/enable": {
            "parameters": [DID],
            "post": _op("enable: bindings restored", {"200": _ok(_ref("Number"))},
                        params=[AS_ACCOUNT], change=True),
        },
        "/api/campaigns": {
            "get": _op("campaigns", {"200": _ok(_list_of("campaigns", "Campaign"))},
                       params=[_query("account", ID, "of this account")]),
            "post": _op("a new campaign (the caller ID is checked)",
                        {"201": _ok(_ref("Campaign"), "Created")}, body="NewCampaign",
                        change=True),
        },
        "/api/campaigns/{campaign}": {
            "parameters": [CAMPAIGN],
            "get": _op("one campaign", {"200": _ok(_ref("Campaign"))}),
            "patch": _op("change a campaign (the caller ID is checked)",
                         {"200": _ok(_ref("Campaign"))}, body="CampaignChange", change=True),
        },
        "/api/campaigns/{campaign}/callees": {
            "parameters": [CAMPAIGN],
            "post": _op("queue callees for the dialers (an outbound campaign that may dial)",
                        {"200": _ok(_ref("CalleesQueued")),
                         "503": {"$ref": "#/components/responses/Unavailable"}},
                        body="CalleeList", change=True),
        },
        "/api/campaigns/{campaign}/progress": {
            "parameters": [CAMPAIGN],
            "get": _op("a campaign's progress, as every dialer left it",
                       {"200": _ok(_ref("CampaignProgress")),
                        "503": {"$ref": "#/components/responses/Unavailable"}}),
        },
        "/api/requests": {
            "get": _op("requests for numbers where none were available",
                       {"200": _ok(_list_of("requests", "Request"))},
                       params=[_query("status", {"enum": ["open", "closed", "all"]},
                                      "default: open")]),
        },
        "/api/requests/{request}/close": {
            "parameters": [REQUEST],
            "post": _op("close an open request (sales called back), with an optional note",
                        {"200": _ok(_ref("Request"))}, body="RequestClosing",
                        body_required=False, change=True),
        },
        "/api/audit": {
            "get": _op("the audit log, newest first",
                       {"200": _ok(_list_of("entries", "AuditEntry"))},
                       params=[_query("subject", _text(rules.MAX_SUBJECT), "a number or an id"),
                               _query("limit", {"type": "integer", "minimum": 1,
                                                "maximum": 1000}, "default: 100")]),
        },
        "/api/sync": {
            "post": _op("rebuild Redis's routing data from the store",
                        {"200": _ok(_ref("SyncReport")),
                         "503": {"$ref": "#/components/responses/Unavailable"}}),
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": SCHEMAS,
        "responses": {
            "BadInput": _error("malformed input: bad JSON, wrong types, a malformed number"),
            "Unauthorized": _error("no or wrong bearer token"),
            "Forbidden": _error("not this account's (or the account is not verified)"),
            "NotFound": _error("no such account, number, campaign or request"),
            "Conflict": _error("refused by a rule (taken, in use, disabled, ...)"),
            "TooLarge": _error("the body is larger than the configured cap"),
            "Unavailable": _error("Redis is not reachable"),
        },
    },
}


def body_fields(schema: str) -> tuple[set[str], set[str]]:
    """(allowed, required) fields of a request body schema."""
    declared = SCHEMAS[schema]
    return set(declared["properties"]), set(declared.get("required", ()))
