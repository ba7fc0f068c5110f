"""Whether batches accepted are being stored: the banner on every page, and the ``/pipeline`` page.

The dashboard has no Redis connection; it reads ``pipeline_heartbeats``, which
the workers rewrite every ``server.pipeline_report_seconds`` (``atlas.core.pipeline``).
``pipeline_status`` is pure: from those rows, the newest stored batch and the
time, it names what is wrong and what to do about it. A process is alive while
its row is younger than three reports (and two seconds). When the pipeline is
stalled, a Mac whose last batch is old may only be waiting in the queue: the
fleet and machine pages say "server behind" for it rather than stale or offline.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request

from atlas.core.pipeline import Heartbeat, load_beats
from atlas.core.web import Principal, WebState

from .render import ago, duration

CACHE_SECONDS = 2.0
"""How long one reading of the pipeline serves the pages of one dashboard process."""

START_WORKER = "start a worker: atlas-server worker"
LIST_FAILED = "atlas-server failed lists them; atlas-server failed --requeue-all retries them"
MORE_WORKERS = "start more workers (atlas-server worker), or read the workers' logs"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the pipeline: ``kind`` (no_worker, behind, failed), what is seen and what to do."""

    kind: str
    message: str
    action: str


@dataclass(frozen=True)
class PipelineStatus:
    """What the pipeline's reports say at ``now`` (PostgreSQL's clock, the one the rows are written with)."""

    now: datetime
    workers: tuple[Heartbeat, ...]
    """Every worker row, newest report first."""
    ingests: tuple[Heartbeat, ...]
    alive_after: datetime
    """Rows reported at or after this are of processes taken to be alive."""
    queue: Heartbeat | None
    """The newest report of the queue (depth, failed jobs), from a worker."""
    newest_stored: datetime | None
    """Received time of the newest batch stored (the newest ``machines.last_seen``)."""
    problems: tuple[Problem, ...]
    online_within: timedelta = timedelta(minutes=15)
    """``dashboard.online_seconds``: a Mac is online while its last batch is this recent."""

    @property
    def state(self) -> str:
        """``healthy``, or the kind of the first problem."""
        return self.problems[0].kind if self.problems else "healthy"

    @property
    def stalled(self) -> bool:
        """Batches accepted are not being stored (soon enough): no worker alive, or the server behind."""
        return any(p.kind in ("no_worker", "behind") for p in self.problems)

    def alive(self, beat: Heartbeat) -> bool:
        return beat.last_seen >= self.alive_after

    def explains_silence(self, last_seen: datetime) -> bool:
        """Whether a Mac last stored at ``last_seen`` may only be waiting behind the stalled pipeline.

        True while the pipeline is stalled for a Mac that was online when the pipeline last
        stored a batch (or that is online, when nothing was ever stored).
        """
        online = self.online_within
        if not self.stalled or last_seen >= self.now - online:
            return False
        return self.newest_stored is None or last_seen >= self.newest_stored - online


def pipeline_status(
    beats: list[Heartbeat],
    *,
    now: datetime,
    newest_stored: datetime | None,
    report_seconds: float,
    behind_after: timedelta,
    online_within: timedelta = timedelta(minutes=15),
) -> PipelineStatus:
    """The pipeline's state from its rows: healthy, no worker alive, behind, failed jobs present."""
    alive_after = now - timedelta(seconds=3 * report_seconds + 2)
    workers = tuple(sorted((b for b in beats if b.role == "worker"), key=lambda b: b.last_seen, reverse=True))
    ingests = tuple(sorted((b for b in beats if b.role == "ingest"), key=lambda b: b.last_seen, reverse=True))
    alive = [w for w in workers if w.last_seen >= alive_after]
    queue = workers[0] if workers else None
    problems = []
    if not alive:
        if workers:
            last = workers[0]
            waiting = f", when {last.queue_depth} job(s) waited in the queue" if last.queue_depth else ""
            seen = f"No worker has reported for {duration((now - last.last_seen).total_seconds())}{waiting}"
        else:
            seen = "No worker has reported yet: batches accepted wait in the queue, not stored"
        problems.append(Problem("no_worker", seen, START_WORKER))
    else:
        behind = _behind(alive, ingests, now, alive_after, behind_after)
        if behind:
            problems.append(Problem("behind", behind, MORE_WORKERS))
    if queue is not None and queue.failed_jobs:
        failed = f"{queue.failed_jobs} failed job(s) out of retries: their batches are not stored"
        problems.append(Problem("failed", failed, LIST_FAILED))
    return PipelineStatus(now, workers, ingests, alive_after, queue, newest_stored, tuple(problems), online_within)


def _behind(
    alive: list[Heartbeat],
    ingests: tuple[Heartbeat, ...],
    now: datetime,
    alive_after: datetime,
    behind_after: timedelta,
) -> str:
    """Why the server is behind, or "": a job queued too long ago, or batches accepted long ago with no job since."""
    queue = alive[0]
    if queue.oldest_queued_at is not None and now - queue.oldest_queued_at > behind_after:
        waited = duration((now - queue.oldest_queued_at).total_seconds())
        return f"The server is behind: the oldest of {queue.queue_depth} queued job(s) has waited {waited}"
    accepted = [i.last_accepted_at for i in ingests if i.last_seen >= alive_after and i.last_accepted_at]
    done = [w.last_job_at for w in alive if w.last_job_at]
    newest_accepted = max(accepted, default=None)
    stale = newest_accepted is not None and now - newest_accepted > behind_after
    if newest_accepted is not None and stale and (not done or max(done) < newest_accepted):
        since = ago(newest_accepted, now)
        return f"The server is behind: batches accepted {since} are not stored yet (no job finished since)"
    return ""


class PipelineMonitor:
    """One dashboard process's reading of the pipeline, taken at most every ``CACHE_SECONDS``."""

    def __init__(self, web: WebState) -> None:
        self.web = web
        self._lock = threading.Lock()
        self._status: PipelineStatus | None = None
        self._read_at = 0.0

    def status(self) -> PipelineStatus:
        """The pipeline's status (blocking: call from a thread); database errors propagate."""
        with self._lock:
            if self._status is None or time.monotonic() - self._read_at > CACHE_SECONDS:
                with self.web.pool.connection() as conn:
                    now, beats, newest = load_beats(conn)
                settings = self.web.settings
                self._status = pipeline_status(
                    beats,
                    now=now,
                    newest_stored=newest,
                    report_seconds=settings.pipeline_report_seconds,
                    behind_after=settings.pipeline_behind,
                    online_within=settings.online_within,
                )
                self._read_at = time.monotonic()
            return self._status


@dataclass(frozen=True)
class PageUser(Principal):
    """The signed-in user of a page, with the pipeline's status for its banner."""

    pipeline: PipelineStatus | None = None


def monitor(request: Request) -> PipelineMonitor:
    found: PipelineMonitor = request.app.state.pipeline
    return found


def page_user(request: Request, principal: Principal) -> PageUser:
    """``principal`` with the pipeline's status, for ``render`` to show its banner."""
    return PageUser(principal.user, principal.auth, principal.session, principal.session_id, monitor(request).status())
