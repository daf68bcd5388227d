"""Users, their passwords and sessions, and the limit on failed sign-ins.

A user is a customer of one account or one of the service's staff (every account). Passwords
are kept as argon2id hashes (argon2-cffi, RFC 9106's low-memory profile), computed off the
event loop, a few at a time, so that signing in never stalls the calls sharing the loop.

A session is a random token in an HttpOnly cookie; the store keeps its SHA-256 (a copy of the
file signs nobody in) with the session's CSRF token. It ends on sign-out, on a password change
(every session of the user), `idle` seconds after its last use, or `lifetime` seconds after it
began.

Failed sign-ins are counted in the store, so the limit holds for every admin process on the
same file: within `WINDOW`, `attempts` for one login from one address, six times as many from
one address, twenty times as many for one login from anywhere (a spread-out guess is slowed
too, and locking somebody out takes that many). Past it: `too_many_attempts`, with the seconds
to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .. import text as free_text
from ..numbers import rules
from ..numbers.rules import Refused
from ..numbers.store import Queries, Store

log = structlog.get_logger(__name__)

LOGIN_MAX = 64
LOGIN = re.compile(rf"[a-z0-9][a-z0-9._@+-]{{0,{LOGIN_MAX - 1}}}")
MIN_PASSWORD, MAX_PASSWORD = 8, 256
WINDOW = 15 * 60.0  # failed sign-ins count this long
PER_ADDRESS, PER_LOGIN = 6, 20  # times `attempts`: from one address, for one login
HASHING_AT_ONCE = 2
TOUCH_EVERY = 60.0  # a session's last use is written at most this often


class Role(StrEnum):
    CUSTOMER = "customer"
    STAFF = "staff"


@dataclass(frozen=True, slots=True)
class User:
    login: str
    role: Role
    account: str | None  # the customer's account; None for staff
    name: str = ""

    @property
    def staff(self) -> bool:
        return self.role is Role.STAFF

    @property
    def actor(self) -> str:
        """Who, in the audit log: `customer:<login>` or `staff:<login>`."""
        return f"{self.role.value}:{self.login}"


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str  # sent back by the page with every change (X-CSRF-Token)
    token: str = ""  # the cookie's value: only when the session has just begun


class TooManyAttempts(Refused):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            "too_many_attempts",
            f"too many failed sign-ins: try again in {self.retry_after} seconds",
        )


def login_of(raw: object) -> str:
    """A login as typed (any case) -> as kept (lower case)."""
    login = raw.strip().lower() if isinstance(raw, str) else ""
    if not LOGIN.fullmatch(login):
        raise Refused(
            "bad_input",
            "a login is 1 to 64 Latin letters, digits and . _ @ + - "
            "(starting with a letter or digit)",
        )
    return login


def password_of(raw: object) -> str:
    """A new password: long enough, and no character a person cannot type or see."""
    if not isinstance(raw, str) or not MIN_PASSWORD <= len(raw) <= MAX_PASSWORD:
        raise Refused("bad_input", f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    if free_text.refused_character(raw):
        raise Refused("bad_input", "a password holds only characters people can type")
    return raw


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    def __init__(
        self,
        store: Store,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
        idle: float = 12 * 3600.0,
        lifetime: float = 7 * 86400.0,
        attempts: int = 5,
    ) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self.clock = clock
        self.idle = idle
        self.lifetime = lifetime
        self.attempts = attempts
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)
        self._decoy: str | None = None  # verified for unknown logins: they take as long

    @classmethod
    def configured(cls, settings: Any, store: Store) -> Users:
        """On the control plane's store, with the sessions and limit of `[admin]`."""
        admin = settings.admin
        return cls(
            store,
            idle=admin.session_idle_hours * 3600.0,
            lifetime=admin.session_max_days * 86400.0,
            attempts=admin.sign_in_attempts,
        )

    # users (the CLI)

    async def users(self, account: str | None = None) -> list[User]:
        async with self.store.reading() as q:
            return await _UserQueries(q.db).users(account)

    async def user(self, login: object) -> User:
        login = login_of(login)
        async with self.store.reading() as q:
            return _known(await _UserQueries(q.db).user(login))

    async def add(
        self,
        actor: str,
        login: object,
        password: object,
        *,
        account: str | None = None,
        name: str = "",
    ) -> User:
        """A customer of `account`, or (no account) one of the staff."""
        user = _new_user(login, account, name)
        hashed = await self._hash(password_of(password))
        async with self._change(actor, "add_user", user, role=user.role.value) as q:
            if await q.user(user.login) is not None:
                raise Refused("already_exists", f"user {user.login} already exists")
            await self._check_account(q, user)
            await q.put_user(user, hashed, self.clock())
        return user

    async def put_hashed(
        self,
        actor: str,
        login: object,
        password_hash: str,
        *,
        account: str | None = None,
        name: str = "",
    ) -> User:
        """Adds or updates a user whose password comes already hashed (`users load`); a new
        hash ends the user's sessions."""
        user = _new_user(login, account, name)
        if not password_hash.startswith("$argon2"):
            raise Refused("bad_input", f"user {user.login}: password_hash is not an argon2 hash")
        async with self._change(actor, "put_user", user, role=user.role.value) as q:
            await self._check_account(q, user)
            if await q.password(user.login) != password_hash:
                await q.end_sessions(user.login)
            await q.put_user(user, password_hash, self.clock())
        return user

    async def set_password(self, actor: str, login: object, password: object) -> User:
        """A new password; every session of the user ends."""
        login = login_of(login)
        hashed = await self._hash(password_of(password))
        async with self.store.reading() as q:
            user = _known(await _UserQueries(q.db).user(login))
        async with self._change(actor, "set_password", user) as q:
            _known(await q.user(login))
            await q.set_password(login, hashed, self.clock())
            await q.end_sessions(login)
        return user

    async def remove(self, actor: str, login: object) -> User:
        login = login_of(login)
        async with self.store.reading() as q:
            user = _known(await _UserQueries(q.db).user(login))
        async with self._change(actor, "remove_user", user) as q:
            await q.delete_user(login)  # and its sessions (ON DELETE CASCADE)
        return user

    # signing in

    async def sign_in(self, login: object, password: object, address: str) -> Session:
        """A new session, or Refused: `bad_credentials` (which of the two is wrong is not
        said), `too_many_attempts` (TooManyAttempts, with the seconds to wait)."""
        if not isinstance(login, str) or not isinstance(password, str):
            raise Refused("bad_input", "a login and a password are text")
        login = login.strip().lower()[: LOGIN_MAX + 1]  # no longer login exists
        keys = self._failure_keys(login, address)
        now = self.clock()
        async with self.store.reading() as q:
            uq = _UserQueries(q.db)
            await self._check_failures(uq, keys, now)
            user = await uq.user(login) if LOGIN.fullmatch(login) else None
            hashed = await uq.password(login) if user else None
        if not await self._verify(hashed, password):
            async with self.store.transaction() as q:
                await _UserQueries(q.db).fail(keys, self.clock(), WINDOW)
            log.info("sign-in refused", login=login, address=address)
            raise Refused("bad_credentials", "wrong login or password")
        assert user is not None and hashed is not None
        rehashed = await self._hash(password) if self.hasher.check_needs_rehash(hashed) else None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self.store.transaction() as q:
            uq = _UserQueries(q.db)
            now = self.clock()
            await uq.forget_failures(keys[0])
            await uq.end_stale_sessions(now - self.idle, now - self.lifetime)
            if rehashed:
                await uq.set_password(login, rehashed, now, changed=False)
            await uq.add_session(_digest(token), login, csrf, now)
            await q.audit(
                now,
                user.actor,
                "sign_in",
                f"user:{login}",
                user.account,
                "ok",
                {"address": address},
            )
        return Session(user, csrf, token)

    async def session(self, token: str) -> Session | None:
        """The session a cookie names, while it lasts."""
        if not token or len(token) > 128:
            return None
        key, now = _digest(token), self.clock()
        async with self.store.reading() as q:
            found = await _UserQueries(q.db).session(key)
        if found is None:
            return None
        session, created_at, seen_at = found
        if seen_at < now - self.idle or created_at < now - self.lifetime:
            async with self.store.transaction() as q:
                await _UserQueries(q.db).end_session(key)
            return None
        if now - seen_at > TOUCH_EVERY:
            async with self.store.transaction() as q:
                await _UserQueries(q.db).touch_session(key, now)
        return session

    async def sign_out(self, token: str) -> None:
        async with self.store.transaction() as q:
            await _UserQueries(q.db).end_session(_digest(token))

    async def change_password(
        self, session: Session, current: object, new: object, address: str
    ) -> Session:
        """The signed-in user's own change: the current password must be right (failures count
        as failed sign-ins); every session ends and a new one begins."""
        login = session.user.login
        new = password_of(new)
        keys = self._failure_keys(login, address)
        async with self.store.reading() as q:
            uq = _UserQueries(q.db)
            await self._check_failures(uq, keys, self.clock())
            hashed = await uq.password(login)
        if not await self._verify(hashed, current if isinstance(current, str) else ""):
            async with self.store.transaction() as q:
                await _UserQueries(q.db).fail(keys, self.clock(), WINDOW)
            raise Refused("wrong_password", "the current password is wrong")
        hashed = await self._hash(new)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self._change(session.user.actor, "set_password", session.user) as q:
            now = self.clock()
            await q.set_password(login, hashed, now)
            await q.end_sessions(login)
            await q.add_session(_digest(token), login, csrf, now)
        return Session(session.user, csrf, token)

    # inside

    def _failure_keys(self, login: str, address: str) -> list[str]:
        return [f"pair:{login}|{address}", f"address:{address}", f"login:{login}"]

    async def _check_failures(self, q: _UserQueries, keys: list[str], now: float) -> None:
        limits = [self.attempts, self.attempts * PER_ADDRESS, self.attempts * PER_LOGIN]
        for key, limit in zip(keys, limits, strict=True):
            times = await q.failures(key, now - WINDOW)
            if len(times) >= limit:
                raise TooManyAttempts(times[-limit] + WINDOW - now)

    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, hashed: str | None, password: str) -> bool:
        if hashed is None:
            if self._decoy is None:
                self._decoy = await self._hash(secrets.token_urlsafe(16))
            hashed = self._decoy
            password = ""  # never the decoy's
        async with self._hashing:
            try:
                return await asyncio.to_thread(self.hasher.verify, hashed, password)
            except (VerificationError, InvalidHashError):
                return False

    async def _check_account(self, q: _UserQueries, user: User) -> None:
        if user.account is not None and await q.account(user.account) is None:
            raise Refused("unknown_account", f"no account {user.account}")

    @contextlib.asynccontextmanager
    async def _change(
        self, actor: str, action: str, user: User, **detail: Any
    ) -> AsyncIterator[_UserQueries]:
        """One transaction with its audit row; a refusal rolls the change back, not the row."""
        refused: Refused | None = None
        async with self.store.transaction() as q:
            await q.savepoint()
            try:
                yield _UserQueries(q.db)
            except Refused as exc:
                refused = exc
                await q.rollback_to_savepoint()
                detail["message"] = exc.message
            await q.audit(
                self.clock(),
                actor,
                action,
                f"user:{user.login}",
                user.account,
                refused.code if refused else "ok",
                detail,
            )
        if refused is not None:
            raise refused


