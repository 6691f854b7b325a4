"""The MM-UPT driver: SRT's loop (sample → majority vote → GRPO → weight sync → evaluate) on image
questions, after a synthesis stage in which the model writes new questions about the training
images and the filter keeps the ones it can answer consistently.

Only what differs from SRT lives here: the image datasets, the synthesis stage, and putting its
questions into the training set (also on resume). Everything else is ``jobs/srt/loop.py``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq

from actors.sampler import SamplingParams
from jobs.mmupt.data import load_image_tasks, shape_tasks
from jobs.mmupt.synthesis import Candidate, judge_answerable, screen, synthesis_prompt
from jobs.srt.rewards import majority_vote
from jobs.srt.loop import Splits, SRTLoop, file_splits, generated_splits, groups_of
from services.run_store import atomic_write

SYNTHETIC = "synthetic/questions.parquet"
STATUSES = ("kept", "malformed", "duplicate", "unanswerable")
CANDIDATE_SCHEMA = pa.schema([(name, pa.float64() if name == "share" else pa.string()) for name in
                              ("source_id", "mode", "reply", "question", "status", "majority", "share",
                               "id", "prompt")])


def build_image_splits(cfg) -> Splits:
    d = cfg.data
    if d.source == "shapes":
        return generated_splits(d, lambda split, n: shape_tasks(
            split, n, cfg.train.seed, d.split_fractions, d.template, d.image_size))
    return file_splits(d, lambda path: load_image_tasks(path, d.template))


class MMUPTLoop(SRTLoop):
    def load_splits(self) -> Splits:
        return build_image_splits(self.cfg)

    def prepare_base_votes(self) -> None:
        self.synthesize()
        super().prepare_base_votes()

    def restore(self) -> int:
        self.load_synthetic()
        return super().restore()

    def load_synthetic(self) -> None:
        """A resumed run trains on the questions its synthesis stage kept (not written again)."""
        path = self.store.root / SYNTHETIC
        if path.exists():
            self.adopt([r for r in pq.read_table(path).to_pylist() if r["status"] == "kept"])

    # --- synthesis ---------------------------------------------------------------------------------

    def seed_answers(self, sources: list[dict]) -> dict[str, str]:
        """In-context synthesis shows the original question's answer: the model's majority vote
        (no label needed) or the dataset's label."""
        sc = self.cfg.synthesis
        if sc.seed_answers == "label":
            if missing := [t["id"] for t in sources if t["answer"] is None]:
                raise ValueError(f"synthesis.seed_answers: label, but training rows have no answer: {missing[:3]}")
            return {t["id"]: t["answer"] for t in sources}
        groups = self.sample_groups(sources, sc.check_samples, self.cfg.sampling.temperature, seed=30_000_000)
        votes = {t["id"]: majority_vote([self.answer(c) for c in g], self.equal).majority
                 for t, g in zip(sources, groups)}
        return {k: v for k, v in votes.items() if v is not None}

    def write_candidates(self, sources: list[dict]) -> list[Candidate]:
        sc = self.cfg.synthesis
        answers = self.seed_answers(sources) if "in_context" in sc.modes else {}
        requests = [(t, mode) for t in sources for mode in sc.modes
                    if mode == "direct" or t["id"] in answers]
        prompts = [{"text": synthesis_prompt(mode, t["question"], answers.get(t["id"])), "image": t["image"]}
                   for t, mode in requests]
        params = SamplingParams(n=sc.per_image, temperature=sc.temperature, top_p=self.cfg.sampling.top_p,
                                max_new_tokens=sc.max_new_tokens, seed=31_000_000)
        replies = groups_of(self.roles.generate(prompts, params), sc.per_image) if prompts else []
        return [Candidate(t["id"], mode, c.text) for (t, mode), group in zip(requests, replies) for c in group]

    def synthetic_task(self, c: Candidate, source: dict, k: int) -> dict:
        return {"id": f"{c.source_id}/syn{k}", "question": c.question, "answer": None,
                "prompt": self.cfg.data.template.format(question=c.question), "image": source["image"]}

    def synthesize(self) -> None:
        """Write, screen and judge synthetic questions; store every candidate with its verdict in
        ``synthetic/questions.parquet``; add the kept ones to the training set."""
        sc = self.cfg.synthesis
        if not sc.modes:
            return
        sources = self.splits.train[:sc.images] if sc.images else self.splits.train
        by_id = {t["id"]: t for t in sources}
        self.progress.note(f"synthesis: {'+'.join(sc.modes)} questions for {len(sources)} images …")
        candidates = self.write_candidates(sources)
        pending = screen(candidates, {t["id"]: t["question"] for t in sources}, sc.max_similarity)
        tasks = [self.synthetic_task(c, by_id[c.source_id], k) for k, c in enumerate(pending)]
        groups = self.sample_groups(tasks, sc.check_samples, self.cfg.sampling.temperature,
                                    seed=32_000_000) if tasks else []
        for c, g in zip(pending, groups):
            judge_answerable(c, [self.answer(x) for x in g], sc.min_share, self.equal)
        for c, t in zip(pending, tasks):
            c.id = t["id"]
        rows = [{**asdict(c), "prompt": self.cfg.data.template.format(question=c.question) if c.question else None}
                for c in candidates]
        table = pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
        (self.store.root / SYNTHETIC).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.store.root / SYNTHETIC, lambda p: pq.write_table(table, p))
        counts = Counter(c.status for c in candidates)
        values = {f"synthesis/{s}": float(counts[s]) for s in STATUSES}
        values["synthesis/candidates"] = float(len(candidates))
        self.log(0, values)
        self.store.event("synthesis", 0, **{s: counts[s] for s in STATUSES}, candidates=len(candidates))
        self.progress.note("synthesis: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)
                           + f" of {len(candidates)} candidates")
        self.adopt([r for r in rows if r["status"] == "kept"])

    def adopt(self, kept_rows: list[dict]) -> None:
        """Put kept synthetic questions (rows of ``SYNTHETIC``) into the training set per
        ``synthesis.train_on``; each gets its source task's image."""
        by_id = {t["id"]: t for t in self.splits.train}
        synthetic = [{"id": r["id"], "question": r["question"], "prompt": r["prompt"], "answer": None,
                      "image": by_id[r["source_id"]]["image"]} for r in kept_rows]
        train_on = self.cfg.synthesis.train_on
        if train_on == "synthetic" and not synthetic:
            raise ValueError("synthesis.train_on: synthetic, but the filter kept no question "
                             f"(see {self.store.root / SYNTHETIC})")
        self.splits.train = synthetic if train_on == "synthetic" else \
            self.splits.train + (synthetic if train_on == "both" else [])

