"""Where each role's actors run: resource requests from the config, a feasibility check against the
cluster's nodes (a request no node can hold fails at once, naming the role and the resource),
placement groups for the sampler and learner (colocated: sharing bundles; disaggregated: one group
per role), and the actor options every job uses to start its actors."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

GIB = 1024 ** 3


class PlacementError(RuntimeError):
    """The cluster cannot hold what the config asks for; the message names the role and resource."""


@dataclass(frozen=True)
class RoleSpec:
    role: str                       # actors are named RUN:ROLE-I (RUN:ROLE when count is 1 and single)
    count: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    restartable: bool = False       # stateless between calls: restarted and its work re-issued
    grouped: bool = False           # placed with a placement group (GPU roles)

    def demand(self) -> dict[str, float]:
        """One actor's request in Ray's resource names (memory in bytes)."""
        d = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        if self.memory_gb:
            d["memory"] = self.memory_gb * GIB
        return {k: float(v) for k, v in d.items() if v}


def role_spec(role: str, count: int, section, restartable=False, grouped=False) -> RoleSpec:
    """A role whose per-actor resources are a config section's (``num_cpus``, ``num_gpus``, …)."""
    return RoleSpec(role, count, section.num_cpus, section.num_gpus, section.memory_gb,
                    dict(section.resources), restartable, grouped)


def role_specs(cfg) -> list[RoleSpec]:
    """Every role a job's config starts, with its per-actor resources (the job says which)."""
    from services.registry import lookup
    return lookup(cfg.job).roles(cfg)


def _fmt(resource: str, amount: float) -> str:
    return f"{amount / GIB:g} GiB memory" if resource == "memory" else f"{amount:g} {resource}"