def _new_user(login: object, account: object, name: object) -> User:
    """A customer of `account`, or (None) one of the staff, from what was typed."""
    return User(
        login_of(login),
        Role.STAFF if account is None else Role.CUSTOMER,
        None if account is None else rules.ident(account, "account"),
        rules.text(name, "name", rules.MAX_NAME),
    )


def _known(user: User | None) -> User:
    if user is None:
        raise Refused("unknown_user", "no such user")
    return user


class _UserQueries(Queries):
    async def user(self, login: str) -> User | None:
        rows = await self._all("SELECT * FROM users WHERE login = ?", [login])
        return _user(rows[0]) if rows else None

    async def users(self, account: str | None) -> list[User]:
        sql, args = "SELECT * FROM users", []
        if account is not None:
            sql, args = sql + " WHERE account = ?", [account]
        return [_user(r) for r in await self._all(sql + " ORDER BY login", args)]

    async def password(self, login: str) -> str | None:
        rows = await self._all("SELECT password FROM users WHERE login = ?", [login])
        return rows[0]["password"] if rows else None

    async def put_user(self, user: User, hashed: str, now: float) -> None:
        await self._run(
            "INSERT INTO users (login, role, account, name, password, created_at, password_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (login) DO UPDATE SET "
            "role = excluded.role, account = excluded.account, name = excluded.name, "
            "password_at = CASE WHEN users.password = excluded.password THEN users.password_at "
            "ELSE excluded.password_at END, password = excluded.password",
            [user.login, user.role.value, user.account, user.name, hashed, now, now],
        )

    async def set_password(self, login: str, hashed: str, now: float, changed: bool = True) -> None:
        sql = "UPDATE users SET password = ?" + (", password_at = ?" if changed else "")
        await self._run(sql + " WHERE login = ?", [hashed, *([now] if changed else []), login])

    async def delete_user(self, login: str) -> None:
        await self._run("DELETE FROM users WHERE login = ?", [login])

    async def add_session(self, key: str, login: str, csrf: str, now: float) -> None:
        await self._run(
            "INSERT INTO sessions (id, login, csrf, created_at, seen_at) VALUES (?, ?, ?, ?, ?)",
            [key, login, csrf, now, now],
        )

    async def session(self, key: str) -> tuple[Session, float, float] | None:
        rows = await self._all(
            # Named one by one: users has a created_at too, which a driver may give instead.
            "SELECT s.csrf, s.created_at AS began, s.seen_at, u.login, u.role, u.account, "
            "u.name FROM sessions s JOIN users u ON u.login = s.login WHERE s.id = ?",
            [key],
        )
        if not rows:
            return None
        row = rows[0]
        return Session(_user(row), row["csrf"]), row["began"], row["seen_at"]

    async def touch_session(self, key: str, now: float) -> None:
        await self._run("UPDATE sessions SET seen_at = ? WHERE id = ?", [now, key])

    async def end_session(self, key: str) -> None:
        await self._run("DELETE FROM sessions WHERE id = ?", [key])

    async def end_sessions(self, login: str) -> None:
        await self._run("DELETE FROM sessions WHERE login = ?", [login])

    async def end_stale_sessions(self, idle_since: float, begun_before: float) -> None:
        await self._run(
            "DELETE FROM sessions WHERE seen_at < ? OR created_at < ?", [idle_since, begun_before]
        )

    async def failures(self, key: str, since: float) -> list[float]:
        rows = await self._all(
            "SELECT at FROM sign_in_failures WHERE key = ? AND at > ? ORDER BY at", [key, since]
        )
        return [r["at"] for r in rows]

    async def fail(self, keys: Iterable[str], now: float, window: float) -> None:
        await self._run("DELETE FROM sign_in_failures WHERE at <= ?", [now - window])
        for key in keys:
            await self._run("INSERT INTO sign_in_failures (key, at) VALUES (?, ?)", [key, now])

    async def forget_failures(self, key: str) -> None:
        await self._run("DELETE FROM sign_in_failures WHERE key = ?", [key])


def _user(row: Any) -> User:
    return User(row["login"], Role(row["role"]), row["account"], row["name"])
