"""Users, passwords and sessions on each store (a SQLite file, a PostgreSQL schema): sign-in, the
limit on failures (shared by two stores on one database, as two admin processes are), expiry,
and what ends a session."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, profiles

from numbers_helpers import refused, table
from zvonok_agi.access.users import PER_ADDRESS, WINDOW, Role, Users
from zvonok_agi.numbers.store import Store
from zvonok_agi.routing.model import Account

CHEAP = PasswordHasher.from_parameters(profiles.CHEAPEST)
PASSWORD = "correct horse"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(store_url):
    async with await Store.open(store_url) as store:
        async with store.transaction() as q:
            await q.put_account(Account("acme", True, "Acme"), 0.0)
        yield store


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def users(store, clock):
    users = Users(store, hasher=CHEAP, clock=clock, idle=3600, lifetime=86400, attempts=3)
    await users.add("test", "Anna@Acme.example", PASSWORD, account="acme", name="Anna")
    await users.add("test", "sam", PASSWORD)
    return users


async def test_users_of_an_account_and_staff(users):
    anna, sam = await users.user("anna@acme.example"), await users.user("SAM")
    assert (anna.role, anna.account, anna.actor) == (
        Role.CUSTOMER,
        "acme",
        "customer:anna@acme.example",
    )
    assert (sam.role, sam.account, sam.staff) == (Role.STAFF, None, True)
    assert [u.login for u in await users.users("acme")] == ["anna@acme.example"]
    await refused(
        "already_exists", users.add("test", "ANNA@acme.example", PASSWORD, account="acme")
    )
    await refused("unknown_account", users.add("test", "bob", PASSWORD, account="nobody"))
    await refused("bad_input", users.add("test", "bob", "short", account="acme"))
    await refused("bad_input", users.add("test", "bob", "tab\there!", account="acme"))
    await refused("bad_input", users.add("test", "боб", PASSWORD, account="acme"))
    await refused("bad_input", users.add("test", "", PASSWORD))


async def test_passwords_are_kept_as_argon2id_hashes_only(users, store_url):
    [(stored,)] = await table(store_url, "SELECT password FROM users WHERE login = 'sam'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_sign_in_and_the_session_it_begins(users, clock):
    session = await users.sign_in("  ANNA@acme.example ", PASSWORD, "192.0.2.1")
    assert session.token and session.csrf and session.user.account == "acme"
    found = await users.session(session.token)
    assert found is not None and (found.user, found.csrf) == (session.user, session.csrf)
    assert found.token == ""  # the cookie's value is not kept
    assert await users.session("forged") is None
    assert await users.session("") is None
    for login, password in (("anna@acme.example", "wrong password"), ("nobody", PASSWORD)):
        error = await refused("bad_credentials", users.sign_in(login, password, "192.0.2.1"))
        assert error.message == "wrong login or password"  # which one is not said


async def test_sessions_end_when_idle_or_old(users, clock):
    session = await users.sign_in("sam", PASSWORD, "192.0.2.1")
    clock.now += 3000
    assert await users.session(session.token) is not None  # used: idle again from now
    clock.now += 3000
    assert await users.session(session.token) is not None
    clock.now += 3601
    assert await users.session(session.token) is None  # idle too long
    session, began = await users.sign_in("sam", PASSWORD, "192.0.2.1"), clock.now
    while await users.session(session.token) is not None:  # used, never idle for long
        clock.now += 3500
    assert 86400 < clock.now - began <= 86400 + 3500  # ended by its lifetime


async def test_sign_out_password_change_and_removal_end_sessions(users, clock):
    one = await users.sign_in("sam", PASSWORD, "192.0.2.1")
    two = await users.sign_in("sam", PASSWORD, "192.0.2.2")
    await users.sign_out(one.token)
    assert await users.session(one.token) is None
    assert await users.session(two.token) is not None
    await refused(
        "wrong_password", users.change_password(two, "not it", "new password 1", "192.0.2.2")
    )
    three = await users.change_password(two, PASSWORD, "new password 1", "192.0.2.2")
    assert await users.session(two.token) is None
    assert await users.session(three.token) is not None
    await refused("bad_credentials", users.sign_in("sam", PASSWORD, "192.0.2.1"))
    four = await users.sign_in("sam", "new password 1", "192.0.2.1")
    await users.set_password("cli:root", "sam", "another one 2")
    assert await users.session(three.token) is None and await users.session(four.token) is None
    five = await users.sign_in("anna@acme.example", PASSWORD, "192.0.2.1")
    await users.remove("cli:root", "anna@acme.example")
    assert await users.session(five.token) is None
    await refused("unknown_user", users.user("anna@acme.example"))


async def test_failed_sign_ins_wait_and_the_limit_is_shared_by_two_stores(users, clock, store_url):
    """Two admin processes on one database: the failures one counts, the other sees."""
    async with await Store.open(store_url) as other_store:
        other = Users(other_store, hasher=CHEAP, clock=clock, attempts=3)
        await refused("bad_credentials", users.sign_in("sam", "guess 1", "192.0.2.1"))
        await refused("bad_credentials", other.sign_in("sam", "guess 2", "192.0.2.1"))
        clock.now += 60
        await refused("bad_credentials", users.sign_in("sam", "guess 3", "192.0.2.1"))
        for who in (users, other):
            error = await refused("too_many_attempts", who.sign_in("sam", PASSWORD, "192.0.2.1"))
            assert error.retry_after == WINDOW - 60  # until the first failure is forgotten
        # another address may still sign in as sam; the same address as anyone else
        assert await users.sign_in("sam", PASSWORD, "192.0.2.9")
        assert await other.sign_in("anna@acme.example", PASSWORD, "192.0.2.1")
        clock.now += WINDOW - 60
        assert await other.sign_in("sam", PASSWORD, "192.0.2.1")


async def test_one_address_guessing_many_logins_waits_too(users, clock):
    for i in range(3 * PER_ADDRESS):
        await refused("bad_credentials", users.sign_in(f"user{i}", "guess", "192.0.2.66"))
    await refused("too_many_attempts", users.sign_in("sam", PASSWORD, "192.0.2.66"))
    assert await users.sign_in("sam", PASSWORD, "192.0.2.67")


async def test_a_success_forgets_that_logins_failures_from_that_address(users, clock):
    for _ in range(2):
        await refused("bad_credentials", users.sign_in("sam", "typo", "192.0.2.1"))
    await users.sign_in("sam", PASSWORD, "192.0.2.1")
    for _ in range(2):
        await refused("bad_credentials", users.sign_in("sam", "typo", "192.0.2.1"))
    assert await users.sign_in("sam", PASSWORD, "192.0.2.1")


async def test_an_old_hash_is_made_anew_at_sign_in(users, store, clock, store_url):
    stronger = PasswordHasher(time_cost=2, memory_cost=1024, parallelism=1)
    upgraded = Users(store, hasher=stronger, clock=clock)
    await upgraded.sign_in("sam", PASSWORD, "192.0.2.1")
    [(stored,)] = await table(store_url, "SELECT password FROM users WHERE login = 'sam'")
    assert "m=1024,t=2,p=1" in stored
    assert await upgraded.sign_in("sam", PASSWORD, "192.0.2.1")


async def test_loaded_hashes_and_the_audit_log(users, store):
    hashed = CHEAP.hash("loaded password")
    await users.put_hashed("cli:root", "nina", hashed, account="acme", name="Nina")
    session = await users.sign_in("nina", "loaded password", "192.0.2.1")
    await users.put_hashed("cli:root", "nina", hashed, account="acme", name="Nina K.")
    assert await users.session(session.token) is not None  # same hash: sessions stay
    await users.put_hashed("cli:root", "nina", CHEAP.hash("other password"), account="acme")
    assert await users.session(session.token) is None
    await refused("bad_input", users.put_hashed("cli:root", "nina", "plain text"))
    async with store.reading() as q:
        log = await q.audit_log(limit=20)
    assert [(e["actor"], e["action"], e["subject"], e["outcome"]) for e in log[:4]] == [
        ("cli:root", "put_user", "user:nina", "ok"),
        ("cli:root", "put_user", "user:nina", "ok"),
        ("customer:nina", "sign_in", "user:nina", "ok"),
        ("cli:root", "put_user", "user:nina", "ok"),
    ]
