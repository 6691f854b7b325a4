"""Docker backend: a pool of warm containers, reused between tasks.

Each container runs a zombie reaper as PID 1, with no network, a read-only root filesystem, tmpfs
/work and /tmp, memory/pids/CPU cgroup limits, no-new-privileges, and of all capabilities only
SETUID, SETGID and KILL — for root, which only PID 1 and the runner are. A task is one ``docker
exec`` of the runner as root; the program runs as uid 1000 with none of them, so it can neither
ptrace, signal nor read the runner, whose stdout carries the verdicts. Before each program, its
uid-1000 supervisor wipes /work, /tmp, /dev/shm, /dev/mqueue and SysV IPC; after it, the runner
kills every process of the task. A container whose runner did not answer, or answered that
something was left over, is removed and replaced, never reused. Starting a container costs ~1 s;
an exec ~50 ms — the pool is why this is far faster than one ``docker run`` per task.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import socket
import struct
import threading
import time

from actors.sandbox.image import ensure_image
from actors.sandbox.types import (RUNNER_SOURCE, ExecRequest, ExecResult, SandboxError,
                                  SandboxLimits, run_batch_or_each)

GRACE_S = 10.0
# PID 1 of each container: reaps orphans (so zombies never eat the pids limit) and is exempt
# from the runner's kill(-1), which ends everything else.
REAPER = ("import os, time\n"
          "while True:\n"
          "    try:\n"
          "        os.wait()\n"
          "    except ChildProcessError:\n"
          "        time.sleep(0.5)\n")
SANDBOX_UID = "1000:1000"
RUNNER_UID = "0:0"
# what root (PID 1 and the runner) keeps: to start the program as uid 1000 and to kill it all
RUNNER_CAPS = ["SETUID", "SETGID", "KILL"]


def container_options(image: str, limits: SandboxLimits, gateway_dir: str | None) -> dict:
    disk = f"size={limits.disk_mb}m,uid=1000,gid=1000,mode=0700"
    opts = dict(image=image, command=["python3", "-c", REAPER], detach=True, user=SANDBOX_UID,
                network_mode="none", read_only=True, tmpfs={"/work": disk, "/tmp": disk},
                mem_limit=f"{limits.memory_mb}m", memswap_limit=f"{limits.memory_mb}m",
                pids_limit=limits.pids, nano_cpus=int(limits.cpus * 1e9),
                cap_drop=["ALL"], security_opt=["no-new-privileges"], environment={},
                labels={"evoray.sandbox": f"{socket.gethostname()}:{os.getpid()}"})
    if gateway_dir:
        opts["volumes"] = {gateway_dir: {"bind": "/run/evoray", "mode": "ro"}}
    return opts


def pool_container_options(image: str, limits: SandboxLimits, gateway_dir: str | None) -> dict:
    """A warm container: root PID 1 and runner (the program never is), two more pids for them."""
    opts = container_options(image, limits, gateway_dir)
    opts.update(user=RUNNER_UID, cap_add=RUNNER_CAPS, pids_limit=limits.pids + 2)
    return opts


def read_exec_stdout(sock: socket.socket, deadline: float) -> bytes:
    """Demultiplex docker's attach stream (8-byte frame headers) and keep stream 1, stdout."""
    buf, out = b"", bytearray()
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(out)
        buf += chunk
        while len(buf) >= 8:
            kind, size = buf[0], struct.unpack(">I", buf[4:8])[0]
            if len(buf) < 8 + size:
                break
            if kind == 1:
                out += buf[8:8 + size]
            buf = buf[8 + size:]


class DockerSandbox:
    backend = "docker"

    def __init__(self, limits: SandboxLimits | None = None, pool_size: int = 1,
                 image: str | None = None, gateway_dir: str | None = None):
        import docker
        try:
            self.client = docker.from_env()
            self.client.ping()
        except Exception as e:
            raise SandboxError(f"no Docker engine answers ({e})") from e
        self.limits = limits or SandboxLimits()
        self.image = ensure_image(self.client, image)
        self.gateway_dir = gateway_dir
        self.pool_size = pool_size
        self.idle: queue.Queue = queue.Queue()
        self.all: list = []
        self.lock = threading.Lock()
        atexit.register(self.close)

    def _new_container(self):
        opts = pool_container_options(self.image, self.limits, self.gateway_dir)
        opts.pop("detach")
        c = self.client.containers.create(**opts)
        try:
            c.start()
        except Exception as e:
            c.remove(force=True)
            raise SandboxError(f"cannot start a sandbox container from {self.image}: {e}") from e
        with self.lock:
            self.all.append(c)
        return c

    def warm(self) -> None:
        """Start the whole pool now, so the first tasks don't pay for container start-up."""
        while len(self.all) < self.pool_size:
            self.idle.put(self._new_container())

    def _acquire(self):
        with self.lock:
            grow = self.idle.empty() and len(self.all) < self.pool_size
        return self._new_container() if grow else self.idle.get()

    def _discard(self, container) -> None:
        with self.lock:
            self.all = [c for c in self.all if c.id != container.id]
        try:
            container.remove(force=True)
        except Exception:
            pass

    def run(self, req: ExecRequest) -> ExecResult:
        return self.run_batch([req])[0]

    def run_many(self, reqs: list[ExecRequest]) -> list[ExecResult]:
        return run_batch_or_each(self.run_batch, reqs)

    def run_batch(self, reqs: list[ExecRequest], retry: bool = True) -> list[ExecResult]:
        """All of ``reqs`` in one exec of the runner, in one container, one after another."""
        container = self._acquire()
        start = time.monotonic()
        deadline = start + sum(r.limits.timeout_s for r in reqs) + GRACE_S
        try:
            results, clean, rerun = ExecResult.parse_batch(
                self._exec(container, reqs, deadline), len(reqs), self.backend)
        except (OSError, socket.timeout, ValueError, KeyError) as e:
            self._discard(container)   # a wedged or killed runner: never reuse that container
            why = f"the runner did not answer ({type(e).__name__})"
            return [ExecResult.sandbox_failure(self.backend, time.monotonic() - start, why)] * len(reqs)
        if clean:
            self.idle.put(container)
        else:
            self._discard(container)   # something of the batch outlived it: replace, don't reuse
        if rerun and retry:   # the runner could not wipe the container for these: a fresh one
            again = self.run_batch([reqs[i] for i in rerun], retry=False)
            for i, result in zip(rerun, again):
                results[i] = result
        return results

    def _exec(self, container, reqs: list[ExecRequest], deadline: float) -> bytes:
        api = self.client.api
        # the pids cgroup limits processes; RLIMIT_NPROC would count the uid across all containers
        payload = json.dumps({"isolation": "uid", "batch": [r.runner_input() for r in reqs]}).encode()
        ex = api.exec_create(container.id, ["python3", "-c", RUNNER_SOURCE], stdin=True,
                             user=RUNNER_UID, workdir="/", environment={})
        sock = api.exec_start(ex["Id"], socket=True)
        raw = getattr(sock, "_sock", sock)
        try:
            raw.sendall(payload)
            raw.shutdown(socket.SHUT_WR)
            return read_exec_stdout(raw, deadline)
        finally:
            sock.close()

    def close(self) -> None:
        with self.lock:
            containers, self.all = self.all, []
        for c in containers:
            try:
                c.remove(force=True)
            except Exception:
                pass
