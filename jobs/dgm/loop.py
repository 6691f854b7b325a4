"""The Darwin Gödel Machine driver: an open-ended archive of coding agents, grown asynchronously.

    archive ← {initial agent, evaluated on all tasks}
    for each attempt (whenever a worker frees up, or per generation with the barrier):
        parent ← select(archive)                       # score_child_prop by default
        issue  ← diagnose(parent's code, one of its failures)
        child  ← parent + the patch the parent writes for that issue (in a sandbox)
        score  ← staged evaluation of the child (in sandboxes)
        archive.add(child) — admitted if it runs and solves a task; kept as rejected otherwise

The archive is rewritten atomically after every attempt; each attempt's parent is recorded before
it starts. A stopped run resumes by re-running exactly the attempts that were started but never
reached the archive — with the same parent and child id — so no agent is lost or duplicated.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from actors.sandbox import SandboxLimits
from jobs.dgm.attempt import AgentSettings, AttemptResult, AttemptSpec, TaskOutcome, pick_failure
from jobs.dgm.scheduler import REISSUE, AttemptScheduler
from actors.calls import describe, wait_for_restart
from jobs.dgm.selection import select_parents
from jobs.dgm.tasks import CodeTask, humaneval_tasks, read_tree, repo_tasks
from jobs.dgm.archive import Archive, ArchiveRow
from services.run_store import RunStore, atomic_write_text

SEED_AGENT = Path(__file__).parent / "seed_agent"
INITIAL = "initial"


class BudgetSpent(RuntimeError):
    """The run's gateway budget is used up: no new attempt starts (none is recorded as failed)."""


def budget_left(gateway_cfg, usage: dict) -> str | None:
    """None while the run may still call the model, else which budget is spent."""
    # the gateway reserves each request's worst case, so spend stops short of a budget: a request
    # it turned away for not fitting (refused_*) means the budget is as good as spent
    tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    if gateway_cfg.max_tokens is not None and (tokens >= gateway_cfg.max_tokens
                                               or usage.get("refused_tokens")):
        return f"token budget spent ({tokens} of {gateway_cfg.max_tokens})"
    cost = usage.get("cost_usd", 0.0)
    if gateway_cfg.max_cost_usd is not None and (cost >= gateway_cfg.max_cost_usd
                                                 or usage.get("refused_cost")):
        return f"cost budget spent (${cost:.4f} of ${gateway_cfg.max_cost_usd})"
    return None


def load_tasks(cfg) -> tuple[list[CodeTask], list[CodeTask]]:
    """The fixed stage-1 and stage-2 task lists (the same for every agent, so scores compare)."""
    t = cfg.tasks
    tasks = (humaneval_tasks(t.ids, cfg.sandbox.test_timeout_s) if t.benchmark == "humaneval"
             else repo_tasks(t.path))
    if t.benchmark == "repo" and t.ids:
        keep = set(t.ids)
        tasks = [x for x in tasks if x.task_id in keep]
    if t.shuffle_seed is not None:
        random.Random(t.shuffle_seed).shuffle(tasks)
    if len(tasks) < t.stage1:
        raise ValueError(f"tasks.stage1 = {t.stage1} but only {len(tasks)} tasks are available")
    return tasks[:t.stage1], tasks[t.stage1:t.stage1 + t.stage2]


def agent_limits(sandbox_cfg) -> SandboxLimits:
    """One agent run's limits (``timeout_s`` is the agent's wall time) from ``sandbox:``."""
    s = sandbox_cfg
    return SandboxLimits(timeout_s=s.agent_timeout_s, memory_mb=s.memory_mb, pids=s.pids,
                         cpus=s.cpus, disk_mb=s.disk_mb)


def child_id(attempt: int) -> str:
    return f"a{attempt:04d}"


