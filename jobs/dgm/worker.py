"""The Ray actor that runs DGM attempts: it owns a sandbox (for docker, a pool of warm containers),
a relay from its sandboxes to the gateway, and evaluates agents on tasks, ``pool_size`` at a time."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from actors.sandbox import make_sandbox
from jobs.dgm.attempt import AgentSettings, AttemptResult, AttemptSpec, TaskOutcome, evaluate, run_attempt
from jobs.dgm.tasks import CodeTask
from jobs.dgm.gateway_relay import SocketRelay


class AttemptWorker:
    def __init__(self, backend: str, limits, pool_size: int, gateway: tuple[str, int],
                 image: str | None = None):
        self.relay = SocketRelay(gateway)   # this node's way to the gateway, for its sandboxes
        self.sandbox = make_sandbox(backend, limits, pool_size, self.relay.dir, image)
        if hasattr(self.sandbox, "warm"):
            self.sandbox.warm()
        self.threads = ThreadPoolExecutor(max_workers=pool_size)

    def backend(self) -> str:
        return self.sandbox.backend

    def attempt(self, spec: AttemptSpec) -> AttemptResult:
        return run_attempt(self.sandbox, self.threads, spec)

    def evaluate(self, agent: dict[str, str], tasks: list[CodeTask],
                 settings: AgentSettings) -> list[TaskOutcome]:
        return evaluate(self.sandbox, self.threads, agent, tasks, settings)

    def close(self) -> None:
        self.sandbox.close()
        self.relay.close()
