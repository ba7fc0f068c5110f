"""Reading stored log content back, decrypted whatever is encrypted at rest.

Every reader of ``message`` and ``data`` (the exporter, the dashboard) goes
through ``ContentReader``: a clear row passes through, a sealed row is opened
with its batch's data key, which is unwrapped once and cached. A server that
finds sealed rows but lacks their database key refuses with ``AtRestError``
naming the setting; it never shows ciphertext or guesses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime

import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from atlas.contract import Keyring

from .atrest import epoch_micros, open_log, unwrap_data_key
from .errors import AtRestError

CACHED_KEYS = 4096
"""Unwrapped data keys kept per reader (one per batch; rows of a batch are stored together)."""


def key_ids_in_use(conn: psycopg.Connection) -> list[str]:
    """Ids of the database keys that wrap stored data keys; empty when nothing is encrypted at rest."""
    return [row[0] for row in conn.execute("SELECT kid FROM db_key_ids ORDER BY kid")]


def require_keys(conn: psycopg.Connection, keyring: Keyring) -> bool:
    """True if some content is sealed (so it must be read through a ContentReader).

    Raises AtRestError, naming the setting, when a key that sealed stored content is not configured.
    """
    in_use = key_ids_in_use(conn)
    missing = [kid for kid in in_use if kid not in keyring]
    if missing:
        raise AtRestError(
            f"stored logs are encrypted under database key id(s) {', '.join(missing)}, which this server does"
            " not have: set server.db_encryption_key (FLEET_DB_ENCRYPTION_KEY), keeping older keys in"
            " server.db_encryption_keys"
        )
    return bool(in_use)


class ContentReader:
    """Opens sealed rows with their batches' data keys, fetched in bulk and cached."""

    def __init__(self, conn: psycopg.Connection, keyring: Keyring) -> None:
        self.conn = conn
        self.keyring = keyring
        self._aeads: OrderedDict[str, AESGCM] = OrderedDict()

    def prefetch(self, batch_ids: Iterable[str]) -> None:
        """Unwrap the data keys of these batches in one query (call with a page of rows' batch ids)."""
        wanted = {b for b in batch_ids if b not in self._aeads}
        if not wanted:
            return
        rows = self.conn.execute(
            "SELECT batch_id::text, dek_kid, dek_wrapped FROM batches"
            " WHERE batch_id = ANY(%s::uuid[]) AND dek_wrapped IS NOT NULL",
            (list(wanted),),
        ).fetchall()
        for batch_id, kid, wrapped in rows:
            self._remember(batch_id, AESGCM(unwrap_data_key(self.keyring, kid, batch_id, bytes(wrapped))))

    def _remember(self, batch_id: str, aead: AESGCM) -> None:
        self._aeads[batch_id] = aead
        if len(self._aeads) > CACHED_KEYS:
            self._aeads.popitem(last=False)

    def open(
        self,
        batch_id: str,
        machine_id: str,
        timestamp: datetime,
        level: str,
        widget_type: str,
        sealed: bytes,
    ) -> tuple[str, str]:
        """(message, data JSON) of a sealed row."""
        aead = self._aeads.get(batch_id)
        if aead is None:
            self.prefetch([batch_id])
            aead = self._aeads.get(batch_id)
            if aead is None:
                raise AtRestError(f"batch {batch_id} has sealed logs but no data key")
        return open_log(aead, batch_id, machine_id, epoch_micros(timestamp), level, widget_type, bytes(sealed))
