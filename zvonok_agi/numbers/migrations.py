"""The SQLite schema, as numbered migrations: `PRAGMA user_version` says how many are applied.

Append, never edit: a database made by an older release is brought up to date by running the
steps it has not seen, each in its own transaction.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: accounts, numbers, campaigns, requests, the audit log, the publishing outbox
    (
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            verified INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
            created_at REAL NOT NULL
        )""",
        # Cross references between numbers and campaigns are checked at commit, so that an
        # import can write both in any order.
        """CREATE TABLE numbers (
            did TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('mobile', 'landline')),
            region TEXT NOT NULL,
            pool TEXT NOT NULL CHECK (pool IN ('service', 'reservable')),
            status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
            owner TEXT REFERENCES accounts (id),
            callback_rule TEXT NOT NULL DEFAULT 'as_campaign'
                CHECK (callback_rule IN ('force_yes', 'as_campaign', 'force_no')),
            inbound_campaign TEXT REFERENCES campaigns (id) DEFERRABLE INITIALLY DEFERRED,
            reserved_at REAL,
            added_at REAL NOT NULL,
            CHECK (pool = 'reservable' OR owner IS NULL),
            CHECK (owner IS NOT NULL OR inbound_campaign IS NULL)
        )""",
        "CREATE INDEX numbers_by_owner ON numbers (owner)",
        "CREATE INDEX numbers_stock ON numbers (pool, owner, status, kind, region)",
        """CREATE TABLE campaigns (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL REFERENCES accounts (id),
            kind TEXT NOT NULL CHECK (kind IN ('outbound', 'inbound')),
            accept_inbound INTEGER NOT NULL DEFAULT 0 CHECK (accept_inbound IN (0, 1)),
            state TEXT NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'paused', 'finished')),
            caller_id TEXT REFERENCES numbers (did) DEFERRABLE INITIALLY DEFERRED,
            created_at REAL NOT NULL,
            CHECK (kind = 'outbound' OR caller_id IS NULL)
        )""",
        "CREATE INDEX campaigns_by_account ON campaigns (account)",
        "CREATE INDEX campaigns_by_caller_id ON campaigns (caller_id)",
        """CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            account TEXT NOT NULL REFERENCES accounts (id),
            kind TEXT NOT NULL CHECK (kind IN ('mobile', 'landline')),
            region TEXT NOT NULL,
            at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed'))
        )""",
        "CREATE INDEX requests_open ON requests (status, account, kind, region)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT NOT NULL,
            account TEXT,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX audit_by_subject ON audit (subject, id)",
        # Records changed in SQLite and not yet published to Redis (Redis was down).
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('account', 'number', 'campaign')),
            key TEXT NOT NULL
        )""",
    ),
    # 2: sales close requests: when, who, and an optional note
    (
        "ALTER TABLE requests ADD COLUMN closed_at REAL",
        "ALTER TABLE requests ADD COLUMN closed_by TEXT",
        "ALTER TABLE requests ADD COLUMN note TEXT",
    ),
    # 3: the outbox's publisher. A record's revision goes up with every change of it, so that
    # publishers racing never put an older state over a newer one in Redis; outbox rows are
    # removed by seq once published, so a seq is never used twice (AUTOINCREMENT).
    (
        "ALTER TABLE accounts ADD COLUMN rev INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE numbers ADD COLUMN rev INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE campaigns ADD COLUMN rev INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE outbox_next (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('account', 'number', 'campaign')),
            key TEXT NOT NULL
        )""",
        "INSERT INTO outbox_next (seq, kind, key) SELECT seq, kind, key FROM outbox",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_next RENAME TO outbox",
    ),
    # 4: people who sign in (customers of one account, or staff), their sessions, and the
    # failed sign-ins of the last minutes (the limit holds for every admin process on this file)
    (
        """CREATE TABLE users (
            login TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('customer', 'staff')),
            account TEXT REFERENCES accounts (id),
            name TEXT NOT NULL DEFAULT '',
            password TEXT NOT NULL,
            created_at REAL NOT NULL,
            password_at REAL NOT NULL,
            CHECK ((role = 'staff') = (account IS NULL))
        )""",
        "CREATE INDEX users_by_account ON users (account)",
        # A session is kept by the SHA-256 of its cookie: a copy of the file signs nobody in.
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            login TEXT NOT NULL REFERENCES users (login) ON DELETE CASCADE,
            csrf TEXT NOT NULL,
            created_at REAL NOT NULL,
            seen_at REAL NOT NULL
        )""",
        "CREATE INDEX sessions_by_login ON sessions (login)",
        """CREATE TABLE sign_in_failures (
            key TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX sign_in_failures_by_key ON sign_in_failures (key, at)",
    ),
    # 5: campaigns get a name people read; requests are also the customers' own messages to
    # support (no kind or region needed), with what they wrote and a phone to call back
    (
        "ALTER TABLE campaigns ADD COLUMN name TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE requests_next (
            id INTEGER PRIMARY KEY,
            account TEXT NOT NULL REFERENCES accounts (id),
            topic TEXT NOT NULL DEFAULT 'numbers' CHECK (topic IN ('numbers', 'support')),
            kind TEXT CHECK (kind IN ('mobile', 'landline')),
            region TEXT,
            comment TEXT,
            contact TEXT,
            at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
            closed_at REAL,
            closed_by TEXT,
            note TEXT,
            CHECK (topic = 'support' OR (kind IS NOT NULL AND region IS NOT NULL))
        )""",
        "INSERT INTO requests_next (id, account, kind, region, at, status, closed_at, "
        "closed_by, note) SELECT id, account, kind, region, at, status, closed_at, closed_by, "
        "note FROM requests",
        "DROP TABLE requests",
        "ALTER TABLE requests_next RENAME TO requests",
        "CREATE INDEX requests_open ON requests (status, account, kind, region)",
    ),
    # 6: a campaign's scenario (what its calls do), in the form Redis keeps it: a JSON array
    # (zvonok_agi.routing.scenario); NULL: none, its own dialplan context routes its calls
    ("ALTER TABLE campaigns ADD COLUMN scenario TEXT",),
]
