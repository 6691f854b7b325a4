"""SRT's actors (MM-UPT's too): the samplers, the learner (one actor, or a data-parallel group),
the answer graders; work fanned out to them, re-issued when an actor was lost, weights moved from
the learner to the samplers after each step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from actors.calls import describe, wait_for_restart
from actors.learner import Learner
from actors.sampler import Completion, Sampler, SamplingParams
from actors.weights.sync import WeightSync
from services.controller import round_robin, sampler_settings, sampler_start_timeout


@dataclass
class PendingGeneration:
    n_prompts: int
    chunks: list[list[int]]
    call: Callable[[int], Any]     # re-issues chunk i
    refs: list
    version: int                   # the policy the samplers held when it was launched


class StaleSampler(RuntimeError):
    """A sampler answered with an older policy than the learner's: it was restarted."""


@dataclass
class Roles:
    samplers: list
    learner: object
    graders: list = field(default_factory=list)
    names: dict[str, list[str]] = field(default_factory=dict)      # role → actor names
    on_event: Callable[..., Any] = lambda *a, **k: None
    max_retries: int = 3
    colocated: bool = False
    restarts: int = 0
    restart_timeout_s: float = 300.0
    transport: str = "object_store"
    bucket_mb: float = 256
    weights: WeightSync = field(init=False)   # built from the fields above

    def __post_init__(self):
        self.weights = WeightSync(
            self.learner, self.samplers, self.transport, self.bucket_mb,
            get=lambda i, ref, call: self._get("sampler", i, ref, call), on_event=self._sync_event,
            max_retries=self.max_retries, restart_timeout_s=self.restart_timeout_s,
            names=self.names.get("sampler"))

    def _sync_event(self, kind: str, **fields) -> None:
        """The weight sync's events; a sampler restart it found counts as one of the run's restarts."""
        if kind == "actor_restarted":
            self.restarts += 1
        self.on_event(kind, **fields)

    @property
    def version(self) -> int:
        return self.weights.version

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Split the prompts over the samplers; results come back grouped by prompt, in order."""
        return self.collect(self.launch(prompts, params))

    def launch(self, prompts: list[str], params: SamplingParams) -> PendingGeneration:
        """Start generating without waiting (asynchronous rollouts); ``collect`` gets the result."""
        chunks = round_robin(len(prompts), len(self.samplers))
        call = lambda i: self.samplers[i].generate.remote([prompts[j] for j in chunks[i]], params)
        return PendingGeneration(len(prompts), chunks, call, [call(i) for i in range(len(chunks))], self.version)

    def collect(self, pending: PendingGeneration) -> list[Completion]:
        by_prompt: dict[int, list[Completion]] = {}
        for i, chunk in enumerate(pending.chunks):
            for c in self._get("sampler", i, pending.refs[i], pending.call, min_version=pending.version):
                c.prompt_index = chunk[c.prompt_index]
                by_prompt.setdefault(c.prompt_index, []).append(c)
        return [c for i in range(pending.n_prompts) for c in by_prompt.get(i, [])]

    def grade(self, groups: list[dict], reward: dict) -> list[dict]:
        """Grade prompts' samples on the ``sandbox`` role (``jobs.srt.rewards.grade_groups``)."""
        chunks = round_robin(len(groups), len(self.graders))
        call = lambda i: self.graders[i].grade.remote([groups[j] for j in chunks[i]], reward)
        refs = [call(i) for i in range(len(chunks))]
        out: list = [None] * len(groups)
        for i, chunk in enumerate(chunks):
            for j, graded in zip(chunk, self._get("sandbox", i, refs[i], call)):
                out[j] = graded
        return out

    def _get(self, role: str, i: int, ref, call: Callable[[int], Any], min_version: int | None = None):
        """``ray.get(ref)``; when the actor died (or came back with weights older than
        ``min_version``: restarted) wait for its restart, bring it up to date and re-issue the same
        work, up to ``max_retries`` times."""
        import ray
        for attempt in range(self.max_retries + 1):
            try:
                out = ray.get(ref)
                if min_version is not None and out and out[0].policy_version < min_version:
                    raise StaleSampler(f"policy {out[0].policy_version}, expected {min_version}")
                return out
            except (ray.exceptions.RayActorError, StaleSampler) as e:
                if attempt == self.max_retries:
                    raise
                self._recover(role, i, e, attempt + 1)
                ref = call(i)

    def _recover(self, role: str, i: int, error: Exception, attempt: int) -> None:
        actor = (self.samplers if role == "sampler" else self.graders)[i]
        names = self.names.get(role)
        self.restarts += 1
        self.on_event("actor_restarted", role=role, actor=names[i] if names else f"{role}-{i}",
                      attempt=attempt, error=describe(error))
        wait_for_restart(actor, self.restart_timeout_s)
        if role == "sampler":
            self.weights.bring_up(i)

    def train(self, samples: list) -> dict[str, float]:
        """One learner step; colocated samplers sleep meanwhile (vLLM frees its GPU memory)."""
        import ray
        if self.colocated:
            ray.get([s.sleep.remote() for s in self.samplers])
        try:
            return ray.get(self.learner.train_step.remote(samples))
        finally:
            if self.colocated:
                ray.get([s.wake_up.remote() for s in self.samplers])

    def sync_weights(self) -> dict[str, float]:
        return self.weights.sync()

