"""The driver side of a weight sync: learner → every sampler through the object store (packed
once), by broadcast in buckets, or by CUDA IPC. Whoever drives a learner and samplers (SRT's
roles, UI-Genie's agent, the weight-sync bench) holds one ``WeightSync``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from actors.calls import describe, wait_for_restart


def plain_get(i: int, ref, call):
    import ray
    return ray.get(ref)


@dataclass
class WeightSync:
    learner: Any
    samplers: list
    transport: str = "object_store"   # "broadcast": a process group of the learner and samplers;
                                      # "ipc": CUDA IPC to samplers on the learner's GPU
    bucket_mb: float = 256
    get: Callable = plain_get         # (sampler index, ref, re-issue call) → result; retries live here
    on_event: Callable[..., Any] = lambda *a, **k: None
    max_retries: int = 3
    restart_timeout_s: float = 300.0
    version: int = 0
    weights: Any = None               # the latest packed weights ([ObjectRef]), for restarted samplers
    shared: Any = None                # the latest SharedWeights (ipc), for restarted samplers
    group_open: bool = False
    names: list = None                # the samplers' actor names, for events (else sampler-I)

    def sync(self) -> dict[str, float]:
        """Returns the version, MB and MB/s."""
        start = time.perf_counter()
        if self.transport == "broadcast":
            self.version, nbytes = self._broadcast()
        elif self.transport == "ipc":
            self.version, nbytes = self._share()
        else:
            self.version, nbytes = self.through_object_store(range(len(self.samplers)))
        seconds = time.perf_counter() - start
        return {"sync/version": float(self.version), "sync/mb": nbytes / 1e6,
                "sync/mb_per_s": nbytes / 1e6 / max(seconds, 1e-9) * len(self.samplers),
                "time/sync_s": seconds}

    def bring_up(self, i: int) -> None:
        """Give sampler ``i``, just restarted (a new process), the latest weights."""
        import ray
        sampler = self.samplers[i]
        if self.transport == "broadcast":
            self.group_open = False           # the restarted sampler is not in the old group
            self.sync()
        elif self.shared is not None:
            if not ray.get(sampler.load_shared_weights.remote(self.shared)):
                self.through_object_store([i])
        elif self.weights is not None:
            ray.get(sampler.load_weights.remote(self.weights))

    def through_object_store(self, which) -> tuple[int, int]:
        """The learner packs its weights once; samplers ``which`` load them."""
        import ray
        nbytes, packed = ray.get(self.learner.export_weights.remote())    # [ref]: see export_weights
        self.weights = packed
        call = lambda i: self.samplers[i].load_weights.remote(packed)
        refs = {i: call(i) for i in which}
        return [self.get(i, ref, call) for i, ref in refs.items()][0], nbytes

    def _share(self) -> tuple[int, int]:
        """CUDA IPC to every sampler on the learner's GPU; the object store for the others."""
        import ray
        self.shared = ray.get(self.learner.share_weights.remote())
        call = lambda i: self.samplers[i].load_shared_weights.remote(self.shared)
        mapped = [self.get(i, call(i), call) for i in range(len(self.samplers))]
        others = [i for i, ok in enumerate(mapped) if not ok]
        if others:
            self.through_object_store(others)
        return self.shared.version, self.shared.nbytes

    def open_group(self) -> None:
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

    def _restarted_samplers(self, attempt: int) -> bool:
        """Whether a sampler restarted (a new process, out of the group) since the group formed; a
        broadcast to it would leave the others waiting. No call saw such a restart (the sampler
        died between calls, or during a sync), so each is reported here as ``actor_restarted``."""
        import ray
        for sampler in self.samplers:
            wait_for_restart(sampler, self.restart_timeout_s)
        inside = ray.get([s.in_weight_group.remote() for s in self.samplers])
        for i in (i for i, ok in enumerate(inside) if not ok):
            self.on_event("actor_restarted", role="sampler", attempt=attempt,
                          actor=self.names[i] if self.names else f"sampler-{i}",
                          error="restarted since the weight group formed")
        return not all(inside)

    def _broadcast(self) -> tuple[int, int]:
        """One broadcast of the learner's weights. A sampler restarted since the last one gets a
        new group first; a member lost during a broadcast leaves the others waiting until the
        group's timeout, then costs a new group and another try (up to ``max_retries``)."""
        import ray
        failed = False                    # a broadcast failed: the group is unusable, restarts or not
        for attempt in range(self.max_retries + 1):
            try:
                if self.group_open and (self._restarted_samplers(attempt + 1) or failed):
                    if not failed:
                        self.on_event("weight_group_reformed", attempt=attempt + 1, error="a sampler restarted")
                    self.group_open = False
                if not self.group_open:
                    self.open_group()
                version = ray.get(self.learner.policy_version.remote())
                sent = self.learner.broadcast_weights.remote()
                ray.get([s.receive_weights.remote(version) for s in self.samplers])
                return version, ray.get(sent)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                if attempt == self.max_retries:
                    raise
                failed = True
                self.on_event("weight_group_reformed", attempt=attempt + 1, error=describe(e))
                for sampler in self.samplers:
                    wait_for_restart(sampler, self.restart_timeout_s)
