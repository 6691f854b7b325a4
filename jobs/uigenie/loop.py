"""The UI-Genie driver: an agent and its reward model improving each other, generation by generation.

    generation 0:  references of the seed tasks → agent SFT data; the agent's proposals on their
                   steps, labelled by rule-based verification, + corruptions → RM data; train both
    generation g:  reward-guided beam search on the exploration tasks (the RM ranks proposals,
                   the outcome check verifies terminal states) → successes become agent data,
                   corruptions and the known steps of failures become RM data, hard negatives are
                   repeated; retrain the agent and the RM on everything so far
    every generation: greedy rollouts on held-out tasks → gen/success_rate; the RM on a fixed
                   held-out labelled set → rm/step_f1, rm/outcome_f1; dataset sizes → data/*

Each generation ends with a checkpoint (agent, RM head, generation number); its datasets are
Parquet files in RUN_DIR/datasets, so `evoray resume` rebuilds everything from disk.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Optional

from actors.emulator.actions import Action
from jobs.uigenie.data import (
    RMRow, ScreenBook, agent_rows, failure_rows, rm_records, rollout_record, step_texts,
    success_rows, verified_rows, write_parquet)
from jobs.uigenie.policy import propose, remote_generate
from actors.reward_model.model import MAX_HISTORY
from jobs.uigenie.rm_data import hard_negatives
from jobs.uigenie.rollout import EpisodeOps, Policy, Rollout, reference_op, run_episodes

EXTRA_ACTIONS = [Action("swipe", direction="up"), Action("system_button", text="Back"),
                 Action("wait", time=1.0), Action("swipe", direction="down")]


def split_tasks(cfg, suite: list, seeds: Optional[list] = None) -> dict[str, list]:
    """seed / explore / heldout by a stable hash of the task id (same split on every machine and
    on resume). Seed tasks outside ``seed_levels`` go to exploration: they have no references.
    With ``seeds`` (tasks of their own, with references) those are the seed split, and the suite,
    less any task among them, is split between exploration and held-out alone."""
    t = cfg.tasks
    names = ("seed", "explore", "heldout") if seeds is None else ("explore", "heldout")
    total = sum(t.split_fractions[n] for n in names)
    bounds, acc = [], 0.0
    for name in names:
        acc += t.split_fractions[name] / total
        bounds.append((acc, name))
    chosen = [s for s in seeds or [] if s.level in t.seed_levels][:t.n_seed]
    out: dict[str, list] = {"seed": chosen, "explore": [], "heldout": []}
    taken = {s.id for s in chosen}
    for task in sorted(suite, key=lambda x: _unit_hash(x.id, cfg.loop.seed)):
        if task.id in taken:
            continue
        u = _unit_hash(task.id, cfg.loop.seed + 1)
        name = next((n for b, n in bounds if u <= b), names[-1])
        if name == "seed" and task.level not in t.seed_levels:
            name = "explore"
        out[name].append(task)
    return {"seed": out["seed"][:t.n_seed], "explore": _spread(out["explore"], None),
            "heldout": _spread(out["heldout"], t.n_heldout) if t.n_heldout else out["heldout"]}


def exploration_round(pool: list, n: Optional[int], solved: set) -> list:
    """A generation's exploration tasks: the first ``n`` of the pool (templates in turn) that
    beam search has not solved yet. A solved task's place goes to the next one, so later
    generations learn from new tasks instead of re-fitting the trajectories of old ones."""
    return [t for t in pool if t.id not in solved][:n]


def _spread(tasks: list, k: Optional[int]) -> list:
    """The first ``k`` tasks (None: all) taking each template in turn (hash order within a
    template): a capped exploration round or held-out split meets every kind of task before a
    second of any, so what beam search can find and what held-out success measures are the same
    kinds of task."""
    by_template: dict[str, list] = {}
    for task in tasks:
        by_template.setdefault(getattr(task, "template", task.id), []).append(task)
    rounds = [group[i] for i in range(max(map(len, by_template.values()), default=0))
              for group in by_template.values() if i < len(group)]
    return rounds[:k]


def _unit_hash(text: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16) / 16 ** 12


def rm_input(row: RMRow):
    from actors.reward_model import RMInput
    return RMInput(goal=row.goal, history=list(row.history), screen=row.screen, action=row.action)


def child_input(r: Rollout):
    """The reward model's view of a rollout's last step (for beam search)."""
    from actors.reward_model import RMInput
    s = r.steps[-1]
    return RMInput(goal=r.task.goal, history=[x.text for x in r.steps[:-1]][-MAX_HISTORY:], screen=s.screen,
                   action=s.text)


class UIGenieLoop:
    def __init__(self, cfg, store, progress, export, actors, ops: EpisodeOps, runner, suite: list,
                 seeds: Optional[list] = None):
        self.cfg, self.store, self.progress, self.export = cfg, store, progress, export
        self.a = actors                         # .sampler, .rm, .pool, .training
        self.ops, self.runner = ops, runner
        self.splits = split_tasks(cfg, suite, seeds)
        self.policy = Policy(remote_generate(actors.sampler), cfg.agent.max_new_tokens, cfg.loop.seed)
        self.rng = random.Random(cfg.loop.seed)
        self.data_dir = store.root / "datasets"
        self.agent_data: list[dict] = []
        self.rm_data: list[RMRow] = []
        self.heldout_rm: list[RMRow] = []

    def exploring(self) -> list:
        """This generation's exploration tasks (``tasks.retire_solved``: without those whose beam
        search success is already in the agent data)."""
        t = self.cfg.tasks
        solved = {r["task_id"] for r in self.agent_data if r["source"] == "explore"} if t.retire_solved else set()
        return exploration_round(self.splits["explore"], t.n_explore, solved)

    # --- one generation's parts ---------------------------------------------------------------------

    def references(self, tasks: list) -> list[tuple[Rollout, list]]:
        """(reference rollout, target bounds per step) of each task, run on the pool."""
        out = []
        for task, res in zip(tasks, self.runner.map([reference_op(self.ops, t) for t in tasks])):
            if isinstance(res, Exception):
                self.progress.note(f"reference of {task.id} failed: {res}")
                continue
            out.append(res)
        return out

    def verified(self, refs: list[tuple[Rollout, list]], source: str, device_size,
                 limit: Optional[int] = None) -> list[RMRow]:
        """The current agent's proposals on the reference steps (``limit``: a random sample of
        that many), labelled by the rules; every step's reference action is a positive."""
        steps = [s for r, _ in refs for s in r.steps]
        k = self.cfg.agent.verify_samples
        n = len(steps) if k else 0
        asked = list(range(n)) if limit is None else sorted(self.rng.sample(range(n), min(limit, n)))
        answers = propose(self.policy.generate, [steps[i].prompt for i in asked], k, self.cfg.beam.temperature,
                          self.cfg.agent.max_new_tokens, self.policy.seed)
        props: list[list] = [[] for _ in steps]
        for i, a in zip(asked, answers):
            props[i] = a
        rows, i = [], 0
        for r, bounds in refs:
            mine = [[p.action for p in props[i + j]] for j in range(len(r.steps))]
            rows += verified_rows(r, mine, bounds, device_size, source)
            i += len(r.steps)
        return rows

    def greedy_solved(self, tasks: list) -> set[str]:
        """Exploration tasks the current agent solves greedily: what beam search must beat."""
        done = run_episodes(tasks, self.ops, self.runner, self.policy, self.cfg.tasks.max_steps)
        return {r.task.id for r in done if r.success}

    def explore(self, generation: int, tasks: list) -> tuple[list[Rollout], list[Rollout]]:
        b = self.cfg.beam
        def score(children):
            import ray
            return ray.get(self.a.rm.score.remote([child_input(c) for c in children]))
        def on_step(depth, finished):
            solved = len({r.task.id for r in finished if r.success})
            self.progress.note(f"  explore depth {depth + 1}: {len(finished)} finished, "
                               f"{solved}/{len(tasks)} tasks solved")
        done = run_episodes(tasks, self.ops, self.runner, self.policy, self.cfg.tasks.max_steps,
                            n=b.expansions, temperature=b.temperature, score=score, width=b.width,
                            greedy=b.greedy, keep_greedy=b.keep_greedy, on_step=on_step)
        write_parquet(self.data_dir / f"trajectories_explore_gen{generation}.parquet",
                      [rollout_record(r, generation, "explore") for r in done])
        best: dict[str, Rollout] = {}
        for r in done:
            if r.success and (r.task.id not in best or len(r.steps) < len(best[r.task.id].steps)):
                best[r.task.id] = r
        return list(best.values()), [r for r in done if not r.success]

    def evaluate(self, generation: int) -> dict[str, float]:
        tasks = self.splits["heldout"]
        done = run_episodes(tasks, self.ops, self.runner, self.policy, self.cfg.tasks.max_steps)
        write_parquet(self.data_dir / f"trajectories_heldout_gen{generation}.parquet",
                      [rollout_record(r, generation, "heldout") for r in done])
        steps = [s for r in done for s in r.steps]
        values = {"gen/success_rate": sum(r.success for r in done) / max(1, len(done)),
                  "eval/step_error_rate": sum(s.error is not None for s in steps) / max(1, len(steps)),
                  "eval/mean_steps": len(steps) / max(1, len(done)),
                  "eval/crashed": float(sum(r.crashed is not None for r in done))}
        for level in sorted({t.level for t in tasks}):
            mine = [r for r in done if r.task.level == level]
            values[f"gen/success_rate_level{level}"] = sum(r.success for r in mine) / max(1, len(mine))
        return values

    def evaluate_rm(self) -> dict[str, float]:
        import ray
        out = {}
        for name, rows in (("step", [r for r in self.heldout_rm if not r.final]),
                           ("outcome", [r for r in self.heldout_rm if r.final])):
            if rows:
                m = ray.get(self.a.rm.evaluate.remote([rm_input(r) for r in rows], [r.label for r in rows],
                                                       self.cfg.reward_model.threshold))
                out[f"rm/{name}_f1"] = m["f1"]
                out[f"rm/{name}_precision"], out[f"rm/{name}_recall"] = m["precision"], m["recall"]
        return out

    def train_agent(self, new_agent: list[dict]) -> dict[str, float]:
        """SFT on this generation's new examples plus ``agent.replay`` replayed old ones per new
        one (each generation's SFT costs about the same); then the weights go to the sampler."""
        a = self.cfg.agent
        self.agent_data += new_agent
        old = self.agent_data[:len(self.agent_data) - len(new_agent)]
        replay = self.rng.sample(old, min(len(old), a.replay * len(new_agent)))
        epochs, lr = (a.sft_epochs, a.lr) if not old else (a.explore_epochs or a.sft_epochs, a.explore_lr or a.lr)
        self.progress.note(f"  training the agent on {len(new_agent)} new examples + {len(replay)} replayed, "
                           f"{epochs} epochs at lr {lr:g} …")
        return self.a.training.sft(new_agent + replay, epochs, a.sft_batch, lr, self.rng)

    def train_rm(self, new_rm: list[RMRow]) -> dict[str, float]:
        """A fresh head on every RM example so far (features of old ones are cached)."""
        self.rm_data += new_rm
        self.progress.note(f"  training the reward model on {len(self.rm_data)} examples …")
        return self.a.training.train_rm([rm_input(r) for r in self.rm_data], [r.label for r in self.rm_data])

    def mine_hard_negatives(self, rows: list[RMRow]) -> list[RMRow]:
        """New negatives the current RM scores as positive, repeated (they are what it gets wrong)."""
        import ray
        negatives = [r for r in rows if r.label == 0]
        if not negatives:
            return []
        scores = ray.get(self.a.rm.score.remote([rm_input(r) for r in negatives]))
        hard = hard_negatives([(r, r.label) for r in negatives], scores, self.cfg.reward_model.threshold)
        extra = self.cfg.reward_model.hard_negative_repeat - 1
        return [replace(r, source="hard_negative") for r, _ in hard for _ in range(extra)]

    # --- generations --------------------------------------------------------------------------------

    def generation_zero(self, g: int, device_size) -> dict[str, float]:
        """References → agent SFT; then the trained agent's proposals on the reference steps,
        labelled by the rules, and corrupted references → RM data (and the held-out RM set)."""
        self.progress.note(f"tasks: {len(self.splits['seed'])} seed, {len(self.splits['explore'])} "
                           f"explore ({len(self.exploring())} a generation), "
                           f"{len(self.splits['heldout'])} held-out; references …")
        seed_refs = self.references(self.splits["seed"])
        held_refs = self.references(self.splits["heldout"])
        new_agent = [row for r, _ in seed_refs if r.success for row in agent_rows(r, "reference", 0)]
        values = self.train_agent(new_agent)
        rm_cfg = self.cfg.reward_model
        book = ScreenBook()
        for r, _ in seed_refs + held_refs:
            book.add(r)
        def labelled(refs, source, limit=None):
            self.progress.note(f"  verifying the agent's proposals on {source} references …")
            rows = self.verified(refs, source, device_size, limit)
            texts = {k: v for r, _ in refs for k, v in step_texts(r).items()}
            succ = [r for r, _ in refs if r.success]
            return rows + [x for x in success_rows(succ, book, texts, self.rng, rm_cfg.corruptions,
                                                   EXTRA_ACTIONS, source) if x.label == 0]
        self.heldout_rm = labelled(held_refs, "heldout")
        write_parquet(self.data_dir / "rm_heldout.parquet", rm_records(self.heldout_rm, 0))
        new_rm = labelled(seed_refs, "seed", self.cfg.agent.verify_steps)
        values |= self.train_rm(new_rm)
        return values | self.save_data(g, new_agent, new_rm)

    def generation(self, g: int, device_size) -> dict[str, float]:
        """Beam search on the exploration tasks → new agent and RM data → both retrained."""
        tasks = self.exploring()
        greedy = self.greedy_solved(tasks)
        successes, failures = self.explore(g, tasks)
        beam_only = [r.task.id for r in successes if r.task.id not in greedy]
        self.progress.note(f"  beam search solved {len(successes)} exploration tasks, greedy decoding "
                           f"{len(greedy)}; beam only: {', '.join(beam_only) or 'none'}")
        book = ScreenBook()
        texts: dict = {}
        for r in successes + failures:
            book.add(r)
            texts.update(step_texts(r))
        new_rm = success_rows(successes, book, texts, self.rng, self.cfg.reward_model.corruptions,
                              EXTRA_ACTIONS, f"gen{g}")
        new_rm += failure_rows(failures, successes, book, texts, f"gen{g}:failed")
        new_rm += self.mine_hard_negatives(new_rm)
        new_agent = [row for r in successes for row in agent_rows(r, "explore", g)]
        values = self.train_agent(new_agent) | self.train_rm(new_rm) | self.save_data(g, new_agent, new_rm)
        values["explore/solved_rate"] = len(successes) / max(1, len(tasks))
        values["explore/greedy_solved"] = float(len(greedy))
        values["explore/beam_only_solved"] = float(len(beam_only))
        values["explore/trajectories"] = float(len(successes) + len(failures))
        return values

    def save_data(self, g: int, new_agent: list[dict], new_rm: list[RMRow]) -> dict[str, float]:
        write_parquet(self.data_dir / f"agent_gen{g}.parquet", new_agent)
        write_parquet(self.data_dir / f"rm_gen{g}.parquet", rm_records(new_rm, g))
        return {"data/agent_examples": float(len(self.agent_data)),
                "data/agent_new": float(len(new_agent)),
                "data/rm_examples": float(len(self.rm_data)),
                "data/rm_positives": float(sum(r.label for r in self.rm_data)),
                "data/rm_new": float(len(new_rm)),
                "data/hard_negatives": float(sum(r.source == "hard_negative" for r in new_rm))}

    def run(self, resume: bool = False) -> None:
        start_gen = self.restore() if resume else 0
        gens = self.cfg.loop.generations
        device_size = tuple(self.a.device_size)
        self.store.event("run_started" if not resume else "resumed", start_gen,
                         splits={k: [t.id for t in v] for k, v in self.splits.items()})
        if self.cfg.loop.eval_base and start_gen == 0:
            base = self.evaluate(-1)
            self.progress.note(f"base model: held-out success {base['gen/success_rate']:.3f}")
            self.log(-1, {f"base/{k.split('/', 1)[1]}": v for k, v in base.items()})
        self.progress.start(gens + 1, start_gen)
        try:
            for g in range(start_gen, gens + 1):
                t0 = time.perf_counter()
                self.rng.seed(f"{self.cfg.loop.seed}:{g}")      # the same draws after a resume
                self.policy.seed = self.cfg.loop.seed + g       # new samples each generation
                self.progress.note(f"gen {g}: " + ("references, SFT, verification" if g == 0 else
                                                  "reward-guided beam search on the exploration tasks"))
                values = (self.generation_zero if g == 0 else self.generation)(g, device_size)
                values |= self.evaluate(g)
                values |= self.evaluate_rm()
                values |= self.device_health()
                values["time/gen_s"] = time.perf_counter() - t0
                self.checkpoint(g)
                self.log(g, values)
                self.store.event("generation_done", g, success_rate=values["gen/success_rate"])
        finally:
            self.progress.stop()

    def device_health(self) -> dict[str, float]:
        """The pool's devices now: healthy (not marked unhealthy) and leased."""
        import ray
        stats = ray.get(self.a.pool.stats.remote())
        return {"devices/healthy": float(stats["size"] - stats["unhealthy"]),
                "devices/leased": float(stats["leased"] + stats["busy"]),
                "devices/restarts": float(sum(d["crashes"] for d in stats["devices"]))}

    def log(self, g: int, values: dict[str, float]) -> None:
        self.store.log(g, values)
        self.store.flush_metrics()
        self.export(values)
        shown = [("gen/success_rate", "heldout"), ("explore/solved_rate", "explore"),
                 ("rm/step_f1", "rm_step_f1"), ("rm/outcome_f1", "rm_outcome_f1"),
                 ("data/agent_examples", "agent_ex"), ("data/rm_examples", "rm_ex"),
                 ("time/gen_s", "s")]
        text = "  ".join(f"{label} {values[k]:.3f}" if not k.startswith(("data/", "time/"))
                         else f"{label} {values[k]:.0f}" for k, label in shown if k in values)
        self.progress.console.print(f"gen {g:3d}  {text}", highlight=False, soft_wrap=True)
        if g >= 0:
            self.progress.tick(g + 1)

    # --- checkpoints --------------------------------------------------------------------------------

    def checkpoint(self, g: int) -> None:
        import ray
        def write(tmp: Path) -> None:
            saving = self.a.rm.save.remote(self.store.actor_dir(tmp, "rm"))
            self.a.training.save_agent(self.store.actor_dir(tmp, "agent"))
            ray.get(saving)
            (tmp / "state.json").write_text(json.dumps({"generation": g}))
        self.store.save_checkpoint(g, write, keep=2)

    def restore(self) -> int:
        """Load the last finished generation; returns the generation to run next."""
        import pyarrow.parquet as pq
        import ray
        ckpt = self.store.latest_checkpoint()
        if ckpt is None:
            return 0
        g = json.loads((ckpt / "state.json").read_text())["generation"]
        loading = self.a.rm.load.remote(self.store.actor_dir(ckpt, "rm"))
        self.a.training.load_agent(self.store.actor_dir(ckpt, "agent"))
        ray.get(loading)
        self.store.truncate_metrics(g)
        names = {f.name for f in fields(RMRow)}
        def rows(path):
            return pq.read_table(path).to_pylist()
        for k in range(g + 1):
            self.agent_data += rows(self.data_dir / f"agent_gen{k}.parquet")
            self.rm_data += [RMRow(**{n: r[n] for n in names}) for r in rows(self.data_dir / f"rm_gen{k}.parquet")]
        self.heldout_rm = [RMRow(**{n: r[n] for n in names}) for r in rows(self.data_dir / "rm_heldout.parquet")]
        self.progress.note(f"resumed after generation {g} from {ckpt}")
        return g + 1
