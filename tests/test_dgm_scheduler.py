"""jobs.dgm.scheduler: async vs generation-barrier scheduling of attempts, with real Ray tasks."""
from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from jobs.dgm.scheduler import REISSUE, AttemptScheduler  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    task = sleeper()
    ray.get([task.remote(0.3) for _ in range(4)])   # start worker processes before timing
    yield task
    if started:
        ray.shutdown()


def sleeper():
    @ray.remote(num_cpus=0)   # sleeping takes no CPU: concurrency is bounded by the scheduler
    def sleep_then(seconds: float, fail: bool = False) -> float:
        time.sleep(seconds)
        if fail:
            raise ValueError(f"attempt failed after {seconds}")
        return seconds
    return sleep_then


class Recorder:
    """launch/on_done callbacks that check how many attempts are in flight."""

    def __init__(self, task, workers: int, durations: dict[int, float], fail=()):
        self.task, self.workers, self.durations, self.fail = task, workers, durations, set(fail)
        self.in_flight, self.max_in_flight = 0, 0
        self.launched: list[tuple[int, int]] = []
        self.done: list[tuple[int, object]] = []

    def launch(self, attempt: int, generation: int):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        assert self.in_flight <= self.workers
        self.launched.append((attempt, generation))
        return self.task.remote(self.durations.get(attempt, 0.01), attempt in self.fail)

    def on_done(self, attempt: int, result) -> None:
        self.in_flight -= 1
        self.done.append((attempt, result))


def by_attempt(stats):
    return {t.attempt: t for t in stats.timings}


