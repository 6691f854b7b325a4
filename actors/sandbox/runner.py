"""The in-sandbox runner: stdlib only, executed as ``python3 -c <this file>`` inside the sandbox.

It reads ``{"isolation": "uid" | "namespaces", "batch": [request, ...]}`` on stdin, runs each request
in a wiped work dir, and prints ``{"results": [...], "clean": bool}`` on stdout. That stdout is the
only channel a verdict travels on, and no program ever holds it or can reach it.

One task's processes:

    runner        the reporter: non-dumpable; docker: root with only SETUID/SETGID/KILL;
                  bwrap: uid 0 of the sandbox's user namespace, with only CAP_SYS_ADMIN there
      [bwrap: a fork that unshares PID, IPC and mount namespaces, and its child, PID 1 of the task:
       fresh /proc, /tmp, /dev/shm and /dev/mqueue; when it exits the kernel kills everything
       left in the task's PID namespace]
      supervisor  non-dumpable; starts the program and writes its exit status on a pipe that only
                  the runner reads (docker: uid 1000, after wiping the previous task's state)
        program   uid 1000, no capabilities, no_new_privs, a seccomp filter against ptrace,
                  process_vm_*, pidfd_getfd and key rings (bwrap: in its own user namespace)

A program may kill its supervisor (its parent): that is reported as ``killed``. It cannot ptrace or
read any process above it (another uid, or non-dumpable in a user namespace where it has no
capability), nor name the runner. In docker, ``kill(-1)`` from root ends every process of the task
and the runner (a subreaper) reaps them all; a sandbox with anything left over reports
``clean: false`` and the backend replaces it.
"""
import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time

from actors.sandbox.confine import (  # RUNNER_SOURCE inlines this module
    CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, LIBC, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE,
    MS_REC, PROGRAM_UID, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG, PR_SET_SECCOMP, check_paths, clear_dir, clear_sysv_ipc, collect,
    detach_stdio, enter_user_namespace, libc_call, prctl, read_oom_kills, seccomp_filter,
    write_files)

MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
SHARED_DIRS = ("/tmp", "/dev/shm", "/dev/mqueue")   # writable besides the work dir (docker)
STARTED = b"started\n"   # the supervisor's first line: the program's time starts now
PREPARE_S = 60.0         # the most a supervisor may take to wipe and write files before that


class TaskError(RuntimeError):
    """The task could not be started (bad command, unwritable work dir): an ``error`` verdict."""


class NotRun(RuntimeError):
    """The sandbox could not be wiped for the task: it is not run here, but elsewhere (docker)."""


NOT_RUN = {"status": "killed", "exit_code": None, "stdout": "", "wall_s": 0.0, "rerun": True,
           "stderr": "evoray: the sandbox could not be wiped for this task; it runs in another"}


def program_env(req: dict) -> dict:
    workdir = req.get("workdir", "/work")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": "/tmp"}
    env.update(req.get("env", {}))
    return env


def program_setup(req: dict, enter):
    """The program's preexec: its namespace (bwrap), rlimits, no_new_privs, the seccomp filter."""
    mb = 1024 * 1024
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, req["file_mb"] * mb),
              (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CPU, int(req["timeout_s"]) + 2)]
    if req.get("memory_mb"):
        limits.append((resource.RLIMIT_AS, req["memory_mb"] * mb))
    if req.get("nproc"):
        limits.append((resource.RLIMIT_NPROC, req["nproc"]))
    prog = seccomp_filter()

    def setup() -> None:
        try:
            if enter:
                enter()
            for which, value in limits:
                resource.setrlimit(which, (value, value))
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            if prog is not None:
                libc_call("prctl", ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(2),
                          ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0))
        except BaseException as e:   # subprocess only says "preexec_fn failed": say what did
            os.write(2, f"evoray: sandbox setup failed: {type(e).__name__}: {e}\n".encode())
            raise
    return setup


def tell(status_w: int, report: dict) -> None:
    """A report on the status pipe: one line in one write, so writers never interleave."""
    os.write(status_w, b"\n" + json.dumps(report).encode() + b"\n")


