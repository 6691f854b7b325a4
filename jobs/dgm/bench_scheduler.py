"""``evoray bench dgm-scheduler``: the DGM attempt scheduler, generation barrier vs async.

Attempts are simulated by real Ray tasks that sleep; attempt i sleeps the same time in both modes.
Durations are heavy-tailed like real evaluations (a few tasks run to the timeout):

    dᵢ = min(timeout_s, median_s · exp(σ·zᵢ)),  zᵢ ~ N(0, 1) from ``--seed``, σ = 1,

so the median is ``median_s``. Both modes use ``workers`` slots and attempts_per_generation =
workers (one generation fills the slots exactly once, as in the paper's batch).
"""
from __future__ import annotations

import argparse
import functools
import math
import platform
import random
import time
from dataclasses import asdict
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

from jobs.dgm.scheduler import MODES, AttemptScheduler, SchedulerStats

SIGMA = 1.0


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=4, help="attempt slots (default 4)")
    parser.add_argument("--attempts", type=int, default=32, help="attempts in all (default 32)")
    parser.add_argument("--median-s", type=float, default=0.5,
                        help="median simulated attempt duration in seconds (default 0.5)")
    parser.add_argument("--timeout-s", type=float, default=5.0,
                        help="cap on one attempt's duration, like a task timeout (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results", help="directory for the JSON result")


def durations(n: int, median_s: float, timeout_s: float, seed: int) -> list[float]:
    """dᵢ = min(timeout_s, median_s · exp(σ·zᵢ)) — lognormal(ln median_s, σ), capped."""
    rng = random.Random(seed)
    return [min(timeout_s, rng.lognormvariate(math.log(median_s), SIGMA)) for _ in range(n)]


@functools.lru_cache(maxsize=None)
def _sleep_task():
    import ray

    @ray.remote(num_cpus=0)   # sleeping needs no CPU; slots, not cores, bound concurrency here
    def simulated_attempt(seconds: float) -> float:
        time.sleep(seconds)
        return seconds
    return simulated_attempt


def run_mode(mode: str, workers: int, durs: list[float]) -> SchedulerStats:
    task = _sleep_task()
    sched = AttemptScheduler(mode, workers, attempts_per_generation=workers)
    return sched.run(list(range(len(durs))), lambda a, g: task.remote(durs[a]),
                     lambda a, r: None)


def _warm_up(workers: int) -> None:
    """Start the worker processes before timing: the first task on a new worker pays for it."""
    import ray
    task = _sleep_task()
    ray.get([task.remote(0.2) for _ in range(workers)])


def _stats_json(s: SchedulerStats, n: int) -> dict:
    d = asdict(s)
    d["attempts_per_min"] = 60.0 * n / s.makespan_s if s.makespan_s > 0 else 0.0
    return d


def _table(args, stats: dict[str, dict]) -> Table:
    table = Table(title=f"DGM attempt scheduler: {args.attempts} simulated attempts, median "
                        f"{args.median_s:g} s, timeout {args.timeout_s:g} s")
    for col in ("mode", "workers", "attempts", "makespan s", "busy s", "utilisation %",
                "attempts/min"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, s in stats.items():
        table.add_row(mode, str(s["workers"]), str(args.attempts), f"{s['makespan_s']:.2f}",
                      f"{s['busy_s']:.2f}", f"{100 * s['utilisation']:.1f}",
                      f"{s['attempts_per_min']:.1f}")
    return table


def run(args) -> int:
    """Both modes on the same duration list; prints a table, writes ``dgm-scheduler.json``."""
    from services.bench import write_result
    from services.config import RayConfig
    from services.controller import start_ray

    if args.workers < 1 or args.attempts < 1 or args.median_s <= 0 or args.timeout_s <= 0:
        raise ValueError("--workers, --attempts, --median-s and --timeout-s must be positive")
    console = Console()
    if not console.is_terminal:   # logs and pipes: the whole table, not ellipsised headers
        console = Console(width=max(console.width, 110))
    start_ray(RayConfig())
    durs = durations(args.attempts, args.median_s, args.timeout_s, args.seed)
    _warm_up(args.workers)
    stats = {mode: _stats_json(run_mode(mode, args.workers, durs), args.attempts)
             for mode in MODES}
    ideal = max(sum(durs) / args.workers, max(durs))
    result = {
        "benchmark": "dgm-scheduler", "date": datetime.now(timezone.utc).isoformat(),
        "config": {"workers": args.workers, "attempts": args.attempts,
                   "attempts_per_generation": args.workers, "median_s": args.median_s,
                   "timeout_s": args.timeout_s, "sigma": SIGMA, "seed": args.seed},
        "modes": stats,
        "speedup_async_vs_generation": stats["generation"]["makespan_s"]
                                       / max(stats["async"]["makespan_s"], 1e-9),
        "lower_bound_makespan_s": ideal, "total_work_s": sum(durs),
        "durations": durs, "host": platform.node(),
    }
    console.print(_table(args, stats))
    console.print(f"async vs generation barrier: {result['speedup_async_vs_generation']:.2f}x "
                  f"faster (lower bound on makespan {ideal:.2f} s)")
    console.print(f"wrote {write_result(args.out, 'dgm-scheduler', result)}")
    return 0
