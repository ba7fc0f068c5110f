"""Rate limiter micro-benchmark: the cost of one ``RateLimiter.hit`` and of ``client_key``.

Pure Python, no servers: a hit on one of 1,000 known keys, the key of a client address,
and a hit of a new key in a flood of distinct addresses (which evicts at ``max_keys``).

    .venv/bin/python -m bench.ratelimit
"""

from __future__ import annotations

import time

from atlas.core.ratelimit import RateLimiter, client_key

N = 200_000
"""Calls timed in each measurement."""


def main() -> None:
    limiter = RateLimiter(100, 1000, exempt=["127.0.0.0/8"])
    keys = [f"10.0.{i >> 8 & 255}.{i & 255}" for i in range(1000)]
    started = time.perf_counter()
    for i in range(N):
        limiter.hit(keys[i % 1000])
    hit = (time.perf_counter() - started) / N * 1e6
    started = time.perf_counter()
    for _ in range(N):
        client_key("10.1.2.3")
    key = (time.perf_counter() - started) / N * 1e6
    flood = RateLimiter(100, 1000, max_keys=100_000)
    started = time.perf_counter()
    for i in range(N):
        flood.hit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    new = (time.perf_counter() - started) / N * 1e6
    print(f"hit (1000 known keys) {hit:.2f} µs; client_key {key:.2f} µs; hit of a new key {new:.2f} µs")
    print(f"after {N} distinct keys: {len(flood)} buckets kept (max_keys 100000), {flood.evicted} evicted")


if __name__ == "__main__":
    main()
