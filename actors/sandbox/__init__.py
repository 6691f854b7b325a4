"""Isolated code execution: one interface, two backends (docker, bwrap).

``make_sandbox("auto")`` picks docker when an engine answers, else bubblewrap. ``SandboxWorker`` is
the Ray actor: it owns one backend (for docker, a pool of warm containers) and runs requests on as
many threads as the pool has containers.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from actors.sandbox.types import (STATUSES, ExecRequest, ExecResult, SandboxError,  # noqa: F401
                                  SandboxLimits)

BACKENDS = ("auto", "docker", "bwrap")


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not (for skip reasons and ``auto``)."""
    try:
        import docker
        docker.from_env(timeout=5).ping()
        return None
    except Exception as e:   # no SDK, no socket, engine down: all mean "not here"
        return f"no Docker engine answers: {type(e).__name__}: {e}"


def make_sandbox(backend: str = "auto", limits: SandboxLimits | None = None, pool_size: int = 1,
                 gateway_dir: str | None = None, image: str | None = None):
    if backend not in BACKENDS:
        raise SandboxError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "docker" if docker_available() is None else "bwrap"
    if backend == "docker":
        from actors.sandbox.docker_backend import DockerSandbox
        return DockerSandbox(limits, pool_size=pool_size, image=image, gateway_dir=gateway_dir)
    from actors.sandbox.bwrap import BwrapSandbox
    return BwrapSandbox(gateway_dir=gateway_dir)


class SandboxWorker:
    """A Ray actor around one backend; ``pool_size`` tasks run at once (threads, not processes:
    the work happens in the sandbox, the actor only waits)."""

    def __init__(self, backend: str = "auto", limits: SandboxLimits | None = None,
                 pool_size: int = 1, gateway_dir: str | None = None):
        self.sandbox = make_sandbox(backend, limits, pool_size, gateway_dir)
        self.pool_size = pool_size
        self.threads = ThreadPoolExecutor(max_workers=pool_size)
        if hasattr(self.sandbox, "warm"):
            self.sandbox.warm()

    def backend(self) -> str:
        return self.sandbox.backend

    def run(self, req: ExecRequest) -> ExecResult:
        return self.sandbox.run(req)

    def run_many(self, reqs: list[ExecRequest]) -> list[ExecResult]:
        """Split over the pool; each part is one batch (one runner call) in one sandbox."""
        k = -(-len(reqs) // self.pool_size) or 1
        parts = [reqs[i:i + k] for i in range(0, len(reqs), k)]
        return [r for rs in self.threads.map(self.sandbox.run_many, parts) for r in rs]

    def close(self) -> None:
        self.sandbox.close()
