"""The admin API served on a real socket over a real store and Redis, with a user of each
account and one of the staff, and a client that checks every answer against the OpenAPI
document (and that none is a 500)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from argon2 import PasswordHasher, profiles
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from zvonok_agi.access.users import Users
from zvonok_agi.config import Settings
from zvonok_agi.numbers.service import NumbersService
from zvonok_agi.web.openapi import DOCUMENT
from zvonok_agi.web.server import AdminServer


def _numbers_helpers():
    """The control-plane helpers beside the numbers tests (one module, whoever loads it)."""
    if "numbers_helpers" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "numbers" / "numbers_helpers.py"
        spec = importlib.util.spec_from_file_location("numbers_helpers", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["numbers_helpers"] = module
        spec.loader.exec_module(module)
    return sys.modules["numbers_helpers"]


helpers = _numbers_helpers()
TOKEN = "test-token-0123456789"
PASSWORD = "correct horse"
# login: account (None: staff)
USERS = {"anna": helpers.ACME, "oleg": helpers.OLDCO, "nina": helpers.NEWBIE, "sam": None}
CHEAP = PasswordHasher.from_parameters(profiles.CHEAPEST)  # tests hash fast
DEFAULT: Any = object()

_REGISTRY = Registry().with_resource("urn:api", Resource(DOCUMENT, DRAFT202012))
_TEMPLATES = [
    (re.compile("^" + re.sub(r"\{[a-z_]+\}", "[^/]+", path) + "$"), path)
    for path in DOCUMENT["paths"]
]


def documented_schema(method: str, path: str, status: int) -> dict[str, Any] | None:
    """The schema the document gives for this answer (None: the status is not documented)."""
    template = next((t for pattern, t in _TEMPLATES if pattern.match(path)), None)
    operation = DOCUMENT["paths"].get(template or "", {}).get(method.lower())
    if operation is None:
        return None
    response = operation["responses"].get(str(status))
    if response is None:
        return None
    if "$ref" in response:
        response = DOCUMENT["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


def check_against_document(method: str, path: str, status: int, body: Any) -> None:
    assert status != 500, body
    schema = documented_schema(method, path, status)
    if schema is None:
        assert status >= 400, f"{method} {path} -> {status}: not in the OpenAPI document"
        schema = {"$ref": "#/components/schemas/Error"}
    # References point into the document, which the registry holds as urn:api.
    schema = json.loads(json.dumps(schema).replace('"#/components/', '"urn:api#/components/'))
    Draft202012Validator(schema, registry=_REGISTRY).validate(body)


@dataclass
class Answer:
    status: int
    body: Any
    headers: Any

    @property
    def code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


class Client:
    """Calls as the operator's token, or (`signed_in`) as a user with a session cookie, sending
    the session's CSRF token with every change as the page does."""

    def __init__(self, session: aiohttp.ClientSession, base: str,
                 token: str | None = TOKEN) -> None:
        self.session = session
        self.base = base
        self.token = token
        self.csrf: str | None = None
        self.others: list[aiohttp.ClientSession] = []  # of the clients it signed in

    async def signed_in(self, login: str, password: str = PASSWORD) -> Client:
        """A client of its own (its own cookies) signed in as `login`."""
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.others.append(session)
        client = Client(session, self.base, token=None)
        client.others = self.others
        answer = await client.post("/api/session", {"login": login, "password": password})
        assert answer.status == 200, answer.body
        client.csrf = answer.body["csrf"]
        return client

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   token: str | None = DEFAULT, headers: dict[str, str] | None = None,
                   params: Any = None) -> Answer:
        headers = dict(headers or {})
        token = self.token if token is DEFAULT else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if self.csrf and method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self.csrf)
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=data, headers=headers,
                                        params=params) as response:
            text = await response.text()
            assert response.content_type == "application/json", (response.status, text)
            answer = Answer(response.status, json.loads(text), response.headers)
        check_against_document(method, path, answer.status, answer.body)
        return answer

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return await self.call("POST", path, body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return await self.call("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Answer:
        return await self.call("DELETE", path, **kw)


@contextlib.asynccontextmanager
async def admin_api(
    settings: Settings, store_url: str, *, max_body: int = 64 * 1024
) -> AsyncIterator[tuple[NumbersService, AdminServer, Client]]:
    async with helpers.control_plane(settings, store_url) as service:
        await helpers.small_world(service)
        users = Users(service.store, hasher=CHEAP)
        for login, account in USERS.items():
            await users.add("test", login, PASSWORD, account=account, name=login.title())
        async with AdminServer(service, token=TOKEN, users=users, max_body=max_body) as server, \
                aiohttp.ClientSession() as session:
            client = Client(session, server.url)
            try:
                yield service, server, client
            finally:
                for other in client.others:
                    await other.close()
