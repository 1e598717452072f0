"""Ordered schema migrations of the job store, the same SQL on SQLite and PostgreSQL.

Each migration runs once, in order, in its own transaction, and is recorded by name in
``tunery_migrations``. A new schema change is a new entry at the end; an applied entry never changes.
``{serial}`` is an auto-incrementing integer key; JSON is stored as text.

    from tunery.jobs.migrations import migrate; migrate(engine)
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, inspect, text

SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_jobs_files_models_keys",
        [
            """CREATE TABLE jobs (
                seq {serial},
                id VARCHAR(64) NOT NULL UNIQUE,
                tenant VARCHAR(128) NOT NULL,
                state VARCHAR(32) NOT NULL,
                base_model TEXT NOT NULL,
                display_name TEXT NOT NULL,
                tuning_mode VARCHAR(32) NOT NULL,
                labels TEXT NOT NULL,
                request TEXT NOT NULL,
                spec TEXT NOT NULL,
                stats TEXT,
                error TEXT,
                tuned_model_id VARCHAR(64),
                create_time VARCHAR(32) NOT NULL,
                start_time VARCHAR(32),
                end_time VARCHAR(32),
                update_time VARCHAR(32) NOT NULL,
                idempotency_key VARCHAR(256),
                request_hash VARCHAR(64),
                attempts INTEGER NOT NULL DEFAULT 0,
                worker_pid INTEGER,
                worker_owner VARCHAR(128),
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                UNIQUE (tenant, idempotency_key)
            )""",
            "CREATE INDEX jobs_tenant_seq ON jobs (tenant, seq)",
            "CREATE INDEX jobs_state_seq ON jobs (state, seq)",
            """CREATE TABLE job_events (
                seq {serial},
                job_id VARCHAR(64) NOT NULL,
                time VARCHAR(32) NOT NULL,
                type VARCHAR(16) NOT NULL,
                message TEXT,
                data TEXT
            )""",
            "CREATE INDEX job_events_job_seq ON job_events (job_id, seq)",
            """CREATE TABLE files (
                id VARCHAR(64) PRIMARY KEY,
                tenant VARCHAR(128) NOT NULL,
                display_name TEXT NOT NULL,
                path TEXT NOT NULL,
                size_bytes BIGINT NOT NULL,
                sha256 VARCHAR(64) NOT NULL,
                example_count INTEGER NOT NULL,
                model TEXT NOT NULL,
                stats TEXT NOT NULL,
                create_time VARCHAR(32) NOT NULL
            )""",
            "CREATE INDEX files_tenant ON files (tenant, create_time)",
            """CREATE TABLE tuned_models (
                id VARCHAR(64) PRIMARY KEY,
                tenant VARCHAR(128) NOT NULL,
                job_id VARCHAR(64) NOT NULL,
                display_name TEXT NOT NULL,
                base_model TEXT NOT NULL,
                tuning_mode VARCHAR(32) NOT NULL,
                path TEXT NOT NULL,
                create_time VARCHAR(32) NOT NULL
            )""",
            "CREATE INDEX tuned_models_tenant ON tuned_models (tenant, create_time)",
            """CREATE TABLE api_keys (
                id VARCHAR(32) PRIMARY KEY,
                tenant VARCHAR(128) NOT NULL,
                hash VARCHAR(64) NOT NULL,
                create_time VARCHAR(32) NOT NULL
            )""",
        ],
    ),
]


def migrate(engine: Engine) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now."""
    serial = SERIAL.get(engine.dialect.name)
    if serial is None:
        raise ValueError(f"unsupported database {engine.dialect.name!r}: use SQLite or PostgreSQL")
    with engine.connect() as conn:
        conn.info["immediate"] = True  # SQLite: take the write lock first (see store.connect_engine)
        with conn.begin():
            return _apply(conn, serial)


def _apply(conn: Connection, serial: str) -> list[str]:
    if conn.dialect.name == "postgresql":  # one migrator at a time across processes
        conn.execute(text("SELECT pg_advisory_xact_lock(7283460)"))
    if not inspect(conn).has_table("tunery_migrations"):
        conn.execute(text("CREATE TABLE tunery_migrations (name VARCHAR(128) PRIMARY KEY, applied_time VARCHAR(32))"))
    done = {row[0] for row in conn.execute(text("SELECT name FROM tunery_migrations"))}
    applied = []
    for name, statements in MIGRATIONS:
        if name in done:
            continue
        for statement in statements:
            conn.execute(text(statement.format(serial=serial)))
        conn.execute(
            text("INSERT INTO tunery_migrations (name, applied_time) VALUES (:name, :time)"),
            {"name": name, "time": datetime.now(UTC).isoformat(timespec="seconds")},
        )
        applied.append(name)
    return applied
