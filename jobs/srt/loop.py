"""The SRT driver: sample → self-reward → GRPO step → weight sync → evaluate → checkpoint.

Reads top to bottom as the algorithm; the Ray plumbing lives in ``services/controller.py``, the
maths in ``jobs/srt/rewards.py`` and ``actors/grpo.py``, the mitigations in ``mitigations.py``.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from actors.grpo import ADVANTAGE_ESTIMATORS
from actors.learner import Sample
from actors.sampler import Completion, SamplingParams
from jobs.srt.rewards import EQUIVALENCES, extract_answer, grade_groups, ground_truth_rewards, majority_vote
from jobs.srt.mitigations import (CollapseDetector, EarlyStopping, easiest_fraction, in_batch_keep,
                                  prompt_echo_share, top_answer_share)
from jobs.srt.roles import Roles
from jobs.srt.splits import Splits, build_splits, file_splits, generated_splits, split_sizes  # noqa: F401 (MM-UPT's)
from services.progress import StepProgress
from services.run_store import RunStore, atomic_write


@dataclass
class LoopState:
    step: int = 0
    early: Optional[dict] = None
    collapse: Optional[dict] = None
    train_ids: list[str] = field(default_factory=list)   # after the offline curriculum
    stopped: Optional[str] = None


def prompt_of(task: dict) -> str | dict:
    """What the sampler gets for a task: its prompt, with its image when it has one (MM-UPT)."""
    return {"text": task["prompt"], "image": task["image"]} if task.get("image") else task["prompt"]


def groups_of(completions: list[Completion], n: int) -> list[list[Completion]]:
    """Completions in prompt order, n per prompt → one list per prompt."""
    return [completions[i:i + n] for i in range(0, len(completions), n)]


@dataclass
class ScoredGroup:
    task: dict
    completions: list[Completion]
    answers: list[Optional[str]]
    rewards: list[float]
    majority: Optional[str]
    share: float
    skipped: bool
    advantages: Optional[list[float]] = None     # set when the group is trained on
    is_weights: Optional[list[float]] = None     # async: each sample's truncated IS weight

    def rows(self, step: int, learner_version: int) -> list[dict]:
        """One row per sample for ``samples/``; ``staleness``: policy versions it lagged behind the
        learner that trained on it."""
        return [{"step": step, "prompt_id": self.task["id"], "prompt": self.task["prompt"], "sample": j,
                 "text": c.text, "answer": self.answers[j], "finished": c.finished,
                 "n_tokens": len(c.token_ids), "reward": self.rewards[j],
                 "advantage": self.advantages[j] if self.advantages else 0.0,
                 "trained": self.advantages is not None, "majority": self.majority,
                 "policy_version": c.policy_version, "staleness": learner_version - c.policy_version,
                 "is_weight": self.is_weights[j] if self.is_weights else None}
                for j, c in enumerate(self.completions)]


def step_metrics(scored: list[ScoredGroup], equal) -> dict[str, float]:
    completions = [c for g in scored for c in g.completions]
    answers = [a for g in scored for a in g.answers]
    rewards = [r for g in scored for r in g.rewards]
    values = {
        "train/pseudo_reward": sum(rewards) / len(rewards),
        "train/majority_agreement": sum(g.share for g in scored) / len(scored),
        "train/answered": sum(a is not None for a in answers) / len(answers),
        "train/finished": sum(c.finished for c in completions) / len(completions),
        "train/mean_tokens": sum(len(c.token_ids) for c in completions) / len(completions),
        "collapse/top_answer_share": top_answer_share([g.majority for g in scored]),
        "collapse/prompt_echo_share": prompt_echo_share([g.majority for g in scored],
                                                        [g.task["prompt"] for g in scored]),
    }
    labelled = [g for g in scored if g.task["answer"] is not None]
    if labelled:  # monitoring only: labels never reach the reward unless reward.kind is ground_truth
        truth = [x for g in labelled for x in ground_truth_rewards(g.answers, g.task["answer"], equal)]
        values["train/true_reward"] = sum(truth) / len(truth)
    return values


class SRTLoop:
    def __init__(self, cfg, roles: Roles, store: RunStore, progress: StepProgress, metrics_sink):
        self.cfg, self.roles, self.store, self.progress = cfg, roles, store, progress
        self.export = metrics_sink
        self.splits = self.load_splits()
        self.equal = EQUIVALENCES[cfg.reward.equivalence]
        self.early = EarlyStopping(cfg.early_stopping.patience, cfg.early_stopping.min_delta)
        c = cfg.collapse
        self.collapse = CollapseDetector(c.window, c.reward_rise, c.dominance, c.heldout_drop, c.echo)
        self.labels: dict[str, str] = {}      # offline pseudo-labels by task id
        self.pending: dict = {}               # async: step → its generation, launched ahead
        self.state = LoopState()

    # --- helpers ----------------------------------------------------------------------------------

    def load_splits(self) -> Splits:
        return build_splits(self.cfg)

    def answer(self, c: Completion, require_finished: Optional[bool] = None) -> Optional[str]:
        r = self.cfg.reward
        return extract_answer(c.text, c.finished, r.extraction,
                              r.require_finished if require_finished is None else require_finished)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.store.log(step, values)
        self.export(values)

    def batch_for(self, step: int) -> list[dict]:
        """The step's prompts: epochs over the training tasks, each in a seeded shuffled order."""
        keep = set(self.state.train_ids)
        pool = [t for t in self.splits.train if t["id"] in keep]
        k = self.cfg.train.prompts_per_step
        first = (step - 1) * k
        batch = []
        for i in range(first, first + k):
            epoch, pos = divmod(i, len(pool))
            order = list(range(len(pool)))
            random.Random(self.cfg.train.seed * 7919 + epoch).shuffle(order)
            batch.append(pool[order[pos]])
        return batch

    def params(self, n: int, temperature: float, seed: int) -> SamplingParams:
        return SamplingParams(n=n, temperature=temperature, top_p=self.cfg.sampling.top_p,
                              max_new_tokens=self.cfg.sampling.max_new_tokens, seed=seed)

    def sample_groups(self, tasks: list[dict], n: int, temperature: float, seed: int):
        return groups_of(self.roles.generate([prompt_of(t) for t in tasks], self.params(n, temperature, seed)), n)

    def rollouts(self, step: int, tasks: list[dict]) -> list[list[Completion]]:
        """The step's samples for its ``tasks``. Synchronous: generated now by the current policy.
        Asynchronous: launched ``max_staleness`` steps ahead, so step k+1 generates while step k
        trains."""
        t, s = self.cfg.train, self.cfg.sampling
        seed = lambda k: t.seed * 1_000_003 + k
        if t.mode == "sync":
            return self.sample_groups(tasks, s.n, s.temperature, seed(step))
        launch = lambda k, batch: self.roles.launch([prompt_of(x) for x in batch],
                                                    self.params(s.n, s.temperature, seed(k)))
        pending = self.pending.pop(step, None) or launch(step, tasks)
        for ahead in range(step + 1, min(step + t.max_staleness, t.steps) + 1):
            if ahead not in self.pending:
                self.pending[ahead] = launch(ahead, self.batch_for(ahead))
        return groups_of(self.roles.collect(pending), s.n)

    # --- evaluation -------------------------------------------------------------------------------

    def evaluate(self, step: int) -> dict[str, float]:
        """pass@1 and maj@n on the held-out split (and pass@1 on the validation split). A reply cut
        off by the token limit is never an answer here, whatever the training reward's rule."""
        e = self.cfg.eval
        self.progress.phase(f"evaluate (step {step})" if step == 0 else "evaluate")
        splits = {"heldout": self.splits.heldout, "val": self.splits.val}
        tasks = [t for split in splits.values() for t in split]     # one sampling call for both
        groups = iter(self.sample_groups(tasks, e.n, e.temperature, seed=10_000_000 + step))
        out = {}
        for split, split_tasks in splits.items():
            correct, majority_correct = 0.0, 0.0
            for task, group in zip(split_tasks, groups):
                answers = [self.answer(c, require_finished=True) for c in group]
                correct += sum(ground_truth_rewards(answers, task["answer"], self.equal))
                majority = majority_vote(answers, self.equal).majority
                majority_correct += ground_truth_rewards([majority], task["answer"], self.equal)[0]
            if split_tasks:
                out[f"{split}/pass@1"] = correct / (len(split_tasks) * e.n)
                if split == "heldout":
                    out[f"heldout/maj@{e.n}"] = majority_correct / len(split_tasks)
        return out

    # --- the mitigations' one-off preparation -----------------------------------------------------

    def prepare_base_votes(self) -> None:
        """Offline labels and/or the offline curriculum: K base-model samples per training prompt,
        majority label and share per prompt, stored in ``base_votes.parquet``."""
        need_labels = self.cfg.reward.kind == "offline_labels"
        need_rank = self.cfg.curriculum.mode == "offline"
        self.state.train_ids = [t["id"] for t in self.splits.train]
        if not (need_labels or need_rank):
            return
        self.progress.phase("base-model votes")
        k = max(self.cfg.reward.offline_rollouts if need_labels else 0,
                self.cfg.curriculum.rollouts if need_rank else 0)
        groups = self.sample_groups(self.splits.train, k, self.cfg.sampling.temperature, seed=20_000_000)
        rows = []
        for task, group in zip(self.splits.train, groups):
            vote = majority_vote([self.answer(c) for c in group], self.equal)
            rows.append({"id": task["id"], "prompt": task["prompt"], "label": vote.majority,
                         "share": vote.share, "rollouts": k})
        table = pa.Table.from_pylist(rows)
        atomic_write(self.store.root / "base_votes.parquet", lambda p: pq.write_table(table, p))
        self.labels = {r["id"]: r["label"] for r in rows if r["label"] is not None}
        if need_rank:
            self.state.train_ids = easiest_fraction({r["id"]: r["share"] for r in rows},
                                                    self.cfg.curriculum.keep_fraction)
        self.store.event("base_votes", 0, rollouts=k, labelled=len(self.labels),
                         kept=len(self.state.train_ids))

    def load_base_votes(self) -> None:
        path = self.store.root / "base_votes.parquet"
        if path.exists():
            self.labels = {r["id"]: r["label"] for r in pq.read_table(path).to_pylist() if r["label"]}

    # --- one training step ------------------------------------------------------------------------

    def score(self, tasks: list[dict], groups: list[list[Completion]]) -> list["ScoredGroup"]:
        """Each prompt's samples → answers and rewards, by the configured reward kind; graded on the
        ``sandbox`` role when it has workers, else here (the same ``grade_groups``)."""
        r = self.cfg.reward
        label = lambda t: t["answer"] if r.kind == "ground_truth" else self.labels.get(t["id"])
        payload = [{"texts": [c.text for c in g], "finished": [c.finished for c in g], "label": label(t)}
                   for t, g in zip(tasks, groups)]
        reward = {"kind": r.kind, "extraction": r.extraction, "require_finished": r.require_finished,
                  "equivalence": r.equivalence, "soft": r.soft, "threshold": r.self_consistency_threshold}
        graded = self.roles.grade(payload, reward) if self.roles.graders else grade_groups(payload, reward)
        return [ScoredGroup(t, g, x["answers"], x["rewards"], x["majority"], x["share"], x["skipped"])
                for t, g, x in zip(tasks, groups, graded)]

    def trainable(self, scored: list["ScoredGroup"]) -> list[int]:
        """Groups that carry a learning signal (and pass the in-batch curriculum)."""
        keep = range(len(scored))
        if self.cfg.curriculum.mode == "in_batch":
            keep = in_batch_keep([g.share for g in scored], self.cfg.curriculum.keep_fraction)
        uniform = lambda g: self.cfg.train.skip_uniform_groups and len(set(g.rewards)) == 1
        return [i for i in keep if not scored[i].skipped and not uniform(scored[i])]

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        tasks = self.batch_for(step)
        t0 = time.perf_counter()
        self.progress.phase("generate")
        groups = self.rollouts(step, tasks)
        t_gen = time.perf_counter() - t0
        self.progress.phase("grade")
        scored = self.score(tasks, groups)
        learner_version = self.roles.version
        stale = [i for i, g in enumerate(groups)
                 if max(learner_version - c.policy_version for c in g) > cfg.train.max_staleness]
        used = [i for i in self.trainable(scored) if i not in stale]
        estimator = ADVANTAGE_ESTIMATORS[cfg.learner.advantage]
        for i in used:   # each group is one prompt's samples
            scored[i].advantages = estimator(torch.tensor(scored[i].rewards)).tolist()
        samples = [Sample(c.prompt_ids, c.token_ids, a, c.logprobs, scored[i].task.get("image"))
                   for i in used for c, a in zip(scored[i].completions, scored[i].advantages)]
        t1 = time.perf_counter()
        self.progress.phase("train")
        learner_stats = self.roles.train(samples) if samples else {}
        t_train = time.perf_counter() - t1
        if "is_weights" in learner_stats:      # back onto the groups they came from, in order
            weights = iter(learner_stats.pop("is_weights"))
            for i in used:
                scored[i].is_weights = [next(weights) for _ in scored[i].completions]
        self.progress.phase("sync")
        sync = self.roles.sync_weights() if samples else {}
        rows = [row for g in scored for row in g.rows(step, learner_version)]
        self.store.write_samples(step, rows)
        values = step_metrics(scored, self.equal)
        values["train/staleness_max"] = float(max(r["staleness"] for r in rows))
        values["train/stale_groups_dropped"] = float(len(stale))
        trained_weights = [r["is_weight"] for r in rows if r["is_weight"] is not None]
        if trained_weights:
            values["train/is_weight_mean"] = sum(trained_weights) / len(trained_weights)
            values["train/is_weight_min"] = min(trained_weights)
        completions = [c for g in groups for c in g]
        values.update({"train/groups_trained": float(len(used)), "time/gen_s": t_gen, "time/train_s": t_train,
                       "throughput/samples_per_s": len(completions) / max(t_gen, 1e-9),
                       "throughput/tokens_per_s": sum(len(c.token_ids) for c in completions) / max(t_gen, 1e-9),
                       "ray/actor_restarts": float(self.roles.restarts)})
        values.update({f"train/{k}": v for k, v in learner_stats.items()})
        values.update(sync)
        majorities, prompts = [g.majority for g in scored], [g.task["prompt"] for g in scored]
        self.check_collapse(step, self.collapse.observe_train(values["train/pseudo_reward"], majorities, prompts))
        return values

    def check_collapse(self, step: int, reason: Optional[str]) -> None:
        """The first time the detector fires: an event, a note, and a stop if configured."""
        if not reason or self.collapse.fired or not self.cfg.collapse.enabled:
            return
        self.collapse.fired = True
        self.store.event("collapse_detected", step, reason=reason)
        self.progress.note(f"[red]collapse detected at step {step}: {reason}")
        if self.cfg.collapse.stop:
            self.state.stopped = f"collapse: {reason}"

    # --- checkpoints ------------------------------------------------------------------------------

    def checkpoint(self, step: int) -> None:
        import ray
        self.progress.phase("checkpoint")
        self.state.step = step
        self.state.early, self.state.collapse = self.early.state(), self.collapse.state()

        def write(tmp: Path) -> None:
            ray.get(self.roles.learner.save.remote(self.store.actor_dir(tmp, "learner")))
            (tmp / "loop_state.json").write_text(json.dumps(self.state.__dict__))

        self.store.flush_metrics()
        best = self.store.best_checkpoint()
        self.store.save_checkpoint(step, write, self.cfg.train.keep_checkpoints,
                                   protect=(best.name,) if best else ())
        self.store.event("checkpoint", step)

    def restore(self) -> int:
        import ray
        ckpt = self.store.latest_checkpoint()
        if ckpt is None:
            raise FileNotFoundError(f"{self.store.root}: no checkpoint to resume from")
        self.state = LoopState(**json.loads((ckpt / "loop_state.json").read_text()))
        self.state.stopped = None     # a stopped run is resumed only when asked for more
        if self.state.early:
            self.early = EarlyStopping(**self.state.early)
        if self.state.collapse:
            self.collapse = CollapseDetector(**self.state.collapse)
        ray.get(self.roles.learner.load.remote(self.store.actor_dir(ckpt, "learner")))
        self.roles.sync_weights()
        self.load_base_votes()
        self.store.truncate_metrics(self.state.step)
        self.store.event("resumed", self.state.step, checkpoint=ckpt.name)
        return self.state.step

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> None:
        cfg = self.cfg
        if resume:
            start = self.restore()
        else:
            start = 0
            self.store.event("run_started", 0, name=cfg.name)
            # the counts the check printed before Ray started, for the record
            self.store.event("data", 0, **split_sizes(self.splits), source=cfg.data.source)
            self.progress.start(cfg.train.steps, 0)         # step 0's evaluation inside the bar
            base = self.evaluate(0)
            self.log(0, base)
            self.progress.line(0, base)
            self.prepare_base_votes()
            self.after_eval(0, base)
            self.checkpoint(0)
            self.keep_if_best(0)
        self.progress.start(cfg.train.steps, start)
        for step in range(start + 1, cfg.train.steps + 1):
            t0 = time.perf_counter()
            values = self.train_step(step)
            last = step == cfg.train.steps
            if step % cfg.eval.every == 0 or last:
                ev = self.evaluate(step)
                values.update(ev)
                self.after_eval(step, ev)
            values["time/step_s"] = time.perf_counter() - t0
            self.log(step, values)
            self.progress.advance(step, values)
            if step % cfg.train.checkpoint_every == 0 or last or self.state.stopped \
                    or self.early.best_step == step:
                self.checkpoint(step)
                self.keep_if_best(step)
            if self.state.stopped:
                self.store.event("early_stop" if not self.state.stopped.startswith("collapse") else "stopped",
                                 step, reason=self.state.stopped)
                self.progress.note(f"[yellow]stopping at step {step}: {self.state.stopped}")
                break
        self.progress.stop()
        self.store.flush_metrics()
        if self.state.step == cfg.train.steps and self.store.latest_checkpoint():
            # every step is done: resuming has nothing left to run, so no optimizer state is kept
            self.store.drop_resume_state(self.store.latest_checkpoint())
            self.store.sync()
        self.store.event("run_finished", self.state.step, stopped=self.state.stopped)

    def keep_if_best(self, step: int) -> None:
        """Point ``checkpoints/best`` at this step's checkpoint if its evaluation is the best yet."""
        if self.early.best_step == step:
            self.store.mark_best(step, keep=self.cfg.train.keep_checkpoints)
            self.store.event("best_checkpoint", step, value=self.early.best,
                             metric=getattr(self, "best_metric", self.cfg.early_stopping.metric))

    def after_eval(self, step: int, ev: dict[str, float]) -> None:
        self.check_collapse(step, self.collapse.observe_heldout(ev["heldout/pass@1"]))
        # what picks checkpoints/best (and the report's "best"): early_stopping.metric (val/pass@1)
        # when the run has it, else held-out pass@1 (a run without a validation split)
        metric = self.cfg.early_stopping.metric if self.cfg.early_stopping.metric in ev else "heldout/pass@1"
        self.best_metric = metric
        improved, stop = self.early.update(step, ev[metric])
        if stop and self.cfg.early_stopping.enabled and not self.state.stopped:
            self.state.stopped = (f"{metric} has not improved for {self.early.patience} evaluations "
                                  f"(best {self.early.best:.3f} at step {self.early.best_step})")