class DGMLoop:
    def __init__(self, cfg, store: RunStore, progress, export, workers: list, gateway_url: str,
                 token: str, usage=None, on_event=None):
        self.cfg, self.store, self.progress, self.export = cfg, store, progress, export
        self.on_event = on_event or store.event     # the driver's: events.jsonl, metrics, a note
        self.workers, self.free = workers, list(workers)
        self.busy: dict[int, object] = {}
        self.stage1, self.stage2 = load_tasks(cfg)
        self.tasks = {t.task_id: t for t in self.stage1 + self.stage2}
        self.seed_dir = Path(cfg.agent.seed_dir) if cfg.agent.seed_dir else SEED_AGENT
        self.archive = Archive.load(store.root / "archive.parquet")
        self.usage = usage or (lambda: {})
        self.files_cache: dict[str, dict[str, str]] = {}
        self.stopped = ""
        self.scheduler: AttemptScheduler | None = None
        self.retried: dict[int, int] = {}
        self.started = self.read_started_attempts()
        a = cfg.agent
        self.settings = AgentSettings(
            gateway_url, token, a.model, a.max_steps, a.max_tokens, a.temperature,
            agent_limits(cfg.sandbox), cfg.sandbox.test_timeout_s, cfg.loop.diagnosis_model,
            cfg.loop.diagnosis_max_tokens)

    # --- agents and their evaluations --------------------------------------------------------

    def agent_files(self, agent_id: str) -> dict[str, str]:
        if agent_id not in self.files_cache:
            with tempfile.TemporaryDirectory() as d:
                dest = Path(d) / "agent"
                self.archive.materialize(agent_id, self.seed_dir, dest)
                self.files_cache[agent_id] = read_tree(dest)
        return self.files_cache[agent_id]

    def evals_path(self, agent_id: str) -> Path:
        return self.store.root / "evals" / f"{agent_id}.json"

    def save_evals(self, agent_id: str, outcomes: list[TaskOutcome], extra: dict) -> None:
        self.evals_path(agent_id).parent.mkdir(exist_ok=True)
        atomic_write_text(self.evals_path(agent_id), json.dumps(
            {"outcomes": [asdict(o) for o in outcomes], **extra}, indent=1))

    def load_evals(self, agent_id: str) -> list[dict]:
        p = self.evals_path(agent_id)
        return json.loads(p.read_text())["outcomes"] if p.exists() else []

    # --- the initial agent -------------------------------------------------------------------

    def evaluate_initial(self) -> None:
        import ray
        self.progress.note(f"evaluating the initial agent on {len(self.stage1) + len(self.stage2)} tasks …")
        t0 = time.monotonic()
        files, tasks = read_tree(self.seed_dir), self.stage1 + self.stage2
        parts = [tasks[i::len(self.workers)] for i in range(len(self.workers))]   # all workers help
        done = ray.get([w.evaluate.remote(files, part, self.settings)
                        for w, part in zip(self.workers, parts) if part])
        by_id = {o.task_id: o for part in done for o in part}
        outcomes = [by_id[t.task_id] for t in tasks]
        solved = sum(o.passed for o in outcomes)
        self.save_evals(INITIAL, outcomes, {})
        self.archive.add(ArchiveRow(
            INITIAL, None, 0, "admitted", solved / len(outcomes), "stage2" if self.stage2 else "stage1",
            len(outcomes), "", n_solved=solved, attempt=None, wall_s=time.monotonic() - t0,
            detail="the seed agent"))
        self.log_attempt(None, INITIAL, "admitted", solved / len(outcomes), time.monotonic() - t0)

    # --- attempts ----------------------------------------------------------------------------

    def read_started_attempts(self) -> dict[int, dict]:
        """attempt → its ``attempt_started`` event, for every attempt ever launched; read once
        from events.jsonl at start, then kept up to date by :meth:`launch`."""
        path = self.store.root / "events.jsonl"
        started = {}
        if path.exists():
            for line in path.read_text().splitlines():
                ev = json.loads(line)
                if ev.get("event") == "attempt_started":
                    started[ev["attempt"]] = ev
        return started

    def launch(self, attempt: int, generation: int):
        spent = budget_left(self.cfg.gateway, self.usage() or {})
        if spent:
            raise BudgetSpent(spent)
        started = self.started.get(attempt)
        rng = random.Random(f"{self.cfg.loop.seed}:{attempt}")
        if started:    # a resumed attempt keeps its parent: the same child, not a second one
            parent, failed_id = started["parent"], started.get("failed_task")
            evals = self.load_evals(parent)
        else:
            lp = self.cfg.loop
            parent = select_parents(self.archive.candidates(), 1, lp.selection, rng,
                                    lp.selection_lambda, lp.selection_alpha0)[0]
            evals = self.load_evals(parent)
            failure = pick_failure(evals, rng)
            failed_id = failure["task_id"] if failure else None
            self.started[attempt] = self.store.event(
                "attempt_started", len(self.archive), attempt=attempt, generation=generation,
                parent=parent, child=child_id(attempt), failed_task=failed_id)
        failed = next((TaskOutcome(**o) for o in evals if o["task_id"] == failed_id), None)
        spec = AttemptSpec(attempt, generation, child_id(attempt), parent, self.agent_files(parent),
                           failed, self.tasks.get(failed_id), self.stage1, self.stage2,
                           self.cfg.tasks.threshold, self.settings)
        worker = self.free.pop()
        self.busy[attempt] = worker
        return worker.attempt.remote(spec)

    def on_done(self, attempt: int, result) -> None:
        if isinstance(result, BudgetSpent):   # never launched: not an agent, not an error
            if not self.stopped:
                self.stopped = str(result)
                self.store.event("budget_spent", len(self.archive) - 1, detail=str(result))
                self.progress.note(f"stopping: {result}; raise it in {self.store.root}/config.yaml and "
                                   f"`evoray resume {self.store.root}` to go on")
            return
        if self.lost_worker(attempt, result):
            return REISSUE
        self.free.append(self.busy.pop(attempt))
        ev = self.started[attempt]
        if isinstance(result, AttemptResult):
            r = result
            row = ArchiveRow(r.child_id, ev["parent"], ev["generation"], r.status, r.score, r.stage,
                             r.n_tasks, r.patch, n_solved=r.n_solved, attempt=attempt,
                             wall_s=r.wall_s, detail=r.detail[:500])
            # the diagnosis and the parent's transcript of its self-edit: why this child exists
            self.save_evals(r.child_id, r.outcomes, {"issue": r.issue,
                                                     "self_improve_log": r.self_improve_log})
        else:   # the attempt itself failed (a crash, a lost worker): recorded, never retried silently
            row = ArchiveRow(child_id(attempt), ev["parent"], ev["generation"], "error", 0.0, "none",
                             0, "", attempt=attempt, detail=f"{type(result).__name__}: {result}"[:500])
        self.archive.add(row)
        self.log_attempt(attempt, row.agent_id, row.status, row.score, row.wall_s,
                         parent=row.parent_id, detail=row.detail, stage=row.stage)

    def lost_worker(self, attempt: int, result) -> bool:
        """A worker actor died mid-attempt: wait for its restart and have the attempt re-issued
        (same parent, same child id), up to ``ray.max_retries`` times."""
        import ray
        if not isinstance(result, ray.exceptions.RayActorError) or \
                self.retried.get(attempt, 0) >= self.cfg.ray.max_retries:
            return False
        self.retried[attempt] = self.retried.get(attempt, 0) + 1
        worker = self.busy.pop(attempt)
        self.on_event("actor_restarted", role="sandbox", actor=f"{self.store.name}:sandbox-{self.workers.index(worker)}",
                      attempt=attempt, retry=self.retried[attempt], error=describe(result))
        wait_for_restart(worker, self.cfg.ray.placement_timeout_s, probe="backend")
        self.free.append(worker)
        return True

    def log_attempt(self, attempt, agent_id: str, status: str, score: float, wall_s: float,
                    parent=None, detail="", stage="") -> None:
        step = len(self.archive) - 1
        admitted = self.archive.admitted()
        best = max(admitted, key=lambda r: r.score)
        usage = self.usage() or {}
        values = {"dgm/best_score": best.score, "dgm/archive_size": float(len(admitted)),
                  "dgm/attempts": float(step), "dgm/child_score": score,
                  "dgm/admitted": float(status == "admitted"),
                  "gen/success_rate": (len(admitted) - 1) / step if step else 0.0,
                  "dgm/attempt_s": wall_s, "gateway/tokens":
                      float(usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)),
                  "gateway/cost_usd": float(usage.get("cost_usd", 0.0))}
        if self.scheduler is not None:
            values |= {"sandbox/queue_depth": float(self.scheduler.waiting),
                       "sandbox/running": float(self.scheduler.running)}
        self.store.log(step, values)
        self.store.flush_metrics()
        self.store.event("attempt_done" if attempt is not None else "initial_evaluated", step,
                         attempt=attempt, agent=agent_id, parent=parent, status=status,
                         score=score, stage=stage, detail=detail)
        self.export(values)
        where = f"{parent} → {agent_id}" if parent else agent_id
        why = f"  ({detail[:70]})" if detail and status != "admitted" else ""
        self.progress.console.print(
            f"attempt {step:4d}  {where:<18} {status:<9} score {score:.2f} {stage:<7} "
            f"{wall_s:6.1f}s  | archive {len(admitted)}  best {best.score:.2f} ({best.agent_id})"
            f"  tokens {values['gateway/tokens']:.0f}{why}", highlight=False, soft_wrap=True)
        self.progress.tick(step)

    # --- the run -----------------------------------------------------------------------------

    def todo(self) -> list[int]:
        """Interrupted attempts first (same parents), then the ones never started."""
        done = {r.attempt for r in self.archive.rows if r.attempt is not None}
        resumed = sorted(a for a in self.started if a not in done)
        fresh = [a for a in range(self.cfg.loop.attempts) if a not in done and a not in self.started]
        return resumed + fresh

    def run(self) -> None:
        if INITIAL not in self.archive:
            self.evaluate_initial()
        todo = self.todo()
        lp = self.cfg.loop
        self.progress.start(lp.attempts, lp.attempts - len(todo))
        self.store.event("run_started", len(self.archive) - 1, attempts_left=len(todo), mode=lp.mode,
                         workers=len(self.workers), resumed=[a for a in todo if a in self.started])
        try:
            self.scheduler = AttemptScheduler(lp.mode, len(self.workers), lp.attempts_per_generation)
            stats = self.scheduler.run(todo, self.launch, self.on_done)
        finally:
            self.progress.stop()
        self.store.event("run_done", len(self.archive) - 1, utilisation=stats.utilisation,
                         makespan_s=stats.makespan_s, usage=self.usage())
        if os.environ.get("EVORAY_DEBUG"):
            self.progress.note(f"scheduler: {stats}")
