"""The PostgreSQL schema, as numbered migrations applied in order.

Each migration runs once, in its own transaction, recorded in
``schema_migrations``; ``atlas-server migrate`` applies what is missing
under an advisory lock, so running it twice, or from two hosts at once, is
harmless. Append new migrations; never edit an applied one.
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "machines, batches, widget_logs",
        """
        CREATE TABLE machines (
            machine_id     text PRIMARY KEY,
            serial_number  text NOT NULL,
            hostname       text NOT NULL DEFAULT '',
            model          text NOT NULL DEFAULT '',
            os_version     text NOT NULL DEFAULT '',
            agent_version  text NOT NULL DEFAULT '',
            first_seen     timestamptz NOT NULL,
            last_seen      timestamptz NOT NULL,
            identity_at    timestamptz NOT NULL
        );
        COMMENT ON COLUMN machines.identity_at IS
            'created_at of the batch the identity columns come from; an older replayed batch never overwrites them';
        CREATE INDEX machines_serial_number_idx ON machines (serial_number);

        CREATE TABLE batches (
            batch_id     uuid PRIMARY KEY,
            machine_id   text NOT NULL,
            created_at   timestamptz NOT NULL,
            received_at  timestamptz NOT NULL,
            stored_at    timestamptz NOT NULL DEFAULT now(),
            log_count    integer NOT NULL,
            kid          text
        );
        COMMENT ON TABLE batches IS
            'One row per stored batch; the primary key is what makes storage exactly-once';
        CREATE INDEX batches_machine_idx ON batches (machine_id, created_at);

        CREATE TABLE widget_logs (
            id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            machine_id     text NOT NULL,
            serial_number  text NOT NULL,
            "timestamp"    timestamptz NOT NULL,
            level          text NOT NULL,
            widget_type    text NOT NULL,
            message        text NOT NULL,
            data           jsonb NOT NULL,
            batch_id       uuid NOT NULL,
            received_at    timestamptz NOT NULL
        );
        CREATE INDEX widget_logs_timestamp_idx ON widget_logs ("timestamp");
        CREATE INDEX widget_logs_type_timestamp_idx ON widget_logs (widget_type, "timestamp");
        CREATE INDEX widget_logs_machine_timestamp_idx ON widget_logs (machine_id, "timestamp");
        CREATE INDEX widget_logs_batch_idx ON widget_logs (batch_id);
        """,
    ),
    Migration(
        2,
        "users, sessions, api_tokens, export_audit, server_secrets, atlas_csv_cell",
        r"""
        CREATE TABLE users (
            id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            username       text NOT NULL,
            password_hash  text NOT NULL,
            role           text NOT NULL CHECK (role IN ('viewer', 'admin')),
            created_at     timestamptz NOT NULL DEFAULT now(),
            last_login_at  timestamptz
        );
        CREATE UNIQUE INDEX users_username_idx ON users (lower(username));

        CREATE TABLE sessions (
            id_hash     bytea PRIMARY KEY,
            user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            csrf_token  text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz NOT NULL
        );
        COMMENT ON COLUMN sessions.id_hash IS 'SHA-256 of the session id; the id itself is only in the cookie';
        CREATE INDEX sessions_user_idx ON sessions (user_id);
        CREATE INDEX sessions_expires_idx ON sessions (expires_at);

        CREATE TABLE api_tokens (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name          text NOT NULL,
            token_hash    bytea NOT NULL UNIQUE,
            user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            created_at    timestamptz NOT NULL DEFAULT now(),
            last_used_at  timestamptz,
            revoked_at    timestamptz
        );
        COMMENT ON COLUMN api_tokens.token_hash IS 'SHA-256 of the token; the token is shown once, at creation';

        CREATE TABLE export_audit (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            started_at   timestamptz NOT NULL DEFAULT now(),
            finished_at  timestamptz,
            username     text NOT NULL,
            auth         text NOT NULL,
            client       text,
            format       text NOT NULL,
            filters      jsonb NOT NULL,
            row_count    bigint,
            status       text NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'aborted')),
            error        text
        );
        CREATE INDEX export_audit_started_idx ON export_audit (started_at);

        CREATE TABLE server_secrets (
            name        text PRIMARY KEY,
            value       text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now()
        );

        -- One CSV cell as exports write it: a cell a spreadsheet would run as a formula gets a leading
        -- apostrophe, as atlas.contract.export.neutralise does in Python. A plain SQL body, not STRICT,
        -- so the planner inlines it (about 5x faster per row than a function call).
        CREATE FUNCTION atlas_csv_cell(cell text) RETURNS text
            LANGUAGE sql IMMUTABLE PARALLEL SAFE
            AS $$ SELECT CASE WHEN left(cell, 1) IN ('=', '+', '-', '@', E'\t', E'\r',
                                                    U&'\FF1D', U&'\FF0B', U&'\FF0D', U&'\FF20')
                              THEN '''' || cell ELSE cell END $$;
        """,
    ),
    Migration(
        3,
        "encryption at rest: sealed widget_logs, wrapped data keys in batches, db_key_ids",
        """
        ALTER TABLE batches ADD COLUMN dek_kid text, ADD COLUMN dek_wrapped bytea;
        COMMENT ON COLUMN batches.dek_wrapped IS
            'The batch''s data key, AES-256-GCM under the database key dek_kid; NULL: its logs are stored clear';

        ALTER TABLE widget_logs
            ALTER COLUMN message DROP NOT NULL,
            ALTER COLUMN data DROP NOT NULL,
            ADD COLUMN sealed bytea;
        COMMENT ON COLUMN widget_logs.sealed IS
            'message and data sealed under the batch''s data key (atlas.core.atrest); then both are NULL';
        ALTER TABLE widget_logs ADD CONSTRAINT widget_logs_clear_or_sealed CHECK (
            (sealed IS NULL AND message IS NOT NULL AND data IS NOT NULL)
            OR (sealed IS NOT NULL AND message IS NULL AND data IS NULL)
        ) NOT VALID;

        CREATE TABLE db_key_ids (
            kid            text PRIMARY KEY,
            first_used_at  timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE db_key_ids IS
            'Database keys that wrap at least one stored data key; empty means nothing is encrypted at rest';
        """,
    ),
    Migration(
        4,
        "widget_logs partitioned by day of timestamp; the rows before become one partition",
        """
        DO $$
        DECLARE
            -- Rows before tomorrow (UTC) stay where they are, as one partition; days from tomorrow get their own.
            cutover timestamptz := (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC';
            day timestamptz;
        BEGIN
            -- Day arithmetic in UTC, whatever the server's time zone (a daylight-saving change would shift it).
            PERFORM set_config('TimeZone', 'UTC', true);
            ALTER TABLE widget_logs RENAME TO widget_logs_before;
            ALTER INDEX widget_logs_timestamp_idx RENAME TO widget_logs_before_timestamp_idx;
            ALTER INDEX widget_logs_type_timestamp_idx RENAME TO widget_logs_before_type_timestamp_idx;
            ALTER INDEX widget_logs_machine_timestamp_idx RENAME TO widget_logs_before_machine_timestamp_idx;
            ALTER INDEX widget_logs_batch_idx RENAME TO widget_logs_before_batch_idx;

            CREATE SEQUENCE widget_logs_id AS bigint;
            PERFORM setval('widget_logs_id', coalesce((SELECT max(id) FROM widget_logs_before), 0) + 1, false);
            ALTER TABLE widget_logs_before ALTER COLUMN id DROP IDENTITY;
            ALTER TABLE widget_logs_before DROP CONSTRAINT widget_logs_pkey;
            ALTER TABLE widget_logs_before VALIDATE CONSTRAINT widget_logs_clear_or_sealed;

            CREATE TABLE widget_logs (
                id             bigint NOT NULL DEFAULT nextval('widget_logs_id'),
                machine_id     text NOT NULL,
                serial_number  text NOT NULL,
                "timestamp"    timestamptz NOT NULL,
                level          text NOT NULL,
                widget_type    text NOT NULL,
                message        text,
                data           jsonb,
                batch_id       uuid NOT NULL,
                received_at    timestamptz NOT NULL,
                sealed         bytea,
                CONSTRAINT widget_logs_clear_or_sealed CHECK (
                    (sealed IS NULL AND message IS NOT NULL AND data IS NOT NULL)
                    OR (sealed IS NOT NULL AND message IS NULL AND data IS NULL)
                ),
                PRIMARY KEY (id, "timestamp")
            ) PARTITION BY RANGE ("timestamp");
            ALTER SEQUENCE widget_logs_id OWNED BY widget_logs.id;
            CREATE INDEX widget_logs_timestamp_idx ON widget_logs ("timestamp");
            CREATE INDEX widget_logs_type_timestamp_idx ON widget_logs (widget_type, "timestamp");
            CREATE INDEX widget_logs_machine_timestamp_idx ON widget_logs (machine_id, "timestamp");
            CREATE INDEX widget_logs_batch_idx ON widget_logs (batch_id);

            FOR i IN 0..13 LOOP
                day := cutover + i * interval '1 day';
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF widget_logs FOR VALUES FROM (%L) TO (%L)',
                    'widget_logs_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'), day, day + interval '1 day'
                );
            END LOOP;
            -- Timestamps outside every day's partition (an agent's clock far off) land here; nothing is refused.
            CREATE TABLE widget_logs_default PARTITION OF widget_logs DEFAULT;
            -- Rows already dated on or after the cutover move to their day, so the old table fits its bound.
            INSERT INTO widget_logs SELECT id, machine_id, serial_number, "timestamp", level, widget_type, message,
                data, batch_id, received_at, sealed FROM widget_logs_before WHERE "timestamp" >= cutover;
            DELETE FROM widget_logs_before WHERE "timestamp" >= cutover;
            EXECUTE format(
                'ALTER TABLE widget_logs ATTACH PARTITION widget_logs_before FOR VALUES FROM (MINVALUE) TO (%L)',
                cutover
            );
        END $$;
        """,
    ),
    Migration(
        5,
        "login_failures",
        """
        CREATE TABLE login_failures (
            username_key    text PRIMARY KEY,
            failures        integer NOT NULL,
            last_failed_at  timestamptz NOT NULL,
            locked_until    timestamptz
        );
        COMMENT ON TABLE login_failures IS
            'Consecutive failed dashboard sign-ins by lower(username), whether or not the user exists, so a'
            ' lockout says nothing about which names exist; a success or an unlock deletes the row';
        CREATE INDEX login_failures_last_failed_idx ON login_failures (last_failed_at);
        """,
    ),
    Migration(
        6,
        "machine identity ordered by received time, serial numbers fixed, identity_conflicts",
        """
        COMMENT ON COLUMN machines.identity_at IS
            'received_at of the batch the identity columns come from (the server''s time, not the agent''s'
            ' created_at): the newest batch received wins, an older or replayed one never overwrites them';
        COMMENT ON COLUMN machines.serial_number IS
            'Set by the first batch of the machine_id and never changed: a batch claiming another serial'
            ' is an identity conflict';
        -- identity_at held created_at, which an agent chooses (up to the future bound): never later than
        -- the last batch received
        UPDATE machines SET identity_at = last_seen WHERE identity_at > last_seen;

        CREATE TABLE identity_conflicts (
            batch_id       uuid PRIMARY KEY,
            machine_id     text NOT NULL,
            serial_number  text NOT NULL,
            hostname       text NOT NULL,
            received_at    timestamptz NOT NULL,
            log_count      integer NOT NULL
        );
        COMMENT ON TABLE identity_conflicts IS
            'Batches that claimed a machine_id with a serial number other than its own: their logs were not'
            ' stored and they changed nothing of the machine; shown on its page for an operator';
        CREATE INDEX identity_conflicts_machine_idx ON identity_conflicts (machine_id, received_at);
        """,
    ),
    Migration(
        7,
        "login failures per client address and username",
        """
        -- A count per name let anyone lock the real user out with a few guesses from anywhere; the rows
        -- are short-lived by nature, so they are not carried over.
        DROP TABLE login_failures;
        CREATE TABLE login_failures (
            address         text NOT NULL,
            username_key    text NOT NULL,
            failures        integer NOT NULL,
            last_failed_at  timestamptz NOT NULL,
            blocked_until   timestamptz,
            PRIMARY KEY (username_key, address)
        );
        COMMENT ON TABLE login_failures IS
            'Consecutive failed dashboard sign-ins by client address and lower(username), whether or not the'
            ' user exists; past a threshold that address waits a doubling delay before trying the name again,'
            ' other addresses are not held back. A success from the address or an unlock deletes the row';
        CREATE INDEX login_failures_last_failed_idx ON login_failures (last_failed_at);
        """,
    ),
    Migration(
        8,
        "contract v2: enroll_secrets, devices, machines.protocol",
        """
        CREATE TABLE enroll_secrets (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name         text NOT NULL UNIQUE,
            secret_hash  bytea NOT NULL UNIQUE,
            created_at   timestamptz NOT NULL DEFAULT now(),
            expires_at   timestamptz,
            max_uses     integer CHECK (max_uses > 0),
            uses         integer NOT NULL DEFAULT 0,
            revoked_at   timestamptz
        );
        COMMENT ON COLUMN enroll_secrets.secret_hash IS
            'SHA-256 of the secret (32 random bytes); the secret is shown once, at creation';

        CREATE TABLE devices (
            device_id         uuid PRIMARY KEY,
            machine_id        text NOT NULL,
            hardware_uuid     text NOT NULL,
            serial_number     text NOT NULL,
            hostname          text NOT NULL DEFAULT '',
            public_key        bytea NOT NULL CHECK (length(public_key) = 32),
            enroll_secret_id  bigint REFERENCES enroll_secrets (id) ON DELETE SET NULL,
            enrolled_at       timestamptz NOT NULL DEFAULT now(),
            last_seen_at      timestamptz,
            revoked_at        timestamptz,
            replaced_by       uuid REFERENCES devices (device_id) DEFERRABLE INITIALLY DEFERRED
        );
        COMMENT ON TABLE devices IS
            'Enrolled Macs (contract v2): the Ed25519 public key that signs their requests, and the identity'
            ' ingest takes from the credential; a re-enrolled Mac''s old row is replaced_by the new one';
        CREATE UNIQUE INDEX devices_live_hardware_idx ON devices (hardware_uuid)
            WHERE revoked_at IS NULL AND replaced_by IS NULL;
        CREATE UNIQUE INDEX devices_live_machine_idx ON devices (machine_id)
            WHERE revoked_at IS NULL AND replaced_by IS NULL;
        CREATE INDEX devices_machine_idx ON devices (machine_id, enrolled_at);

        ALTER TABLE machines ADD COLUMN protocol smallint;
        COMMENT ON COLUMN machines.protocol IS
            'Wire contract version of the newest batch received from the machine (1 or 2); NULL: before it was kept';
        """,
    ),
    Migration(
        9,
        "index of each machine's problems, for the fleet list's latest problem",
        """
        -- The fleet list shows and filters by each machine's latest WARNING or ERROR log; without this
        -- index finding it reads every quieter log before it. Partitions created later get it too.
        CREATE INDEX widget_logs_machine_problem_idx ON widget_logs (machine_id, "timestamp")
            WHERE level IN ('WARNING', 'ERROR');
        """,
    ),
    Migration(
        10,
        "pipeline_heartbeats",
        """
        CREATE TABLE pipeline_heartbeats (
            role              text NOT NULL CHECK (role IN ('worker', 'ingest')),
            name              text NOT NULL,
            host              text NOT NULL,
            pid               integer NOT NULL,
            started_at        timestamptz NOT NULL,
            last_seen         timestamptz NOT NULL,
            last_job_at       timestamptz,
            jobs_done         bigint NOT NULL DEFAULT 0,
            last_stored_at    timestamptz,
            batches_accepted  bigint NOT NULL DEFAULT 0,
            last_accepted_at  timestamptz,
            queue_depth       integer,
            failed_jobs       integer,
            retrying_jobs     integer,
            oldest_queued_at  timestamptz,
            PRIMARY KEY (role, name)
        );
        COMMENT ON TABLE pipeline_heartbeats IS
            'One row per worker and ingest process, rewritten by each worker every few seconds with what it'
            ' reads from Redis (queue depth, failed jobs) and what ingest processes left there: the dashboard,'
            ' which has no Redis connection, tells from it whether batches accepted are being stored';
        COMMENT ON COLUMN pipeline_heartbeats.last_seen IS
            'PostgreSQL''s now() at the worker''s last report (an ingest row: the ingest''s last report to Redis)';
        """,
    ),
)
"""Every migration, oldest first."""

LATEST_VERSION = MIGRATIONS[-1].version
