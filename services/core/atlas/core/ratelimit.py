"""In-process token-bucket rate limits, keyed by client address or API key.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens a
second; a request takes one token, or is refused with the seconds until one
is back (the ``Retry-After``). Buckets refill lazily on use, so a check is a
dict lookup and a little arithmetic under an uncontended lock, small beside
the rest of an accepted batch (``python -m bench.ratelimit``; figures in
bench/README.md, "Figures behind the code").

Memory is bounded: the buckets live in an LRU map of at most ``max_keys``
entries. Every new key first drops up to two least recently used buckets that
have refilled completely (forgetting a full bucket changes nothing), and at
``max_keys`` the least recently used bucket goes whatever its state, so a
flood from many addresses costs a fixed amount of memory (``max_keys``
buckets with their keys) and at worst hands an evicted address a fresh burst.

Limits are per process: with N ingest or dashboard processes a client that
spreads over all of them gets up to N times the limit. Shared limits would
need a Redis round trip per request, which ingest cannot afford.

Written by hand rather than with the ``limits`` package: its MemoryStorage
costs several times as much a hit (and as much again to learn the reset time
for a Retry-After), has no token bucket with a separate burst, and expires
keys from a timer thread that scans every stored key while requests arrive,
which with a flood of addresses takes a large share of a core.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import Scope

from . import metrics
from .edge import problem

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("atlas.ratelimit")

LOG_EVERY_SECONDS = 60.0
"""Ingest logs a refusal at most this often."""

UNKNOWN_CLIENT = "unknown"
"""The key of requests without a peer address (a Unix socket)."""

FORWARDED_SUFFIX = " (via X-Forwarded-For)"
"""Appended to an exempt address named by X-Forwarded-For: its own bucket, limited like any other."""


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """Token buckets of ``rate`` tokens a second and ``burst`` at most, one per key.

    ``rate`` 0 turns the limiter off: every hit is allowed and nothing is stored.
    Thread-safe (the dashboard calls it from FastAPI's thread pool).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be >= 0, burst and max_keys >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.exempt = tuple(ipaddress.ip_network(net, strict=False) for net in exempt)
        self.evicted = 0
        """Buckets dropped before they had refilled (the map was full): a measure of a flood."""
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, _Bucket | None] = OrderedDict()  # None: an exempt address

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, key: str, *, forwarded: bool = False) -> float:
        """Take a token for ``key``: 0.0 if allowed, else the seconds until a token is back.

        ``forwarded``: the address came from X-Forwarded-For, so it is never exempt (anyone
        behind the proxy can write 127.0.0.1 there).
        """
        if not self.rate:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._bucket(key, now)
            if bucket is None:
                if not forwarded:
                    return 0.0
                bucket = self._bucket(key + FORWARDED_SUFFIX, now)  # no address: never exempt
                assert bucket is not None
            tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if tokens >= 1.0:
                bucket.tokens = tokens - 1.0
                return 0.0
            bucket.tokens = tokens
            return (1.0 - tokens) / self.rate

    def refund(self, key: str) -> None:
        """Give back the token a hit took (a sign-in that succeeded), never above ``burst``."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def _bucket(self, key: str, now: float) -> _Bucket | None:
        """The bucket of ``key`` (None: exempt), made if new; under the lock."""
        if key not in self._buckets:
            return self._add(key, now)
        self._buckets.move_to_end(key)
        return self._buckets[key]

    def _add(self, key: str, now: float) -> _Bucket | None:
        buckets = self._buckets
        for _ in range(2):  # forget idle buckets as new keys come, so the map follows the active set
            if not buckets:
                break
            oldest_key, oldest = next(iter(buckets.items()))
            if oldest is not None and oldest.tokens + (now - oldest.stamp) * self.rate < self.burst:
                break
            del buckets[oldest_key]
        if len(buckets) >= self.max_keys:
            buckets.popitem(last=False)
            self.evicted += 1
        bucket = None if self._is_exempt(key) else _Bucket(self.burst, now)
        buckets[key] = bucket
        return bucket

    def _is_exempt(self, key: str) -> bool:
        if not self.exempt:
            return False
        try:
            address = ipaddress.ip_address(key.partition("/")[0])
        except ValueError:
            return False
        return any(address.version == net.version and address in net for net in self.exempt)


def client_key(host: str | None) -> str:
    """The bucket key of a client address (as uvicorn resolved it, proxy headers included).

    IPv4 addresses are their own key; an IPv6 address counts as its /64, since
    one host usually holds a whole /64 and could otherwise step around the
    limit (so exempt IPv6 networks must be a /64 or wider); an IPv4-mapped IPv6
    address counts as the IPv4 address, ``::1`` as itself.
    """
    if not host:
        return UNKNOWN_CLIENT
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if address.is_loopback:
        return "::1"
    return f"{ipaddress.IPv6Address(address.packed[:8] + bytes(8))}/64"


def forwarded_for(scope: Scope) -> bool:
    """Whether the request carries X-Forwarded-For: then its address may be one a client chose."""
    return any(name == b"x-forwarded-for" for name, _ in scope["headers"])


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class IngestLimits:
    """Ingest's limits (address, API key, v2 device), each answering 429 with Retry-After, counting ``rate_limited``.

    The per-address limit is checked first, before the API key and before a
    byte of the body is read, so a flood without a key is refused cheaply too;
    the per-key limit only for a valid key, so its buckets are the configured keys.
    """

    def __init__(self, settings: Settings) -> None:
        self.per_address = RateLimiter(
            settings.rate_limit_per_address,
            settings.rate_limit_per_address_burst,
            max_keys=settings.rate_limit_max_addresses,
            exempt=settings.rate_limit_exempt,
        )
        self._logged_at = -math.inf
        self.per_key = RateLimiter(
            settings.rate_limit_per_key, settings.rate_limit_per_key_burst, max_keys=max(64, len(settings.api_keys))
        )
        self.per_device = RateLimiter(
            settings.rate_limit_per_device,
            settings.rate_limit_per_device_burst,
            max_keys=settings.rate_limit_max_addresses,
        )

    def check_address(self, request: HTTPConnection) -> JSONResponse | None:
        """None if the client's address may go on, else the 429 answer."""
        scope = request.scope
        client = scope.get("client")  # what request.client wraps, without building an Address
        key = client_key(client[0] if client else None)
        if wait := self.per_address.hit(key, forwarded=forwarded_for(scope)):
            self._log(f"client address {key}")
            return _too_many(wait, "this client address")
        return None

    def check_device(self, device_id: str) -> JSONResponse | None:
        """None if this (authenticated) device may go on, else the 429 answer."""
        if wait := self.per_device.hit(device_id):
            self._log(f"device {device_id}")
            return _too_many(wait, "this device")
        return None

    def check_key(self, api_key: str | None) -> JSONResponse | None:
        """None if this (valid) API key may go on, else the 429 answer."""
        if wait := self.per_key.hit(api_key or ""):
            self._log("an API key")  # never the key itself
            return _too_many(wait, "this API key")
        return None

    def _log(self, whom: str) -> None:
        """One line a minute at most, so a flood cannot flood the log too."""
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            log.warning(
                "Rate limit reached by %s; answering 429 (further refusals are counted in"
                ' atlas_batches_rejected_total{reason="rate_limited"} and logged at most once a minute)',
                whom,
            )


def _too_many(wait: float, whose: str) -> JSONResponse:
    metrics.reject("rate_limited")
    seconds = retry_after(wait)
    return problem(429, f"rate limit exceeded for {whose}; retry after {seconds} s", headers={"Retry-After": seconds})
