"""Versioned schema of the job store.  Migration N brings ``PRAGMA user_version`` from N-1 to N.

Append new migrations to :data:`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs (latest version of each job) and events (every state change, by store-assigned seq).
    """
    CREATE TABLE jobs (
        id         INTEGER PRIMARY KEY,
        user       TEXT    NOT NULL,
        state      TEXT    NOT NULL,
        seq        INTEGER NOT NULL,
        data       BLOB    NOT NULL
    );
    CREATE INDEX jobs_active ON jobs(state) WHERE state IN ('queued', 'running');
    CREATE INDEX jobs_user ON jobs(user, id);
    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY,
        job_id     INTEGER NOT NULL,
        user       TEXT    NOT NULL,
        ts         REAL    NOT NULL,
        data       BLOB    NOT NULL
    );
    CREATE INDEX events_job ON events(job_id, seq);
    CREATE INDEX events_user ON events(user, seq);
    """,
    # 2: stored job records that could not be read, set aside (the job itself is marked lost).
    """
    CREATE TABLE quarantine (
        job_id     INTEGER NOT NULL,
        seq        INTEGER,
        data       BLOB,
        error      TEXT    NOT NULL,
        ts         REAL    NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
