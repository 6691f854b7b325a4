"""Isolated code execution: one interface, two backends (docker, bwrap).

``make_sandbox("auto")`` picks docker when an engine answers, else bubblewrap. Both are thread-safe
and answer ``run(req)``, ``run_many(reqs)`` (one runner call for the batch) and ``close()``; the
Ray actor that holds one is ``jobs.dgm.worker.AttemptWorker``.
"""
from __future__ import annotations

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