def max_overlap(stats) -> int:
    events = sorted([(t.start, 1) for t in stats.timings] + [(t.end, -1) for t in stats.timings],
                    key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_async_has_no_barrier(ray_local):
    # generation 1 = attempts 0, 1 (0 slow); generation 2 = attempts 2, 3 (fast)
    rec = Recorder(ray_local, 2, {0: 0.3})
    stats = AttemptScheduler("async", 2, 2).run([0, 1, 2, 3], rec.launch, rec.on_done)
    t = by_attempt(stats)
    assert rec.max_in_flight == 2 and max_overlap(stats) <= 2
    assert t[2].start < t[0].end           # generation 2 started while attempt 0 still ran
    done = [a for a, _ in rec.done]
    assert done.index(2) < done.index(0)
    assert rec.launched == [(0, 1), (1, 1), (2, 2), (3, 2)]
    assert {x.worker for x in stats.timings} <= {0, 1}
    assert t[0].worker == 0 and t[1].worker == 1 and t[2].worker == 1   # 2 took 1's slot
    assert stats.mode == "async" and stats.workers == 2
    assert stats.busy_s == pytest.approx(sum(x.end - x.start for x in stats.timings))
    assert stats.utilisation == pytest.approx(stats.busy_s / (2 * stats.makespan_s))
    assert 0 < stats.utilisation <= 1


def test_generation_mode_has_barrier(ray_local):
    rec = Recorder(ray_local, 2, {0: 0.3})
    stats = AttemptScheduler("generation", 2, 2).run([0, 1, 2, 3], rec.launch, rec.on_done)
    t = by_attempt(stats)
    gen1_end = max(t[0].end, t[1].end)
    assert t[2].start >= gen1_end and t[3].start >= gen1_end
    assert [a for a, _ in rec.done][:2] == [1, 0]
    assert rec.max_in_flight == 2
    # the same work without the barrier finishes sooner
    rec2 = Recorder(ray_local, 2, {0: 0.3, 2: 0.3})
    rec3 = Recorder(ray_local, 2, {0: 0.3, 2: 0.3})
    barrier = AttemptScheduler("generation", 2, 2).run([0, 1, 2, 3], rec2.launch, rec2.on_done)
    free = AttemptScheduler("async", 2, 2).run([0, 1, 2, 3], rec3.launch, rec3.on_done)
    assert free.makespan_s < barrier.makespan_s
    assert free.utilisation > barrier.utilisation


def test_generation_queues_within_a_generation(ray_local):
    # 3 attempts per generation, 2 slots: the third waits for a slot, not for the generation
    rec = Recorder(ray_local, 2, {0: 0.25})
    stats = AttemptScheduler("generation", 2, 3).run(list(range(6)), rec.launch, rec.on_done)
    t = by_attempt(stats)
    assert rec.max_in_flight == 2 and max_overlap(stats) <= 2
    assert t[2].start < t[0].end                           # took attempt 1's slot
    assert min(t[a].start for a in (3, 4, 5)) >= max(t[a].end for a in (0, 1, 2))
    assert [g for _, g in rec.launched] == [1, 1, 1, 2, 2, 2]


def test_on_done_receives_exceptions(ray_local):
    rec = Recorder(ray_local, 2, {}, fail={1})

    def launch(attempt, generation):
        if attempt == 3:
            raise RuntimeError("no parent")   # a launch that fails is a failed attempt
        return rec.launch(attempt, generation)

    def on_done(attempt, result):
        if attempt != 3:
            rec.on_done(attempt, result)
        else:
            rec.done.append((attempt, result))

    stats = AttemptScheduler("async", 2, 2).run([0, 1, 2, 3], launch, on_done)
    results = dict(rec.done)
    assert sorted(results) == [0, 1, 2, 3] and len(stats.timings) == 4
    assert isinstance(results[1], ValueError) and "attempt failed" in str(results[1])
    assert isinstance(results[3], RuntimeError)
    assert results[0] == pytest.approx(0.01)


@pytest.mark.parametrize("mode", ["async", "generation"])
def test_resume_style_indices(ray_local, mode):
    # resumed attempts 5 and 7 re-launched first, then the new ones; apg = 2
    rec = Recorder(ray_local, 2, {})
    stats = AttemptScheduler(mode, 2, 2).run([7, 5, 8, 9, 10], rec.launch, rec.on_done)
    assert sorted(a for a, _ in rec.done) == [5, 7, 8, 9, 10]
    gens = dict(rec.launched)
    assert gens == {5: 3, 7: 4, 8: 5, 9: 5, 10: 6}
    order = [a for a, _ in rec.launched]
    if mode == "async":
        assert order == [7, 5, 8, 9, 10]
    else:   # one generation after another
        assert order == [5, 7, 8, 9, 10]
        t = by_attempt(stats)
        assert t[7].start >= t[5].end and t[8].start >= t[7].end and t[10].start >= t[9].end
    assert {x.generation for x in stats.timings} == {3, 4, 5, 6}


def test_empty_and_invalid():
    s = AttemptScheduler("async", 3, 2).run([], lambda a, g: None, lambda a, r: None)
    assert s.makespan_s == 0 and s.utilisation == 0 and s.timings == []
    with pytest.raises(ValueError, match="mode"):
        AttemptScheduler("barrier", 2, 2)
    with pytest.raises(ValueError):
        AttemptScheduler("async", 0, 2)
    with pytest.raises(ValueError, match="duplicate"):
        AttemptScheduler("async", 2, 2).run([1, 1], lambda a, g: None, lambda a, r: None)


def test_an_attempt_whose_worker_was_lost_is_reissued(ray_local):
    rec = Recorder(ray_local, 2, {})
    lost = {1}

    def on_done(attempt: int, result):
        rec.on_done(attempt, result)
        if attempt in lost:               # the first run of attempt 1 lost its worker
            lost.discard(attempt)
            return REISSUE
    AttemptScheduler("async", 2, 2).run([0, 1, 2], rec.launch, on_done)
    assert [a for a, _ in rec.launched].count(1) == 2 and sorted(a for a, _ in rec.done) == [0, 1, 1, 2]
    assert rec.max_in_flight <= 2