def supervise(req: dict, fds: tuple, status_w: int, prepare: list, enter) -> None:
    """The supervisor process: prepare (``(stage, step)`` pairs), start the program, report its
    exit status; never returns."""
    report = {}
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        prctl(PR_SET_DUMPABLE, 0)
        for stage, step in prepare:
            report["stage"] = stage
            step()
        report["stage"] = "start"
        # preexec_fn is safe here: the runner and its forks never start a thread
        proc = subprocess.Popen(req["command"], cwd=req.get("workdir", "/work"),
                                env=program_env(req), stdin=fds[0], stdout=fds[1], stderr=fds[2],
                                preexec_fn=program_setup(req, enter), start_new_session=True)
        for fd in fds:
            os.close(fd)
        os.write(status_w, STARTED)
        report = {"exit_code": proc.wait()}
    except BaseException as e:
        report["error"] = f"{type(e).__name__}: {e}"
    try:
        tell(status_w, report)
    finally:
        os._exit(0)


def fork_child(body, close: tuple) -> int:
    """Fork; the child closes ``close``, detaches from the runner's stdio and runs ``body``."""
    pid = os.fork()
    if pid == 0:
        try:
            for fd in close:
                os.close(fd)
            detach_stdio()
            body()
        finally:
            os._exit(70)
    return pid


class UidIsolation:
    """docker: the runner is root; each task's program runs as uid 1000 under a uid-1000
    supervisor. The container (its /tmp, /dev/shm, /dev/mqueue, SysV IPC) outlives the task, so
    the supervisor wipes them before the program starts and the runner kills and reaps every
    process of the task after it ends."""

    def __init__(self):
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.clean = self.no_strays()
        self.wipe_failed = False

    @staticmethod
    def become_program_user() -> None:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")   # the program, not the runner, is what the OOM killer picks
        os.setgroups([])
        os.setresgid(PROGRAM_UID, PROGRAM_UID, PROGRAM_UID)
        os.setresuid(PROGRAM_UID, PROGRAM_UID, PROGRAM_UID)
        prctl(PR_SET_DUMPABLE, 0)

    def start(self, req: dict, fds: tuple, status_w: int, close: tuple) -> int:
        workdir = req.get("workdir", "/work")

        def wipe() -> None:
            for d in (workdir,) + SHARED_DIRS:
                if os.path.isdir(d):
                    clear_dir(d)
            clear_sysv_ipc()

        def body() -> None:
            self.become_program_user()
            supervise(req, fds, status_w,
                      [("wipe", wipe), ("files", lambda: write_files(workdir, req.get("files", {})))],
                      None)
        return fork_child(body, close)

    def end(self, child: int, timed_out: bool, report) -> None:
        if not timed_out and self.left_over(child):
            self.clean = False   # the program's processes outlived it: kill them, then replace
        try:
            os.kill(-1, signal.SIGKILL)   # root: every process here but PID 1 and this runner
        except OSError:
            pass
        while True:
            try:
                os.waitpid(-1, 0)   # a subreaper: every orphan of the task is our child
            except ChildProcessError:
                break
        if "error" in report and report.get("stage") == "wipe":
            self.clean, self.wipe_failed = False, True   # the previous task's state is still here
        self.clean = self.no_strays() and self.clean

    @staticmethod
    def left_over(child: int) -> bool:
        """Whether anything of the task still runs now that its program has ended (and its
        supervisor, which has reported, is gone)."""
        try:
            os.waitpid(child, 0)
        except ChildProcessError:
            pass
        while True:   # orphans of the task that already ended are zombies of ours, not survivors
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        me = str(os.getpid())
        return any(p.isdigit() and p not in ("1", me) for p in os.listdir("/proc"))

    @staticmethod
    def no_strays(wait_s: float = 1.0) -> bool:
        """True when no process but PID 1 and this runner is left (orphans PID 1 still reaps
        get ``wait_s``); else kill them and say the sandbox is not clean."""
        deadline = time.monotonic() + wait_s
        while True:
            me = str(os.getpid())
            strays = [p for p in os.listdir("/proc") if p.isdigit() and p not in ("1", me)]
            if not strays:
                return True
            if time.monotonic() > deadline:
                return False
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(0.01)

    def collect(self, req: dict) -> dict:
        r, w = os.pipe()

        def body() -> None:
            self.become_program_user()
            try:
                out = {"files": collect(req.get("workdir", "/work"), req["collect"],
                                        req.get("collect_bytes", 4 << 20))}
            except Exception as e:
                out = {"error": f"{type(e).__name__}: {e}"}
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(w, data):]
        pid = fork_child(body, (r,))
        os.close(w)
        with os.fdopen(r, "rb") as f:
            raw = f.read()
        os.waitpid(pid, 0)
        out = json.loads(raw) if raw else {"error": "the collector died"}
        if "error" in out:
            raise ValueError(out["error"])
        return out["files"]


