"""The pipeline's state from its reports (``pipeline_status``): pure, from rows and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from atlas.core.pipeline import Heartbeat
from atlas.dashboard.pipeline import pipeline_status

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
REPORT = 5  # seconds between reports: alive while reported within 17 s
BEHIND = timedelta(minutes=2)
ONLINE = timedelta(minutes=15)


def worker(seen_ago: float = 1, **fields: object) -> Heartbeat:
    values: dict = {
        "role": "worker",
        "name": "w1",
        "host": "h",
        "pid": 1,
        "started_at": NOW - timedelta(hours=1),
        "last_seen": NOW - timedelta(seconds=seen_ago),
        "queue_depth": 0,
        "failed_jobs": 0,
        "retrying_jobs": 0,
    }
    values.update(fields)
    return Heartbeat(**values)


def ingest(seen_ago: float = 1, accepted_ago: float | None = None) -> Heartbeat:
    accepted = NOW - timedelta(seconds=accepted_ago) if accepted_ago is not None else None
    return Heartbeat(
        role="ingest",
        name="i1",
        host="h",
        pid=2,
        started_at=NOW - timedelta(hours=1),
        last_seen=NOW - timedelta(seconds=seen_ago),
        batches_accepted=10,
        last_accepted_at=accepted,
    )


def status(beats: list[Heartbeat], newest_stored: datetime | None = None):
    return pipeline_status(
        beats, now=NOW, newest_stored=newest_stored, report_seconds=REPORT, behind_after=BEHIND, online_within=ONLINE
    )


def test_no_report_at_all_means_no_worker():
    found = status([ingest(accepted_ago=3)])
    assert found.state == "no_worker"
    assert found.stalled
    (problem,) = found.problems
    assert "No worker has reported yet" in problem.message
    assert "atlas-server worker" in problem.action


def test_a_worker_reporting_with_an_empty_queue_is_healthy():
    found = status([worker(last_job_at=NOW - timedelta(seconds=30)), ingest(accepted_ago=40)])
    assert found.state == "healthy"
    assert found.problems == ()
    assert not found.stalled


def test_a_worker_silent_for_three_reports_is_not_alive():
    found = status([worker(seen_ago=16, queue_depth=4)])
    assert found.state == "healthy"  # within three reports and two seconds
    found = status([worker(seen_ago=125, queue_depth=4)])
    assert found.state == "no_worker"
    assert found.problems[0].message == "No worker has reported for 2 min, when 4 job(s) waited in the queue"
    assert not found.alive(found.workers[0])


def test_the_newest_worker_row_counts_and_old_ones_do_not_hide_it():
    old = worker(seen_ago=3600, name="gone", queue_depth=100, failed_jobs=0)
    found = status([old, worker(name="live")])
    assert found.state == "healthy"
    assert found.queue is not None
    assert found.queue.name == "live"
    assert [w.name for w in found.workers] == ["live", "gone"]


def test_a_job_queued_longer_than_the_limit_means_behind():
    found = status([worker(queue_depth=7, oldest_queued_at=NOW - timedelta(minutes=3))])
    assert found.state == "behind"
    assert found.stalled
    assert "the oldest of 7 queued job(s) has waited 3 min" in found.problems[0].message
    assert status([worker(queue_depth=7, oldest_queued_at=NOW - timedelta(seconds=90))]).state == "healthy"


def test_batches_accepted_long_ago_with_no_job_since_mean_behind():
    stuck = worker(last_job_at=NOW - timedelta(minutes=10))  # alive, but its last job ended before the accept
    found = status([stuck, ingest(accepted_ago=300)])
    assert found.state == "behind"
    assert "batches accepted 5 min ago are not stored yet" in found.problems[0].message
    # stored since: healthy; accepted recently: not behind yet
    assert status([worker(last_job_at=NOW - timedelta(minutes=4)), ingest(accepted_ago=300)]).state == "healthy"
    assert status([stuck, ingest(accepted_ago=60)]).state == "healthy"
    # an ingest that stopped reporting says nothing about what it accepted
    assert status([stuck, ingest(seen_ago=600, accepted_ago=700)]).state == "healthy"


def test_failed_jobs_are_a_problem_of_their_own():
    found = status([worker(failed_jobs=3)])
    assert found.state == "failed"
    assert not found.stalled
    (problem,) = found.problems
    assert problem.message.startswith("3 failed job(s)")
    assert "atlas-server failed" in problem.action
    both = status([worker(seen_ago=600, failed_jobs=3)])
    assert [p.kind for p in both.problems] == ["no_worker", "failed"]


def test_a_stalled_pipeline_explains_the_silence_of_macs_online_when_it_stalled():
    stored = NOW - timedelta(hours=2)  # nothing stored since
    stalled = status([worker(seen_ago=7200)], newest_stored=stored)
    assert stalled.explains_silence(stored - timedelta(minutes=5))  # online when the pipeline stalled
    assert not stalled.explains_silence(stored - timedelta(hours=1))  # silent already before: the Mac is silent
    assert not stalled.explains_silence(NOW - timedelta(minutes=1))  # online: nothing to explain
    healthy = status([worker()], newest_stored=NOW)
    assert not healthy.explains_silence(NOW - timedelta(hours=1))
    failed_only = status([worker(failed_jobs=2)], newest_stored=NOW)
    assert not failed_only.explains_silence(NOW - timedelta(hours=1))
