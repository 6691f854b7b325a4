"""What a sandbox is asked to do and what it answers; shared by both backends."""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATUSES = ("ok", "error", "timeout", "memory", "killed")
_CONFINE_IMPORT = re.compile(r"^from actors\.sandbox\.confine import \([^)]*\)\n", re.M)
# the runner runs as ``python3 -c`` with nothing of evoray installed: its helpers go in front of it
RUNNER_SOURCE = ((Path(__file__).parent / "confine.py").read_text() +
                 _CONFINE_IMPORT.sub("", (Path(__file__).parent / "runner.py").read_text(), count=1))


class SandboxError(RuntimeError):
    """The sandbox itself failed (no engine, no image, bwrap refused) — not the program in it."""


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0       # wall time of the command
    memory_mb: int = 512          # address space of the program (and the container's cgroup)
    pids: int = 64                # processes and threads
    cpus: float = 1.0             # docker only: CPU quota
    disk_mb: int = 64             # size of the /work and /tmp tmpfs
    output_bytes: int = 1 << 20   # per stream; the rest is counted and dropped
    file_mb: int = 32             # largest file the program may write


@dataclass
class ExecRequest:
    """Run ``command`` in an empty /work holding ``files`` (relative path → text)."""
    command: list[str]
    files: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    collect: list[str] = field(default_factory=list)   # globs under /work returned after the run
    env: dict[str, str] = field(default_factory=dict)  # never secrets: model-written code reads it

    @classmethod
    def program(cls, code: str, stdin: str = "", limits: SandboxLimits | None = None) -> "ExecRequest":
        return cls(["python3", "main.py"], {"main.py": code}, stdin, limits or SandboxLimits())

    def runner_input(self, **backend_fields) -> dict:
        lim = self.limits
        return {"command": self.command, "files": self.files, "stdin": self.stdin,
                "collect": self.collect, "env": self.env, "timeout_s": lim.timeout_s,
                "memory_mb": lim.memory_mb, "output_bytes": lim.output_bytes,
                "file_mb": lim.file_mb, **backend_fields}


@dataclass
class ExecResult:
    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    backend: str
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The CLI contract: exactly these keys (collected files are an API extra)."""
        d = asdict(self)
        d.pop("files")
        return d

    @classmethod
    def from_runner(cls, out: dict, backend: str) -> "ExecResult":
        return cls(out["status"], out["exit_code"], out["stdout"], out["stderr"], out["wall_s"],
                   backend, out.get("files", {}))

    @classmethod
    def from_batch(cls, raw: bytes, n: int, backend: str) -> list["ExecResult"]:
        """Parse the runner's answer to a batch of ``n``; raises ValueError when it is not one."""
        return cls.parse_batch(raw, n, backend)[0]

    @classmethod
    def parse_batch(cls, raw: bytes, n: int,
                    backend: str) -> tuple[list["ExecResult"], bool, list[int]]:
        """The results, whether the runner left its sandbox clean (nothing of the batch still
        running, nothing it could not wipe: a sandbox that is not clean is never reused), and
        which requests it did not run because it could not wipe the sandbox for them."""
        answer = json.loads(raw)
        results = answer["results"]
        if len(results) != n:
            raise ValueError(f"the runner answered {len(results)} results for {n} requests")
        rerun = [i for i, r in enumerate(results) if r.get("rerun")]
        return [cls.from_runner(r, backend) for r in results], answer.get("clean") is True, rerun

    @classmethod
    def sandbox_failure(cls, backend: str, wall_s: float, why: str) -> "ExecResult":
        """The runner never answered: the program killed it, or the wall limit hit the whole box."""
        return cls("killed", None, "", f"evoray: {why}", round(wall_s, 4), backend)


def run_batch_or_each(run_batch, reqs: list[ExecRequest]) -> list[ExecResult]:
    """One runner call for the whole batch; if the runner died (a program killed it), the batch's
    requests are retried one by one, so one hostile program cannot fail its neighbours."""
    results = run_batch(reqs)
    if len(reqs) > 1 and all(r.status == "killed" and r.exit_code is None and
                             r.stderr.startswith("evoray: ") for r in results):
        return [run_batch([req])[0] for req in reqs]
    return results