class NamespaceIsolation:
    """bwrap: per task, fresh PID, IPC and mount namespaces under a PID 1 of ours; the program
    in a user namespace of its own below that."""
    clean = True

    def start(self, req: dict, fds: tuple, status_w: int, close: tuple) -> int:
        workdir = req.get("workdir", "/work")
        clear_dir(workdir)
        write_files(workdir, req.get("files", {}))
        disk = req.get("disk_bytes", 64 << 20)

        def body() -> None:
            try:
                libc_call("unshare", CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS)
            except OSError as e:
                tell(status_w, {"error": f"OSError: {e}"})
                os._exit(0)
            init = os.fork()
            if init == 0:
                try:
                    self.task_init(req, fds, status_w, disk)
                finally:
                    os._exit(70)
            os.write(status_w, f"{init}\n".encode())
            for fd in fds + (status_w,):
                os.close(fd)
            os.waitpid(init, 0)
            os._exit(0)
        return fork_child(body, close)

    @staticmethod
    def task_init(req: dict, fds: tuple, status_w: int, disk: int) -> None:
        """PID 1 of the task: its exit takes every process of the namespace with it."""
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        prctl(PR_SET_DUMPABLE, 0)
        try:
            mount = LIBC.mount
            for args in ((None, b"/", None, MS_REC | MS_PRIVATE, None),
                         (b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
                         (b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV,
                          f"size={disk},mode=1777".encode()),
                         (b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
                          f"size={disk},mode=1777".encode()),
                         (b"mqueue", b"/dev/mqueue", b"mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                          None)):
                if mount(*args[:3], ctypes.c_ulong(args[3]), args[4]) == -1:
                    err = ctypes.get_errno()
                    raise OSError(err, f"mount {args[1].decode()}: {os.strerror(err)}")
        except OSError as e:
            tell(status_w, {"error": f"OSError: {e}"})
            return
        sup = os.fork()
        if sup == 0:
            supervise(req, fds, status_w, [], enter_user_namespace)
        for fd in fds + (status_w,):
            os.close(fd)
        while os.wait()[0] != sup:
            pass   # PID 1 reaps the orphans of its namespace until the supervisor ends

    def end(self, child: int, timed_out: bool, report) -> None:
        if timed_out:
            try:   # the task's PID 1 (the kernel kills the rest), else its parent (PDEATHSIG)
                os.kill(report.get("init", child), signal.SIGKILL)
            except OSError:
                pass
        os.waitpid(child, 0)   # returns once the task's PID namespace is empty

    def collect(self, req: dict) -> dict:
        return collect(req.get("workdir", "/work"), req["collect"], req.get("collect_bytes", 4 << 20))


class Capped:
    """The first ``cap`` bytes of a stream; the rest is counted and dropped."""

    def __init__(self, cap: int):
        self.cap, self.kept, self.dropped = cap, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        room = max(self.cap - len(self.kept), 0)
        self.kept += chunk[:room]
        self.dropped += max(len(chunk) - room, 0)

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        if self.dropped:
            text += f"\n[evoray: output truncated, {self.dropped} more bytes]"
        return text


def pump(sinks: dict, stdin_w: int, data: bytes, until_fd: int, deadline) -> bool:
    """Move stdin in and outputs out until ``until_fd`` (or, with it None, every output) is at EOF
    or ``deadline()`` passes; True when the deadline passed first."""
    poller = select.poll()
    for fd in sinks:
        poller.register(fd, select.POLLIN)
    pending = memoryview(data)
    if stdin_w is not None:
        os.set_blocking(stdin_w, False)
        poller.register(stdin_w, select.POLLOUT)
    while (until_fd in sinks) if until_fd is not None else sinks:
        left = deadline() - time.monotonic()
        if left <= 0:
            return True
        for fd, _ in poller.poll(max(int(left * 1000), 1)):
            if fd == stdin_w:
                try:
                    pending = pending[os.write(fd, pending[:65536]):]
                except BlockingIOError:
                    continue
                except OSError:
                    pending = pending[:0]   # the program exited or closed stdin unread
                if not pending:
                    poller.unregister(fd)
                    os.close(fd)
                    stdin_w = None
                continue
            chunk = os.read(fd, 65536)
            if chunk:
                sinks[fd].add(chunk)
            else:
                poller.unregister(fd)
                os.close(fd)
                sinks.pop(fd).add(b"")
    if stdin_w is not None:
        os.close(stdin_w)
    return False


class Status(bytearray):
    """What the supervisor (and, bwrap, the task's fork) say on the status pipe, as it comes."""
    started = None

    def add(self, chunk: bytes) -> None:
        self.extend(chunk)
        if self.started is None and STARTED in self:
            self.started = time.monotonic()

    def deadline(self, start: float, timeout_s: float) -> float:
        return (self.started or start + PREPARE_S) + timeout_s + 0.05

    def report(self):
        """The supervisor's report (and, bwrap, the task's PID 1), or None if it never came.
        Each writer writes whole lines in one write, in whatever order they come."""
        out = {}
        for line in bytes(self).split(b"\n"):
            if line.isdigit():
                out["init"] = int(line)
            elif line.startswith(b"{"):
                try:
                    out.update(json.loads(line))
                except ValueError:
                    pass
        return out or None


def run(req: dict, iso) -> dict:
    check_paths(req.get("files", {}))
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    st_r, st_w = os.pipe()
    oom_before = read_oom_kills()
    start = time.monotonic()
    child = iso.start(req, (in_r, out_w, err_w), st_w, (in_w, out_r, err_r, st_r))
    for fd in (in_r, out_w, err_w, st_w):
        os.close(fd)
    cap = req["output_bytes"]
    status = Status()
    sinks = {out_r: Capped(cap), err_r: Capped(cap), st_r: status}
    stdout, stderr = sinks[out_r], sinks[err_r]
    timed_out = pump(sinks, in_w, req.get("stdin", "").encode(), st_r,
                     lambda: status.deadline(start, req["timeout_s"]))
    wall = time.monotonic() - (status.started or start)
    report = status.report() or {}
    iso.end(child, timed_out, report)
    drained = time.monotonic() + 5
    pump(sinks, None, b"", None, lambda: drained)   # every writer is gone: only EOFs left
    for fd in sinks:
        os.close(fd)
    if "error" in report and report.get("stage") == "wipe":
        raise NotRun(report["error"])
    if "error" in report and not timed_out:
        detail = stderr.text().strip()[-500:]
        raise TaskError(report["error"] + (f" ({detail})" if detail else ""))
    return verdict(req, report, timed_out, read_oom_kills() > oom_before, stdout.text(),
                   stderr.text(), wall, iso)


def verdict(req, report, timed_out, oom, stdout, stderr, wall, iso) -> dict:
    code = report.get("exit_code")
    if timed_out:
        status, code = "timeout", None
    elif "exit_code" not in report:
        status = "memory" if oom else "killed"
        stderr += "\nevoray: the program's supervisor was killed"
    elif oom or (code != 0 and any(m in stderr[-2000:] for m in MEMORY_MARKERS)):
        status = "memory"
    elif code == 0:
        status = "ok"
    elif code < 0:
        status = "killed"
    else:
        status = "error"
    result = {"status": status, "exit_code": code, "stdout": stdout, "stderr": stderr,
              "wall_s": round(wall, 4)}
    if req.get("collect"):
        result["files"] = iso.collect(req)
    return result


def run_one(req: dict, iso) -> dict:
    if getattr(iso, "wipe_failed", False):
        return NOT_RUN
    try:
        return run(req, iso)
    except NotRun:
        return NOT_RUN
    except Exception as e:   # the sandbox worked, the request did not: say so, don't hang
        msg = str(e) if isinstance(e, TaskError) else f"{type(e).__name__}: {e}"
        return {"status": "error", "exit_code": None, "stdout": "",
                "stderr": f"evoray runner: {msg}", "wall_s": 0.0}


def main() -> None:
    """Requests of a batch run one after another, each in a wiped work dir with nothing left
    running from the one before — the same isolation as separate execs, without paying for a
    process launch into the sandbox per request."""
    prctl(PR_SET_DUMPABLE, 0)   # nothing of the same uid may read this process's memory or fds
    data = json.loads(sys.stdin.read())
    iso = NamespaceIsolation() if data.get("isolation") == "namespaces" else UidIsolation()
    results = [run_one(req, iso) for req in data["batch"]]
    sys.stdout.write(json.dumps({"results": results, "clean": iso.clean}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
