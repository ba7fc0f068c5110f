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
)
"""Every migration, oldest first."""

LATEST_VERSION = MIGRATIONS[-1].version