def check_feasible(specs: list[RoleSpec], nodes: list[dict[str, float]], colocated: bool = False) -> None:
    """Raise ``PlacementError`` when no node can hold one actor of a role, or the cluster as a whole
    cannot hold every role's actors together. ``nodes``: each alive node's total resources."""
    if not nodes:
        raise PlacementError("the Ray cluster has no alive node")
    totals: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            totals[k] = totals.get(k, 0.0) + v
    wanted: dict[str, float] = {}
    for spec, need in bundle_demands(specs, colocated):
        for k, v in need.items():
            best = max(n.get(k, 0.0) for n in nodes)
            if best < v:
                have = f"the largest node has {_fmt(k, best)}" if best else f"no node has {k!r}"
                raise PlacementError(
                    f"role {spec!r} asks for {_fmt(k, v)} per actor; {have} "
                    f"(cluster total: {_fmt(k, totals.get(k, 0.0))}). Lower it in the config or add nodes "
                    f"with {k}.")
        if not any(all(n.get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
            raise PlacementError(f"role {spec!r} asks for {need} per actor; each resource exists, "
                                 f"but no single node has all of them")
        for k, v in need.items():
            wanted[k] = wanted.get(k, 0.0) + v
    for k, v in wanted.items():
        if totals.get(k, 0.0) + 1e-9 < v:
            users = [s.role for s in specs if s.count and s.demand().get(k)]
            raise PlacementError(f"roles {users} ask for {_fmt(k, v)} in all; the cluster has "
                                 f"{_fmt(k, totals.get(k, 0.0))}")


def bundle_demands(specs: list[RoleSpec], colocated: bool) -> list[tuple[str, dict[str, float]]]:
    """(label, request) per actor, as it will be reserved: colocated, the learner's actor shares the
    first sampler's bundle, CPUs add up and the GPU is shared."""
    out = [(s.role, s.demand()) for s in specs for _ in range(s.count)]
    if colocated and _colocatable(specs):
        learner = next(s for s in specs if s.role == "learner")
        i = next(i for i, (r, _) in enumerate(out) if r == "sampler")
        out.remove(("learner", learner.demand()))
        out[i] = ("sampler+learner", _share(out[i][1], learner.demand()))
    return out


def _colocatable(specs: list[RoleSpec]) -> bool:
    roles = {s.role: s for s in specs}
    return "sampler" in roles and "learner" in roles and roles["sampler"].count > 0


def _share(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    out = {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b)}
    if "GPU" in a or "GPU" in b:
        out["GPU"] = max(a.get("GPU", 0.0), b.get("GPU", 0.0))
    return out


def alive_nodes() -> list[dict]:
    import ray
    return [n for n in ray.nodes() if n.get("Alive")]


class Placement:
    """Reserves a run's roles on the cluster and hands out each actor's ``.options(...)``."""

    def __init__(self, run_name: str, specs: list[RoleSpec], ray_cfg, on_event: Callable[..., Any] | None = None):
        self.run_name, self.specs, self.cfg = run_name, {s.role: s for s in specs}, ray_cfg
        self.colocated = ray_cfg.placement == "colocated" and _colocatable(specs)
        self.groups: dict[str, Any] = {}        # role → placement group
        self.roles_by_name: dict[str, str] = {}  # actor name → role, for every actor handed options
        self.bundles: dict[str, tuple] = {}      # actor name → (placement group, bundle index)
        self.on_event = on_event or (lambda *a, **k: None)

    def reserve(self) -> "Placement":
        """Check feasibility, then create and wait for the placement groups."""
        import ray
        from ray.util.placement_group import placement_group
        specs = list(self.specs.values())
        try:
            check_feasible(specs, [n["Resources"] for n in alive_nodes()], self.colocated)
        except PlacementError:
            if not self.cfg.autoscaling:
                raise
            from ray.autoscaler.sdk import request_resources
            request_resources(bundles=[d for _, d in bundle_demands(specs, self.colocated) if d])
        grouped = [s for s in specs if s.grouped and s.count and s.demand()]
        if self.colocated:
            bundles = [d for label, d in bundle_demands(grouped, True)]
            pg = placement_group(bundles, strategy="PACK", name=f"{self.run_name}:sampler+learner")
            self.groups = {"sampler": pg, "learner": pg}
        else:
            for s in grouped:
                self.groups[s.role] = placement_group([s.demand()] * s.count, strategy="PACK",
                                                      name=f"{self.run_name}:{s.role}")
        pending = {role: pg.ready() for role, pg in self.groups.items()}
        deadline = time.monotonic() + self.cfg.placement_timeout_s
        for role, ref in pending.items():
            try:
                ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                self.release()
                raise PlacementError(
                    f"role {role!r} could not be placed within ray.placement_timeout_s="
                    f"{self.cfg.placement_timeout_s:g}: the cluster has the resources "
                    f"({self.specs[role].demand()} per actor) but they are in use "
                    f"(available now: {ray.available_resources()})") from None
        self.on_event("placement_reserved", roles={s.role: s.demand() for s in specs},
                      colocated=self.colocated)
        return self

    def actor_name(self, role: str, index: int | None = None) -> str:
        return f"{self.run_name}:{role}" if index is None else f"{self.run_name}:{role}-{index}"

    def options(self, role: str, index: int = 0, name: str | None = None, **extra) -> dict:
        """``ray.remote(cls).options(**placement.options(role, i))``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        s = self.specs[role]
        opts: dict[str, Any] = {"name": name or self.actor_name(role, index), "num_cpus": s.num_cpus,
                                "num_gpus": s.num_gpus, "resources": dict(s.resources)}
        if s.memory_gb:
            opts["memory"] = int(s.memory_gb * GIB)
        if s.restartable:
            opts.update(max_restarts=self.cfg.max_restarts, max_task_retries=0)
        pg = self.groups.get(role)
        if pg is not None:
            bundle = index
            if self.colocated:
                bundle = 0 if role == "learner" else index
                both = self.specs["sampler"].num_gpus and self.specs["learner"].num_gpus
                if bundle == 0 and both:        # sampler-0 and the learner share its GPU(s)
                    opts["num_gpus"] = s.num_gpus / 2
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)
            self.bundles[opts["name"]] = (pg, bundle)
        opts.update(extra)
        self.roles_by_name[opts["name"]] = role
        return opts

    def wait_ready(self, role: str, refs: list) -> list:
        """``ray.get`` actors' ``ready()`` calls; a role not started within the placement timeout is
        an error naming it, not a hang."""
        import ray
        try:
            return ray.get(refs, timeout=self.cfg.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise PlacementError(
                f"role {role!r} did not start within ray.placement_timeout_s={self.cfg.placement_timeout_s:g}: "
                f"it asks for {self.specs[role].demand()} per actor; available now: "
                f"{ray.available_resources()}") from None

    def where(self, attempts: int = 4, wait_s: float = 2.0) -> tuple[dict[str, list[dict]], str]:
        """Each of this run's actors: role, name, node id and IP, and where that came from. Ray's
        state API (through the dashboard, slow to answer on a busy machine: retried); failing
        that, the node each placement-group bundle was reserved on (the GCS, no dashboard)."""
        import time
        nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in alive_nodes()}
        why = ""
        for attempt in range(attempts):
            try:
                return self._where_state_api(nodes), "state API"
            except Exception as e:       # ServerUnavailable, a timeout: no (ready) dashboard
                why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
                if attempt + 1 < attempts:
                    time.sleep(wait_s * (attempt + 1))
        return self._where_bundles(nodes), f"placement groups (state API failed: {why})"

    def _where_state_api(self, nodes: dict) -> dict[str, list[dict]]:
        from ray.util.state import list_actors
        actors = list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, timeout=20,
                             raise_on_missing_output=False)
        out: dict[str, list[dict]] = {}
        for a in actors:
            if a.name in self.roles_by_name:
                out.setdefault(self.roles_by_name[a.name], []).append(
                    {"name": a.name, "node_id": a.node_id, "node_ip": nodes.get(a.node_id, "?")})
        return out

    def _where_bundles(self, nodes: dict) -> dict[str, list[dict]]:
        from ray.util import placement_group_table
        out: dict[str, list[dict]] = {}
        for name, (pg, bundle) in self.bundles.items():
            node_id = placement_group_table(pg).get("bundles_to_node_id", {}).get(bundle)
            out.setdefault(self.roles_by_name[name], []).append(
                {"name": name, "node_id": node_id, "node_ip": nodes.get(node_id, "?")})
        return out

    def report(self, store, progress) -> None:
        """Record where the roles landed: a ``roles_placed`` event and one line of progress."""
        where, source = self.where()
        if where:
            store.event("roles_placed", roles=where, source=source)
            progress.note("placed: " + "; ".join(f"{role} on {sorted({a['node_ip'] for a in actors})}"
                                                 for role, actors in sorted(where.items())))
        else:
            store.event("roles_placed_unknown", source=source)
            progress.note(f"[yellow]where the roles run is unknown: {source}")

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group
        for pg in {id(pg): pg for pg in self.groups.values()}.values():
            try:
                remove_placement_group(pg)
            except Exception:       # already gone with the cluster
                pass
        self.groups = {}
