"""The job controller's Ray side that every loop shares: start or join Ray, the custom resources a
local instance needs, work dealt to actors in turn, a sampler's settings from its config section."""
from __future__ import annotations

import contextlib
import os

from actors.sampler import SamplerSettings


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
        with local_auth(ray_cfg.dashboard_host):
            ray.init(num_cpus=ray_cfg.num_cpus, include_dashboard=ray_cfg.include_dashboard,
                     dashboard_host=ray_cfg.dashboard_host, namespace=ray_cfg.namespace,
                     resources=resources or None, log_to_driver=True)


@contextlib.contextmanager
def local_auth(dashboard_host: str):
    """A local instance serving only this machine (the dashboard on loopback) starts without
    Ray's token authentication, unless the user chose a mode: no token generated in ~/.ray and no
    warning on every run. Only for ``ray.init``: later clients in this process choose anew."""
    chosen = "RAY_AUTH_MODE" in os.environ
    if not chosen and dashboard_host in ("127.0.0.1", "localhost", "::1"):
        os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        yield
    finally:
        if not chosen:
            os.environ.pop("RAY_AUTH_MODE", None)


def check_address(address: str | None) -> None:
    """A Ray address that does not answer fails here, in seconds, naming it — not after Ray's
    own connection retries (minutes). ``auto``/``local`` and unset are left to Ray."""
    import socket
    from urllib.parse import urlsplit
    if not address or address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConnectionError(f"ray.address {address!r}: expected HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise ConnectionError(f"ray.address {address}: nothing answers there ({e.strerror or e}); "
                              f"is the cluster up? (`ray status --address {host}:{port}`)") from None


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


def round_robin(n: int, k: int) -> list[list[int]]:
    """Indices 0..n-1 dealt to k actors in turn; actors with nothing to do are left out."""
    return [c for c in (list(range(n))[i::k] for i in range(k)) if c]


def sampler_settings(s, model: str, colocated: bool = False) -> SamplerSettings:
    """``SamplerSettings`` from a config's ``sampler:`` section."""
    extra = {}
    if s.backend == "vllm":        # the backend turns sleep mode off where the platform lacks it
        extra = {**s.engine_args.model_dump(exclude_none=True), "enable_sleep_mode": colocated}
    return SamplerSettings(
        model=model, backend=s.backend, dtype=s.dtype, threads=s.threads,
        device="cuda" if s.num_gpus > 0 else "cpu", system_prompt=s.system_prompt,
        tensor_parallel_size=s.tensor_parallel_size, gpu_memory_utilization=s.gpu_memory_utilization,
        static_cache=s.static_cache, batch_tokens=s.batch_tokens, extra=extra)


def sampler_start_timeout(s, ray_cfg) -> float:
    """How long a sampler may take to start: a vLLM engine loads, profiles and maybe compiles
    (25–120 s on a CPU), far beyond waiting for free resources."""
    return s.start_timeout_s or (600.0 if s.backend == "vllm" else ray_cfg.placement_timeout_s)