def start_roles(cfg, placement) -> Roles:
    """Create the sampler, learner and (optional) grader actors of an SRT-shaped config where
    ``placement`` (a reserved ``services.placement.Placement``) puts them."""
    import ray
    from jobs.srt.grader import AnswerGrader
    s, lc, g = cfg.sampler, cfg.learner, cfg.sandbox
    settings = sampler_settings(s, cfg.model.name, placement.colocated)
    samplers = [ray.remote(Sampler).options(**placement.options("sampler", i)).remote(settings)
                for i in range(s.num_actors)]
    learner_settings = lc.settings(cfg.model.name, None if s.dtype == "float32" else s.dtype, cfg.train.seed)
    learners = [ray.remote(Learner).options(**placement.options(
        "learner", i, name=placement.actor_name("learner", i if i else None))).remote(learner_settings)
        for i in range(lc.workers)]
    graders = [ray.remote(AnswerGrader).options(**placement.options("sandbox", i)).remote(
        g.backend, g.timeout_s, g.memory_mb) for i in range(g.workers)]
    start_timeout = sampler_start_timeout(s, cfg.ray)
    if start_timeout > cfg.ray.placement_timeout_s:      # then wait_ready names a role that failed
        ray.wait([a.ready.remote() for a in samplers], num_returns=len(samplers), timeout=start_timeout)
    placement.wait_ready("sampler", [a.ready.remote() for a in samplers])
    placement.wait_ready("learner", [w.ready.remote() for w in learners])
    learner = learners[0]
    if len(learners) > 1:       # data parallel: rank 0 is the role's face, the rest its peers
        address = ray.get(learner.rendezvous.remote())
        ray.get([w.join.remote(rank, len(learners), address, learners[1:] if rank == 0 else [])
                 for rank, w in enumerate(learners)])
    placement.wait_ready("sandbox", [a.ready.remote(cfg.reward.equivalence) for a in graders])
    names = {"sampler": [placement.actor_name("sampler", i) for i in range(s.num_actors)],
             "sandbox": [placement.actor_name("sandbox", i) for i in range(g.workers)]}
    return Roles(samplers, learner, graders, names, placement.on_event, cfg.ray.max_retries,
                 placement.colocated, restart_timeout_s=max(start_timeout, cfg.ray.placement_timeout_s),
                 transport=weight_transport(cfg, placement.colocated), bucket_mb=lc.sync_bucket_mb)


def weight_transport(cfg, colocated: bool) -> str:
    """``learner.weight_sync: auto``: between a GPU learner and GPU samplers, broadcast (NCCL) when
    they have their own GPUs and CUDA IPC when the learner shares a sampler's; on CPUs the object
    store."""
    choice = cfg.learner.weight_sync
    if choice != "auto":
        return choice
    gpus = cfg.learner.num_gpus > 0 and cfg.sampler.num_gpus > 0
    return "object_store" if not gpus else "ipc" if colocated else "broadcast"
