"""bubblewrap backend, for hosts without Docker.

Every namespace is unshared (no network: only a down loopback), the host's /usr is mounted read-only,
/work and /tmp are size-limited tmpfs, the environment is cleared, and the runner applies rlimits
(address space, processes, file size, CPU). Run as root, we first drop to an unprivileged uid: the
kernel exempts root from RLIMIT_NPROC, and the sandbox must not own any host file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from actors.sandbox.types import RUNNER_SOURCE, ExecRequest, ExecResult, SandboxError

NOBODY = 65534
GRACE_S = 10.0   # beyond the program's own limit: runner start-up and result transfer


def _drop_privileges(uid: int):
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return drop


class BwrapSandbox:
    backend = "bwrap"

    def __init__(self, python: str = "/usr/bin/python3", gateway_dir: str | None = None,
                 uid: int = NOBODY):
        self.bwrap = shutil.which("bwrap")
        if not self.bwrap:
            raise SandboxError("bubblewrap is not installed (apt-get install bubblewrap)")
        if not Path(python).exists():
            raise SandboxError(f"sandbox python {python} does not exist")
        self.python = python
        self.gateway_dir = gateway_dir
        self.uid = uid if os.geteuid() == 0 else None

    def argv(self, req: ExecRequest) -> list[str]:
        disk = str(req.limits.disk_mb * 1024 * 1024)
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                "--ro-bind", "/usr", "/usr"]
        for link in ("bin", "sbin", "lib", "lib64", "lib32"):
            target = Path("/") / link
            if target.is_symlink():
                args += ["--symlink", os.readlink(target), f"/{link}"]
            elif target.is_dir():
                args += ["--ro-bind", str(target), f"/{link}"]
        if Path("/etc/ld.so.cache").exists():
            args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--size", disk, "--tmpfs", "/work", "--size", disk, "--tmpfs", "/tmp",
                 "--chdir", "/work"]
        if self.gateway_dir:
            args += ["--ro-bind", self.gateway_dir, "/run/evoray"]
        # the root bwrap built is a tmpfs: make it read-only too, so only /work and /tmp take writes
        return args + ["--remount-ro", "/", "--", self.python, "-c", RUNNER_SOURCE]

    def run(self, req: ExecRequest) -> ExecResult:
        # RLIMIT_NPROC counts the uid's processes in the sandbox's own user namespace
        payload = json.dumps(req.runner_input(nproc=req.limits.pids, kill_all=True))
        start = time.monotonic()
        try:
            proc = subprocess.run(self.argv(req), input=payload.encode(), capture_output=True,
                                  timeout=req.limits.timeout_s + GRACE_S,
                                  preexec_fn=_drop_privileges(self.uid) if self.uid else None)
        except subprocess.TimeoutExpired:
            return ExecResult.sandbox_failure(self.backend, time.monotonic() - start,
                                              "sandbox did not answer within its wall limit")
        try:
            return ExecResult.from_runner(json.loads(proc.stdout), self.backend)
        except (json.JSONDecodeError, KeyError):
            err = proc.stderr.decode(errors="replace")[-500:]
            if proc.returncode != 0 and "bwrap:" in err:
                raise SandboxError(f"bwrap failed: {err.strip()}")
            return ExecResult.sandbox_failure(self.backend, time.monotonic() - start,
                                              f"the runner died (exit {proc.returncode}) {err}")

    def close(self) -> None:
        pass
