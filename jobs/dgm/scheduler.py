"""Scheduling DGM self-improvement attempts on Ray.

The reference DGM runs each generation as a batch and waits for its slowest attempt before the
next generation starts (its task timeouts go up to 9 h), so most slots idle most of the time.
``mode="async"`` keeps every slot busy instead: as soon as one attempt finishes, its result goes
into the archive (``on_done``) and the next attempt is launched, choosing its parent from the
archive as it is at that moment. ``mode="generation"`` keeps the paper's barrier for comparison.

The scheduler knows nothing about agents: ``launch(attempt, generation)`` starts one attempt and
returns its ObjectRef, ``on_done(attempt, result)`` consumes it in the driver.

Generation of attempt a (0-based), in both modes: g(a) = ⌊a / attempts_per_generation⌋ + 1.
Utilisation: busy_s / (workers · makespan_s), busy_s = Σ (end − start) over attempts.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

MODES = ("async", "generation")


@dataclass
class AttemptTiming:
    """Seconds since the scheduler's start; ``end`` is when the driver saw the result."""
    attempt: int
    generation: int
    worker: int
    start: float
    end: float


@dataclass
class SchedulerStats:
    mode: str
    workers: int
    makespan_s: float
    busy_s: float
    utilisation: float
    timings: list[AttemptTiming] = field(default_factory=list)


@dataclass
class _Running:
    attempt: int
    generation: int
    worker: int
    start: float


class AttemptScheduler:
    def __init__(self, mode: Literal["async", "generation"], workers: int,
                 attempts_per_generation: int):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if workers < 1 or attempts_per_generation < 1:
            raise ValueError("workers and attempts_per_generation must be >= 1, got "
                             f"{workers} and {attempts_per_generation}")
        self.mode = mode
        self.workers = workers
        self.attempts_per_generation = attempts_per_generation
        self.waiting = 0     # attempts ready to run with no free worker: the sandbox queue depth
        self.running = 0

    def generation(self, attempt: int) -> int:
        """g(a) = ⌊a / attempts_per_generation⌋ + 1."""
        return attempt // self.attempts_per_generation + 1

    def batches(self, attempts: list[int]) -> list[list[int]]:
        """The groups that run without a barrier between them: everything at once in ``async``
        (in the given order, so resumed attempts go first); one group per generation in
        ``generation``, generations in increasing order, the given order within each."""
        if self.mode == "async":
            return [list(attempts)] if attempts else []
        groups: dict[int, list[int]] = {}
        for a in attempts:
            groups.setdefault(self.generation(a), []).append(a)
        return [groups[g] for g in sorted(groups)]

    def run(self, attempts: list[int], launch: Callable[[int, int], Any],
            on_done: Callable[[int, Any], None]) -> SchedulerStats:
        """Run ``attempts`` (0-based indices, any order, no duplicates) with at most ``workers``
        in flight. A failed attempt reaches ``on_done`` as its exception object; an exception
        raised by ``on_done`` itself propagates (the caller's bug, not the attempt's)."""
        if len(set(attempts)) != len(attempts):
            raise ValueError(f"duplicate attempt indices in {attempts}")
        t0 = time.monotonic()
        timings: list[AttemptTiming] = []
        for batch in self.batches(list(attempts)):
            timings += self._run_pool(batch, launch, on_done, t0)
        makespan = max((t.end for t in timings), default=0.0)
        busy = sum(t.end - t.start for t in timings)
        util = busy / (self.workers * makespan) if makespan > 0 else 0.0
        return SchedulerStats(self.mode, self.workers, makespan, busy, util,
                              sorted(timings, key=lambda t: t.start))

    def _run_pool(self, batch: list[int], launch: Callable[[int, int], Any],
                  on_done: Callable[[int, Any], None], t0: float) -> list[AttemptTiming]:
        """Keep up to ``workers`` of ``batch`` in flight until all have finished."""
        import ray
        queue = list(reversed(batch))           # pop() from the end = the batch's order
        free = list(range(self.workers))        # a heap: the lowest free slot is taken first
        running: dict[Any, _Running] = {}
        done: list[AttemptTiming] = []
        while queue or running:
            while queue and free:
                attempt = queue.pop()
                slot = heapq.heappop(free)
                gen, start = self.generation(attempt), time.monotonic() - t0
                try:
                    ref = launch(attempt, gen)
                except Exception as e:         # a launch that fails is a failed attempt
                    heapq.heappush(free, slot)
                    done.append(AttemptTiming(attempt, gen, slot, start, time.monotonic() - t0))
                    on_done(attempt, e)
                    continue
                running[ref] = _Running(attempt, gen, slot, start)
            self.waiting, self.running = len(queue), len(running)
            if not running:
                continue
            [ref], _ = ray.wait(list(running), num_returns=1)
            info = running.pop(ref)
            end = time.monotonic() - t0
            heapq.heappush(free, info.worker)
            done.append(AttemptTiming(info.attempt, info.generation, info.worker, info.start, end))
            if on_done(info.attempt, _result(ref)) is REISSUE:   # its worker was lost: run it again
                queue.append(info.attempt)
        return done


REISSUE = "reissue"     # what ``on_done`` returns for an attempt that must run again


def _result(ref: Any) -> Any:
    """The task's value, or the exception it raised (Ray's RayTaskError subclasses the original
    exception type, so ``isinstance(result, ValueError)`` still works for the caller)."""
    import ray
    try:
        return ray.get(ref)
    except Exception as e:
        return e
