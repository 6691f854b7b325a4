"""The job controller's Ray side: start or join Ray, place the roles as named actors, fan work out
to them, re-issue work an actor lost, and move weights from the learner to the samplers."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from actors.learner import Learner, LearnerSettings
from actors.sampler import Completion, Sampler, SamplerSettings, SamplingParams


def start_ray(ray_cfg, resources: dict[str, float] | None = None) -> None:
    """Join ``ray.address`` (or ``RAY_ADDRESS``), else start a local instance that has every custom
    resource the roles ask for (one machine plays every node)."""
    import ray
    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        use_token_auth()
        ray.init(address=address, namespace=ray_cfg.namespace, log_to_driver=True)
    else:
        ray.init(num_cpus=ray_cfg.num_cpus, include_dashboard=ray_cfg.include_dashboard,
                 dashboard_host=ray_cfg.dashboard_host, namespace=ray_cfg.namespace,
                 resources=resources or None, log_to_driver=True)


def use_token_auth() -> None:
    """A client of a cluster with Ray's token authentication must say so (``RAY_AUTH_MODE=token``);
    do that when a token is at hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ~/.ray/auth_token)
    and the user has not chosen a mode."""
    if any(os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")) or \
            os.path.isfile(os.path.expanduser("~/.ray/auth_token")):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def local_resources(specs) -> dict[str, float]:
    """The custom resources a local instance needs to hold ``specs`` (each role's total)."""
    need: dict[str, float] = {}
    for s in specs:
        for k, v in s.resources.items():
            need[k] = need.get(k, 0.0) + v * s.count
    return need


def wait_for_restart(actor, timeout_s: float, probe: str = "ready") -> None:
    """Block until a restarting actor answers again (calls fail fast while it restarts); a dead
    one (restarts used up) raises ``RayActorError``."""
    import ray
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(getattr(actor, probe).remote())
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@dataclass
class PendingGeneration:
    n_prompts: int
    chunks: list[list[int]]
    call: Callable[[int], Any]     # re-issues chunk i
    refs: list
    version: int                   # the policy the samplers held when it was launched


def round_robin(n: int, k: int) -> list[list[int]]:
    """Indices 0..n-1 dealt to k actors in turn; actors with nothing to do are left out."""
    return [c for c in (list(range(n))[i::k] for i in range(k)) if c]


def describe(error: BaseException) -> str:
    """An exception in one line for an event: its type and the first line of its message."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


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
    version: int = 0
    weights: Any = None            # the latest packed weights ([ObjectRef]), for restarted samplers
    restarts: int = 0
    restart_timeout_s: float = 300.0
    transport: str = "object_store"   # "broadcast": a process group of the learner and samplers;
                                      # "ipc": CUDA IPC to samplers on the learner's GPU
    shared: Any = None             # the latest SharedWeights (ipc), for restarted samplers
    bucket_mb: float = 256
    group_open: bool = False

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Split the prompts over the samplers; results come back grouped by prompt, in order."""
        return self.collect(self.launch(prompts, params))

    def launch(self, prompts: list[str], params: SamplingParams) -> "PendingGeneration":
        """Start generating without waiting (asynchronous rollouts); ``collect`` gets the result."""
        chunks = round_robin(len(prompts), len(self.samplers))
        call = lambda i: self.samplers[i].generate.remote([prompts[j] for j in chunks[i]], params)
        return PendingGeneration(len(prompts), chunks, call, [call(i) for i in range(len(chunks))], self.version)

    def collect(self, pending: "PendingGeneration") -> list[Completion]:
        by_prompt: dict[int, list[Completion]] = {}
        for i, chunk in enumerate(pending.chunks):
            for c in self._get("sampler", i, pending.refs[i], pending.call, min_version=pending.version):
                c.prompt_index = chunk[c.prompt_index]
                by_prompt.setdefault(c.prompt_index, []).append(c)
        return [c for i in range(pending.n_prompts) for c in by_prompt.get(i, [])]

    def grade(self, groups: list[dict], reward: dict) -> list[dict]:
        """Grade prompts' samples on the ``sandbox`` role (``jobs.rewards.grade_groups``)."""
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
        import ray
        actor = (self.samplers if role == "sampler" else self.graders)[i]
        names = self.names.get(role)
        self.restarts += 1
        self.on_event("actor_restarted", role=role, actor=names[i] if names else f"{role}-{i}",
                      attempt=attempt, error=describe(error))
        wait_for_restart(actor, self.restart_timeout_s)
        if role == "sampler" and self.transport == "broadcast":
            self.group_open = False           # the restarted sampler is not in the old group
            self.sync_weights()
        elif role == "sampler" and self.shared is not None:
            if not ray.get(actor.load_shared_weights.remote(self.shared)):
                self._through_object_store([i])
        elif role == "sampler" and self.weights is not None:
            ray.get(actor.load_weights.remote(self.weights))

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
        """Learner → every sampler: through the object store (packed once), by broadcast in
        buckets, or by CUDA IPC. Returns the version, MB and MB/s."""
        start = time.perf_counter()
        if self.transport == "broadcast":
            self.version, nbytes = self._broadcast()
        elif self.transport == "ipc":
            self.version, nbytes = self._share()
        else:
            self.version, nbytes = self._through_object_store(range(len(self.samplers)))
        seconds = time.perf_counter() - start
        return {"sync/version": float(self.version), "sync/mb": nbytes / 1e6,
                "sync/mb_per_s": nbytes / 1e6 / max(seconds, 1e-9) * len(self.samplers),
                "time/sync_s": seconds}

    def _through_object_store(self, which) -> tuple[int, int]:
        """The learner packs its weights once; samplers ``which`` load them."""
        import ray
        nbytes, packed = ray.get(self.learner.export_weights.remote())    # [ref]: see export_weights
        self.weights = packed
        call = lambda i: self.samplers[i].load_weights.remote(packed)
        refs = {i: call(i) for i in which}
        return [self._get("sampler", i, ref, call) for i, ref in refs.items()][0], nbytes

    def _share(self) -> tuple[int, int]:
        """CUDA IPC to every sampler on the learner's GPU; the object store for the others."""
        import ray
        self.shared = ray.get(self.learner.share_weights.remote())
        call = lambda i: self.samplers[i].load_shared_weights.remote(self.shared)
        mapped = [self._get("sampler", i, call(i), call) for i in range(len(self.samplers))]
        others = [i for i, ok in enumerate(mapped) if not ok]
        if others:
            self._through_object_store(others)
        return self.shared.version, self.shared.nbytes

    def open_weight_group(self) -> None:
        """(Re)form the broadcast group: the learner is rank 0, each sampler takes one rank per
        tensor-parallel worker. Every member joins at once (the group forms when all have)."""
        import ray
        spec = ray.get(self.learner.sync_spec.remote())
        ranks = ray.get([s.weight_ranks.remote() for s in self.samplers])
        firsts = [1 + sum(ranks[:i]) for i in range(len(ranks))]
        address = ray.get(self.learner.rendezvous.remote())
        world = 1 + sum(ranks)
        ray.get([self.learner.open_weight_group.remote(address, world, self.bucket_mb)]
                + [s.open_weight_group.remote(address, first, world, spec, self.bucket_mb)
                   for s, first in zip(self.samplers, firsts)])
        self.group_open = True

    def _members_in_group(self) -> bool:
        """Whether every sampler still holds its place in the group; one restarted since (a new
        process) does not, and a broadcast to it would leave the others waiting."""
        import ray
        for sampler in self.samplers:
            wait_for_restart(sampler, self.restart_timeout_s)
        return all(ray.get([s.in_weight_group.remote() for s in self.samplers]))

    def _broadcast(self) -> tuple[int, int]:
        """One broadcast of the learner's weights. A sampler restarted since the last one gets a
        new group first; a member lost during a broadcast leaves the others waiting until the
        group's timeout, then costs a new group and another try (up to ``max_retries``)."""
        import ray
        for attempt in range(self.max_retries + 1):
            try:
                if not self.group_open or not self._members_in_group():
                    if self.group_open:
                        self.on_event("weight_group_reformed", attempt=attempt + 1, error="a sampler restarted")
                    self.open_weight_group()
                version = ray.get(self.learner.policy_version.remote())
                sent = self.learner.broadcast_weights.remote()
                ray.get([s.receive_weights.remote(version) for s in self.samplers])
                return version, ray.get(sent)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                if attempt == self.max_retries:
                    raise
                self.group_open = False
                self.on_event("weight_group_reformed", attempt=attempt + 1, error=describe(e))
                for sampler in self.samplers:
                    wait_for_restart(sampler, self.restart_timeout_s)


def sampler_settings(s, model: str, colocated: bool = False) -> SamplerSettings:
    """``SamplerSettings`` from a config's ``sampler:`` section."""
    extra = {}
    if s.backend == "vllm":        # the backend turns sleep mode off where the platform lacks it
        extra = {**s.engine_args.model_dump(exclude_none=True), "enable_sleep_mode": colocated}
    return SamplerSettings(
        model=model, backend=s.backend, dtype=s.dtype, threads=s.threads,
        device="cuda" if s.num_gpus > 0 else "cpu", system_prompt=s.system_prompt,
        tensor_parallel_size=s.tensor_parallel_size, gpu_memory_utilization=s.gpu_memory_utilization,
        static_cache=s.static_cache, extra=extra)


def sampler_start_timeout(s, ray_cfg) -> float:
    """How long a sampler may take to start: a vLLM engine loads, profiles and maybe compiles
    (25–120 s on a CPU), far beyond waiting for free resources."""
    return s.start_timeout_s or (600.0 if s.backend == "vllm" else ray_cfg.placement_timeout_s)


def start_roles(cfg, placement) -> Roles:
    """Create the sampler, learner and (optional) grader actors of an SRT-shaped config where
    ``placement`` (a reserved ``services.placement.Placement``) puts them."""
    import ray
    from actors.sandbox.grader import AnswerGrader
    s, lc, g = cfg.sampler, cfg.learner, cfg.sandbox
    settings = sampler_settings(s, cfg.model.name, placement.colocated)
    samplers = [ray.remote(Sampler).options(**placement.options("sampler", i)).remote(settings)
                for i in range(s.num_actors)]
    learner_settings = LearnerSettings(
        model=cfg.model.name, lr=lc.lr, weight_decay=lc.weight_decay, betas=tuple(lc.betas),
        grad_clip=lc.grad_clip, policy_loss=lc.policy_loss, clip_low=lc.clip_low,
        clip_high=lc.clip_high, aggregation=lc.aggregation, kl_coef=lc.kl_coef,
        kl_estimator=lc.kl_estimator, micro_batch_tokens=lc.micro_batch_tokens, autocast=lc.autocast,
        threads=lc.threads, device="cuda" if lc.num_gpus > 0 else "cpu",
        sync_dtype=None if s.dtype == "float32" else s.dtype, seed=cfg.train.seed, tis_cap=lc.tis_cap,
        gradient_checkpointing=lc.gradient_checkpointing, shard_optimizer=lc.shard_optimizer,
        shard_weights=lc.shard_weights)
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
