"""API-key authentication from request headers, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.datastructures import Headers


def presented_key(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


def is_valid_key(presented: str | None, configured: Sequence[str]) -> bool:
    """True if ``presented`` equals one configured key.

    Every configured key is compared, each with hmac.compare_digest, so the
    time taken says nothing about which key or how many characters matched.
    """
    if presented is None:
        return False
    given = presented.encode("utf-8", "surrogateescape")
    match = False
    for key in configured:
        match |= hmac.compare_digest(given, key.encode("utf-8"))
    return match
