"""bubblewrap backend, for hosts without Docker.

Every namespace is unshared (no network: only a down loopback), the host's /usr is mounted read-only,
/work is a size-limited tmpfs, /dev is read-only, the environment is cleared. Each task then runs in
PID, IPC and mount namespaces of its own (fresh /proc, /tmp, /dev/shm, /dev/mqueue) and the program
in a user namespace of its own, under rlimits and a seccomp filter (``actors/sandbox/runner.py``).
Run as root, we first drop to an unprivileged uid: the kernel exempts root from RLIMIT_NPROC, and
the sandbox must not own any host file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from actors.sandbox.types import (RUNNER_SOURCE, ExecRequest, ExecResult, SandboxError,
                                  run_batch_or_each)

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

    def argv(self, reqs: list[ExecRequest]) -> list[str]:
        disk = str(max(r.limits.disk_mb for r in reqs) * 1024 * 1024)
        # the runner is uid 0 of the sandbox's user namespace with CAP_SYS_ADMIN there (and nothing
        # outside it): enough to give each task fresh PID, IPC and mount namespaces
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                "--uid", "0", "--gid", "0", "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN",
                "--cap-add", "CAP_SETFCAP",   # lets a program's own namespace map the runner's uid
                "--clearenv", "--setenv", "PATH", "/usr/bin:/bin",
                "--ro-bind", "/usr", "/usr"]
        for link in ("bin", "sbin", "lib", "lib64", "lib32"):
            target = Path("/") / link
            if target.is_symlink():
                args += ["--symlink", os.readlink(target), f"/{link}"]
            elif target.is_dir():
                args += ["--ro-bind", str(target), f"/{link}"]
        if Path("/etc/ld.so.cache").exists():
            args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        # /dev read-only: the device nodes programs use stay writable as devices, and each task
        # gets its own /dev/shm and /dev/mqueue mounted over these (actors/sandbox/runner.py)
        args += ["--proc", "/proc", "--dev", "/dev", "--dir", "/dev/mqueue", "--remount-ro", "/dev",
                 "--size", disk, "--tmpfs", "/work", "--size", disk, "--tmpfs", "/tmp",
                 "--chdir", "/work"]
        if self.gateway_dir:
            args += ["--ro-bind", self.gateway_dir, "/run/evoray"]
        # the root bwrap built is a tmpfs: make it read-only too, so only /work and /tmp take writes
        return args + ["--remount-ro", "/", "--", self.python, "-c", RUNNER_SOURCE]

    def run(self, req: ExecRequest) -> ExecResult:
        return self.run_batch([req])[0]

    def run_many(self, reqs: list[ExecRequest]) -> list[ExecResult]:
        return run_batch_or_each(self.run_batch, reqs)

    def run_batch(self, reqs: list[ExecRequest]) -> list[ExecResult]:
        # RLIMIT_NPROC counts the uid's processes in the sandbox's own user namespace
        payload = json.dumps({"isolation": "namespaces", "batch": [
            r.runner_input(nproc=r.limits.pids, disk_bytes=r.limits.disk_mb << 20) for r in reqs]})
        start = time.monotonic()
        try:
            proc = subprocess.run(self.argv(reqs), input=payload.encode(), capture_output=True,
                                  timeout=sum(r.limits.timeout_s for r in reqs) + GRACE_S,
                                  preexec_fn=_drop_privileges(self.uid) if self.uid else None)
        except subprocess.TimeoutExpired:
            return [ExecResult.sandbox_failure(self.backend, time.monotonic() - start,
                                               "sandbox did not answer within its wall limit")] * len(reqs)
        try:
            return ExecResult.from_batch(proc.stdout, len(reqs), self.backend)
        except (ValueError, KeyError):
            err = proc.stderr.decode(errors="replace")[-500:]
            if proc.returncode != 0 and "bwrap:" in err:
                raise SandboxError(f"bwrap failed: {err.strip()}")
            return [ExecResult.sandbox_failure(self.backend, time.monotonic() - start,
                                               f"the runner died (exit {proc.returncode}) {err}")] * len(reqs)

    def close(self) -> None:
        pass
