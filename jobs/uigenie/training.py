"""UI-Genie's two trainings each generation, as Ray Train runs (``services/ray_train.py``, the
``train`` section): the agent's SFT (``actors/sft.py``) and the reward model's head
(``actors/reward_model/train.py``).

The agent's state between generations is its trainable parameters, packed once in the object
store: the sampler loads them (``Sampler.load_weights``) and the next SFT starts from them, so the
agent keeps improving across generations, as the learner actor it replaces did (each SFT run
starts a fresh optimizer). The reward model's actor computes the features with its frozen
backbone, the workers train the head, and the actor loads the trained head to score with.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


@dataclass
class Training:
    cfg: Any
    storage: str                    # RUN_DIR/ray_train (services.ray_train.storage_path)
    sampler: Any
    rm: Any
    fail_once: Optional[str] = None  # tests: a marker path handed to the worker functions
    version: int = 0                # SFT runs so far: the agent's policy version
    agent: Optional[list] = None    # [ref] of the agent's packed trainable parameters
    agent_checkpoint: Any = None    # the Ray Train checkpoint they came from (saved by ``save_agent``)
    runs: dict = field(default_factory=dict)       # kind → the latest Ray Train run's name
    _encoded: dict = field(default_factory=dict)   # (prompt, completion) → (prompt ids, completion ids)

    def sft(self, rows: list[dict], epochs: int, batch: int, lr: float, rng: random.Random) -> dict[str, float]:
        """Supervised fine-tuning on (prompt, completion) rows as a Ray Train run (the token-mean
        NLL, ``actors/sft.py``); then the new weights → the sampler."""
        import ray

        from actors.sft import plan, read_checkpoint, train_sft
        from services.ray_train import fit
        if not rows:                  # nothing new: the agent stays as it is (the series go on)
            return {"agent/sft_loss_first": 0.0, "agent/sft_loss_last": 0.0, "agent/sft_steps": 0.0}
        encoded = self.encode(rows)
        a = self.cfg.agent
        config = {"model": self.cfg.model.name, "lr": lr, "first_weight": a.decision_weight,
                  "grad_clip": a.grad_clip,
                  "trainable_layers": a.trainable_layers, "micro_batch_tokens": a.micro_batch_tokens,
                  "threads": self.cfg.sampler.threads, "seed": self.cfg.loop.seed,
                  "version": self.version + 1, "rows": [ray.put(encoded)], "start": self.agent,
                  "plan": plan(len(rows), epochs, batch, rng), "fail_once": self.fail_once}
        run = self.finished("agent-sft", fit(train_sft, config, self.cfg.train, self.storage, "agent-sft"))
        with run.checkpoint.as_directory() as d:
            packed, meta = read_checkpoint(Path(d))
        values = self.take_agent(packed, run.checkpoint)
        losses = meta["losses"]
        return {"agent/sft_loss_first": losses[0], "agent/sft_loss_last": losses[-1],
                "agent/sft_steps": float(len(losses)), "time/sft_s": run.seconds, **values}

    def encode(self, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, completion ids) per row, by the sampler's tokenizer and chat template; each
        distinct row encoded once per run."""
        import ray

        from jobs.uigenie.policy import REPLY_PREFIX
        todo = list(dict.fromkeys((r["prompt"], r["completion"]) for r in rows
                                  if (r["prompt"], r["completion"]) not in self._encoded))
        prompts = ray.get([self.sampler.encode.remote([{"role": "user", "content": p}], REPLY_PREFIX)
                           for p, _ in todo])
        replies = ray.get([self.sampler.encode_reply.remote(c) for _, c in todo])
        self._encoded.update({key: (p, t) for key, p, t in zip(todo, prompts, replies)})
        return [self._encoded[(r["prompt"], r["completion"])] for r in rows]

    def take_agent(self, packed, checkpoint) -> dict[str, float]:
        """New agent weights: into the object store once, then into the sampler."""
        import time

        import ray
        start = time.perf_counter()
        self.agent, self.agent_checkpoint, self.version = [ray.put(packed)], checkpoint, packed.version
        ray.get(self.sampler.load_weights.remote(self.agent))
        return {"sync/version": float(self.version), "sync/mb": packed.nbytes / 1e6,
                "time/sync_s": time.perf_counter() - start}

    def train_rm(self, inputs: list, labels: list[int]) -> dict[str, float]:
        """A fresh head on every example so far as a Ray Train run; the actor then scores with it."""
        import ray

        from actors.reward_model.model import _check_labels
        from actors.reward_model.train import train_head
        from services.ray_train import checkpoint_files, fit
        _check_labels(inputs, labels)
        r = self.cfg.reward_model
        settings = ray.get(self.rm.settings_dict.remote())
        config = {"features": [self.rm.features.remote(inputs)], "labels": list(labels),
                  "settings": settings, "epochs": r.epochs, "threads": self.cfg.sampler.threads,
                  "fail_once": self.fail_once}
        run = self.finished("rm-head", fit(train_head, config, self.cfg.train, self.storage, "rm-head"))
        ray.get(self.rm.load_files.remote(checkpoint_files(run.checkpoint)))
        return {"rm/train_loss": float(run.metrics["loss_last"]), "time/rm_train_s": run.seconds}

    def finished(self, kind: str, run):
        """Keep the latest run of each kind in storage; the one before it has been read."""
        from services.ray_train import remove_run
        if kind in self.runs and self.runs[kind] != run.name:
            remove_run(self.storage, self.runs[kind])
        self.runs[kind] = run.name
        return run

    # --- the agent in a run checkpoint ------------------------------------------------------------

    def save_agent(self, dest: str) -> None:
        """The agent's latest SFT checkpoint into ``dest`` (a directory or URI); nothing while the
        agent is still the base model."""
        from actors.storage import write_dir
        from services.ray_train import copy_checkpoint
        if self.agent_checkpoint is not None:
            write_dir(dest, lambda path: copy_checkpoint(self.agent_checkpoint, path))

    def load_agent(self, src: str) -> None:
        """The agent ``save_agent`` wrote at ``src`` into the sampler, and the next SFT's start
        (and what the next ``save_agent`` copies, until an SFT replaces it); nothing there: the
        base model."""
        from ray.train import Checkpoint

        from actors.sft import read_checkpoint
        from actors.storage import is_uri, read_dir
        try:
            with read_dir(src) as local:
                packed, _ = read_checkpoint(local)
        except FileNotFoundError:
            return
        self.take_agent(packed, Checkpoint(src if is_uri(src) else os.path.abspath(src)))
