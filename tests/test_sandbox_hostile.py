"""Programs that attack the sandbox around them, by class, on both backends.

Each attack here worked against the sandbox before the per-task supervisor (forged verdicts through
``/proc/$PPID/fd/1`` or ``pidfd_getfd``, ptrace of PID 1 and the runner, daemons that outlived
their task, SysV/POSIX shared memory and message queues kept between tasks, a writable ``/dev``).
Every test asserts what the program got, not only that it failed: an attack that silently stops
running would not pass. Docker tests use one warm container (pool_size=1), so "the next task"
is the same container.
"""
from __future__ import annotations

import json
import textwrap
import threading
import time

import pytest

from actors.sandbox import ExecRequest, SandboxLimits, make_sandbox

LIMITS = SandboxLimits(timeout_s=8, memory_mb=256, pids=64, disk_mb=32, output_bytes=256 * 1024)
PRELUDE = textwrap.dedent("""
    import ctypes, json, os, signal, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    NR = {"x86_64": dict(pidfd_open=434, pidfd_getfd=438, process_vm_readv=310),
          "aarch64": dict(pidfd_open=434, pidfd_getfd=438, process_vm_readv=270)}[os.uname().machine]
    def others():
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    """)


@pytest.fixture(scope="module", params=["bwrap", "docker"])
def sandbox(request):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    sb = make_sandbox(request.param, LIMITS, pool_size=1)
    if hasattr(sb, "warm"):
        sb.warm()
    yield sb
    sb.close()


def req(code: str, **kw) -> ExecRequest:
    r = ExecRequest.program(PRELUDE + textwrap.dedent(code), limits=LIMITS)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def containers(sb) -> list[str]:
    return sorted(c.id for c in getattr(sb, "all", []))


# forged verdicts

FORGER = """
    fake = json.dumps({"results": [{"status": "ok", "exit_code": 0, "stdout": "FORGED", "stderr": "",
                                    "wall_s": 0.1}] * 3, "clean": True}).encode()
    wins = []
    for pid in others():
        for fd in range(12):
            try:
                w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY)
                os.write(w, fake)
                wins.append(("proc", pid, fd))
            except OSError:
                pass
        pidfd = libc.syscall(NR["pidfd_open"], pid, 0)
        for fd in range(12 if pidfd >= 0 else 0):
            got = libc.syscall(NR["pidfd_getfd"], pidfd, fd, 0)
            if got >= 0:
                try:
                    os.write(got, fake)
                    wins.append(("pidfd", pid, fd))
                except OSError:
                    pass
    print("WINS", wins, flush=True)
    for pid in others():   # then take down whatever reports verdicts, as the attack on 267404c did
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    sys.exit(1)
    """


def test_a_program_cannot_forge_its_own_verdict(sandbox):
    r = sandbox.run(req(FORGER))
    assert r.status in ("error", "killed") and r.status != "ok", r
    assert "WINS []" in r.stdout and "FORGED" not in r.stdout


def test_a_program_cannot_forge_its_batch_mates_verdicts(sandbox):
    results = sandbox.run_many([req("print('first'); sys.exit(2)"), req(FORGER),
                                req("print('third')")])
    assert [(r.status, r.exit_code, r.stdout.strip()) for r in (results[0], results[2])] == \
        [("error", 2, "first"), ("ok", 0, "third")]
    assert results[1].status in ("error", "killed") and "WINS []" in results[1].stdout


def test_killing_its_parent_is_reported_not_ok(sandbox):
    r = sandbox.run(req("os.kill(os.getppid(), signal.SIGKILL); time.sleep(1); sys.exit(0)"))
    assert r.status == "killed" and r.exit_code is None
    assert sandbox.run(req("print('next')")).stdout == "next\n"


# ptrace, process_vm_readv, pidfd: nothing above the program is reachable

PTRACER = """
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    class Iov(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf = ctypes.create_string_buffer(64)
    local, remote = Iov(ctypes.addressof(buf), 64), Iov(0x400000, 64)
    report = {"uid": os.getuid(), "ptrace": {}, "vm_read": {}, "mem": {}}
    for pid in others():
        ok = libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(pid), None, None)
        report["ptrace"][pid] = ok if ok == 0 else -ctypes.get_errno()
        if ok == 0:
            libc.ptrace(ctypes.c_long(PTRACE_DETACH), ctypes.c_long(pid), None, None)
        n = libc.syscall(NR["process_vm_readv"], pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        report["vm_read"][pid] = n if n >= 0 else -ctypes.get_errno()
        try:
            open(f"/proc/{pid}/mem", "rb").read(1)
            report["mem"][pid] = "opened"
        except OSError as e:
            report["mem"][pid] = type(e).__name__
    child = os.fork()
    if child == 0:
        time.sleep(3)
        os._exit(0)
    ok = libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(child), None, None)
    report["own_child"] = ok if ok == 0 else -ctypes.get_errno()
    os.kill(child, signal.SIGKILL)
    report["self"] = {k: v.split()[0] for k, v in (line.split(":", 1) for line in open("/proc/self/status")
                                                   if ":" in line) if k in ("CapEff", "Seccomp", "NoNewPrivs")}
    print(json.dumps(report))
    """


def test_no_ptrace_or_memory_access_to_pid1_or_the_runner(sandbox):
    r = sandbox.run(req(PTRACER))
    assert r.status == "ok", r.stderr
    rep = json.loads(r.stdout)
    assert rep["uid"] == 1000 and "1" in rep["ptrace"]   # PID 1 was visible and attacked
    assert all(v < 0 for v in rep["ptrace"].values()), rep["ptrace"]
    assert all(v in (-1, -3) for v in rep["vm_read"].values()), rep["vm_read"]   # EPERM / ESRCH
    assert all(v != "opened" for v in rep["mem"].values()), rep["mem"]
    assert rep["own_child"] == -1   # EPERM even on its own child: the seccomp filter, not just uids
    assert rep["self"] == {"CapEff": "0000000000000000", "Seccomp": "2", "NoNewPrivs": "1"}


def test_no_secret_of_a_batch_mate_is_readable(sandbox):
    """The runner holds the whole batch (files, env, hidden tests): none of it can be read."""
    snoop = """
        needle = "SECRET" + "-"   # not in this program's own text
        hits = []
        for pid in others():
            for name in ("environ", "cmdline", "fd/0", "mem"):
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as f:
                        if name == "mem":
                            for line in open(f"/proc/{pid}/maps"):
                                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                                f.seek(lo)
                                if needle.encode() in f.read(min(hi - lo, 1 << 24)):
                                    hits.append((pid, name))
                        elif needle.encode() in f.read(1 << 20):
                            hits.append((pid, name))
                except (OSError, ValueError, OverflowError):
                    pass
        for d in ("/work", "/tmp", "/dev/shm"):
            for n in os.listdir(d):
                try:
                    if needle in open(os.path.join(d, n)).read():
                        hits.append((d, n))
                except OSError:
                    pass
        print("HITS", hits)
        """
    victim = req("print(os.environ['VICTIM_TOKEN'][:6], open('hidden_test.py').read()[:6])",
                 env={"VICTIM_TOKEN": "SECRET-TOKEN-1"})
    victim.files["hidden_test.py"] = "SECRET-HIDDEN-2"
    first, second = sandbox.run_many([req(snoop), victim])
    assert first.status == "ok" and first.stdout.strip() == "HITS []", first
    assert second.stdout.strip() == "SECRET SECRET"


# nothing a task starts outlives it

DAEMON = """
    def daemon(tag):
        if os.fork():
            return
        os.setsid()
        if os.fork():
            os._exit(0)
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        while True:
            for d in ("/work", "/tmp", "/dev/shm"):
                try:
                    open(f"{d}/daemon-{tag}-{os.getpid()}", "w").write("still here")
                except OSError:
                    pass
            time.sleep(0.02)
    daemon("a")
    daemon("b")
    time.sleep(0.3)
    print("spawned")
    """
SURVIVORS = """
    time.sleep(0.5)
    mine, pid = set(), os.getpid()
    while pid > 0:   # this task's own process and those above it
        mine.add(pid)
        pid = int(open(f"/proc/{pid}/status").read().split("PPid:")[1].split()[0])
    alive = []
    for pid in others():
        try:
            st = open(f"/proc/{pid}/status").read()
            uid = st.split("Uid:")[1].split()[0]
            if uid == str(os.getuid()) and pid not in mine:
                alive.append(pid)
        except OSError:
            pass
    files = [n for d in ("/work", "/tmp", "/dev/shm") for n in os.listdir(d) if n.startswith("daemon")]
    print(json.dumps({"alive": alive, "files": files}))
    """


def _assert_none_survived(r):
    assert r.status == "ok", r.stderr
    out = json.loads(r.stdout)
    assert out == {"alive": [], "files": []}, out


def test_daemons_die_with_their_task_across_runs(sandbox):
    before = containers(sandbox)
    assert sandbox.run(req("print('honest')")).stdout == "honest\n"
    assert containers(sandbox) == before   # a task that ends cleanly keeps its warm container
    if sandbox.backend == "docker":
        top = sandbox.all[0].top()["Processes"]
        assert len(top) == 1, top   # only the container's PID 1 is left between tasks
    assert sandbox.run(req(DAEMON)).stdout == "spawned\n"
    if sandbox.backend == "docker":   # one whose processes outlived it is replaced, not reused
        assert containers(sandbox) != before
    _assert_none_survived(sandbox.run(req(SURVIVORS)))


def test_daemons_die_with_their_task_within_a_batch(sandbox):
    first, second = sandbox.run_many([req(DAEMON), req(SURVIVORS)])
    assert first.stdout == "spawned\n"
    _assert_none_survived(second)


def test_warm_sandbox_takeover(sandbox):
    """A task leaves a daemon that waits for the next task, to stop it, read its input and write
    a verdict for it; the next task must run untouched, with its own verdict."""
    lurker = """
        if os.fork() == 0:
            os.setsid()
            seen = set(others()) | {os.getpid()}
            loot = []
            end = time.time() + 6
            while time.time() < end:
                for pid in set(others()) - seen:
                    seen.add(pid)
                    libc.ptrace(ctypes.c_long(16), ctypes.c_long(pid), None, None)
                    for name in ("environ", "cmdline", "fd/1"):
                        try:
                            loot.append(open(f"/proc/{pid}/{name}", "rb").read(200).decode(errors="replace"))
                        except OSError:
                            pass
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except OSError:
                        pass
                for d in ("/work", "/tmp", "/dev/shm"):
                    try:
                        open(f"{d}/loot", "w").write(json.dumps(loot))
                    except OSError:
                        pass
                time.sleep(0.005)
            os._exit(0)
        print("lurking")
        """
    victim = req("time.sleep(0.5); print('victim', os.environ['GATEWAY_TOKEN'][:6]); sys.exit(3)",
                 env={"GATEWAY_TOKEN": "SECRET-GW"})
    victim.files["tests/hidden.py"] = "SECRET-TESTS"
    check = "print(sorted(n for d in ('/work', '/tmp', '/dev/shm') for n in os.listdir(d)))"
    assert sandbox.run(req(lurker)).stdout == "lurking\n"
    r = sandbox.run(victim)
    assert (r.status, r.exit_code, r.stdout) == ("error", 3, "victim SECRET\n")
    assert sandbox.run(req(check)).stdout == "['main.py']\n"
    results = sandbox.run_many([req(lurker), victim, req(check)])
    assert [(x.status, x.exit_code, x.stdout) for x in results] == \
        [("ok", 0, "lurking\n"), ("error", 3, "victim SECRET\n"), ("ok", 0, "['main.py']\n")]


# nothing a task writes or creates survives it: files, SysV IPC, POSIX shm and message queues

IPC_WRITE = """
    IPC_CREAT = 0o1000
    libc.shmat.restype = ctypes.c_void_p
    shm = libc.shmget(0x5EED, 4096, IPC_CREAT | 0o666)
    addr = libc.shmat(shm, None, 0)
    ctypes.memmove(addr, b"LEAKED", 6)
    libc.shmdt(ctypes.c_void_p(addr))
    msg = libc.msgget(0x5EEE, IPC_CREAT | 0o666)
    sem = libc.semget(0x5EEF, 1, IPC_CREAT | 0o666)
    mq = libc.mq_open(b"/evoray-leak", os.O_CREAT | os.O_RDWR, 0o666, None)
    open("/dev/shm/evoray-leak", "w").write("LEAKED")
    print(json.dumps([shm >= 0, msg >= 0, sem >= 0, mq >= 0]))
    """
IPC_READ = """
    found = {"shm": libc.shmget(0x5EED, 0, 0), "msg": libc.msgget(0x5EEE, 0),
             "sem": libc.semget(0x5EEF, 0, 0), "mq": libc.mq_open(b"/evoray-leak", os.O_RDONLY)}
    found["sysvipc"] = [len(open(f"/proc/sysvipc/{k}").readlines()) - 1 for k in ("shm", "msg", "sem")]
    found["dirs"] = sorted(n for d in ("/dev/shm", "/dev/mqueue") if os.path.isdir(d) for n in os.listdir(d))
    print(json.dumps(found))
    """
IPC_NONE = {"shm": -1, "msg": -1, "sem": -1, "mq": -1, "sysvipc": [0, 0, 0], "dirs": []}


def test_ipc_does_not_survive_a_task(sandbox):
    w = sandbox.run(req(IPC_WRITE))
    assert (w.status, json.loads(w.stdout)) == ("ok", [True] * 4), w.stderr
    r = sandbox.run(req(IPC_READ))
    assert json.loads(r.stdout) == IPC_NONE
    w, r = sandbox.run_many([req(IPC_WRITE), req(IPC_READ)])
    assert json.loads(w.stdout) == [True] * 4 and json.loads(r.stdout) == IPC_NONE


WALK = """
    wrote, skip, files = [], {"/proc", "/sys"}, []
    for root, dirs, names in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            continue   # a read-only mount (its submounts are still walked)
        for n in names:   # files it may write to, wherever they are
            path = os.path.join(root, n)
            if os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.W_OK):
                try:
                    open(path, "a").close()
                    files.append(path)
                except OSError:
                    pass
        try:
            with open(os.path.join(root, "evoray-probe"), "w") as f:
                f.write("left by the previous task")
            wrote.append(root)
        except OSError:
            pass
    assert all(any(f.startswith(d + "/") for d in wrote) for f in files), files
    for d in wrote:   # and a directory tree it cannot list any more
        try:
            os.makedirs(os.path.join(d, "deep/er"), exist_ok=True)
            os.chmod(os.path.join(d, "deep"), 0)
        except OSError:
            pass
    print(json.dumps(wrote))
    """
CHECK = """
    dirs = json.loads(sys.stdin.read())
    print(json.dumps({d: sorted(os.listdir(d)) for d in dirs}))
    """
WRITABLE = {"/work", "/tmp", "/dev/shm", "/dev/mqueue"}


def _check_writable_paths_empty(sandbox, first, make_second):
    assert first.status == "ok", first.stderr
    wrote = json.loads(first.stdout)
    assert {"/work", "/tmp", "/dev/shm"} <= set(wrote) <= WRITABLE, wrote   # /dev itself is not
    second = make_second(json.dumps(wrote))
    assert second.status == "ok", second.stderr
    assert json.loads(second.stdout) == {d: (["main.py"] if d == "/work" else []) for d in wrote}


def walk() -> ExecRequest:
    return req(WALK, limits=SandboxLimits(**{**LIMITS.__dict__, "timeout_s": 40}))


def test_every_writable_path_is_empty_at_the_next_task(sandbox):
    first = sandbox.run(walk())
    _check_writable_paths_empty(sandbox, first, lambda dirs: sandbox.run(req(CHECK, stdin=dirs)))


def test_every_writable_path_is_empty_at_the_next_task_of_a_batch(sandbox):
    wrote = json.loads(sandbox.run(walk()).stdout)   # the dirs a walk finds writable
    first, second = sandbox.run_many([walk(), req(CHECK, stdin=json.dumps(wrote))])
    _check_writable_paths_empty(sandbox, first, lambda dirs: second)


def test_dev_is_read_only_but_its_devices_work(sandbox):
    r = sandbox.run(req("""
        out = []
        for p in ("/dev/evil", "/dev/null/x", "/dev/pts/evil"):
            try:
                open(p, "w")
                out.append("WROTE " + p)
            except OSError:
                pass
        open("/dev/null", "w").write("x")
        out.append(len(open("/dev/urandom", "rb").read(8)))
        out.append(open("/dev/zero", "rb").read(2) == b"\\0\\0")
        print(out)
        """))
    assert r.stdout.strip() == "[8, True]", (r.stdout, r.stderr)


# limits and honest behaviour still hold

def test_honest_programs_keep_their_verdicts(sandbox):
    big = "x" * (300 * 1024)
    results = sandbox.run_many([
        req("sys.stdout.write(sys.stdin.read()); print('E', file=sys.stderr)", stdin=big),
        req("sys.exit(0)", stdin=big),   # never reads its stdin
        req("os.kill(os.getpid(), signal.SIGTERM)"),
        req("import subprocess; subprocess.Popen(['sleep', '30']); print('parent done')"),
        req("sys.stdout.close(); time.sleep(30)"),
    ])
    echo, unread, term, orphan, closed = results
    assert (echo.status, echo.stderr) == ("ok", "E\n")
    assert echo.stdout.startswith(big[:LIMITS.output_bytes]) and \
        echo.stdout.endswith(f"[evoray: output truncated, {len(big) - LIMITS.output_bytes} more bytes]")
    assert (unread.status, unread.exit_code) == ("ok", 0)
    assert (term.status, term.exit_code) == ("killed", -15)
    assert (orphan.status, orphan.stdout) == ("ok", "parent done\n") and orphan.wall_s < 3
    assert (closed.status, closed.exit_code) == ("timeout", None) and closed.wall_s < 10


def test_file_size_and_process_limits(sandbox):
    r = sandbox.run(req("open('big', 'wb').write(b'x' * (16 << 20))",
                        limits=SandboxLimits(**{**LIMITS.__dict__, "file_mb": 4})))
    assert r.status == "error" and "File too large" in r.stderr
    r = sandbox.run(req("""
        n = 0
        try:
            while n < 1000:
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                n += 1
        except OSError:
            pass
        print(n)
        """))
    assert r.status == "ok" and int(r.stdout) < LIMITS.pids, (r.stdout, r.stderr)
    assert sandbox.run(req("print('after')")).stdout == "after\n"


def test_runner_killed_from_outside_replaces_the_container(sandbox):
    """The program cannot kill the runner, but the OOM killer or an operator can: the batch is
    reported as killed and that container is never reused."""
    if sandbox.backend != "docker":
        pytest.skip("bwrap starts a fresh sandbox per batch: there is nothing to reuse")
    before = containers(sandbox)
    container = sandbox.all[0]
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", sandbox.run(req("time.sleep(5)"))))
    t.start()
    time.sleep(1.5)
    killer = textwrap.dedent("""
        import os, signal
        for p in os.listdir('/proc'):
            if p.isdigit() and p not in ('1', str(os.getpid())) and \\
                    b'in-sandbox runner' in open(f'/proc/{p}/cmdline', 'rb').read():
                os.kill(int(p), signal.SIGKILL)
        """)
    container.exec_run(["python3", "-c", killer], user="0:0")
    t.join()
    assert out["r"].status == "killed" and out["r"].stderr.startswith("evoray: ")
    assert sandbox.run(req("print('fresh')")).stdout == "fresh\n"
    assert containers(sandbox) != before


def test_a_task_cannot_sabotage_the_next_ones_work_dir(sandbox):
    """Unwipeable leftovers would fail the next task (or leak into it): an unreadable work dir, a
    tree deeper than any path, a FIFO, read-only files, a symlink to the runner's /proc entries."""
    saboteur = """
        os.mkdir("/work/deep")
        os.chdir("/work/deep")
        for _ in range(2500):   # ~5000 characters of path: more than PATH_MAX
            os.mkdir("d")
            os.chdir("d")
        os.chdir("/work")
        os.mkfifo("/work/fifo")
        open("/work/ro.txt", "w").write("x")
        os.chmod("/work/ro.txt", 0)
        os.symlink(f"/proc/{os.getppid()}/environ", "/work/env")
        os.chmod("/work/deep", 0)
        os.chmod("/tmp", 0)
        os.chmod("/work", 0)
        print("sabotaged")
        """
    check = "print(sorted(os.listdir('/work')), sorted(os.listdir('/tmp')))"
    assert sandbox.run(req(saboteur)).stdout == "sabotaged\n"
    r = sandbox.run(req(check))
    assert (r.status, r.stdout) == ("ok", "['main.py'] []\n"), r.stderr
    results = sandbox.run_many([req(saboteur), req(check)])
    assert [x.stdout for x in results] == ["sabotaged\n", "['main.py'] []\n"], results[1].stderr


def test_a_container_that_cannot_be_wiped_is_replaced_and_its_tasks_rerun(sandbox):
    """Something no program could leave (a root-owned file in /dev/shm, planted from outside):
    the runner cannot wipe it, so it runs nothing more there; the tasks run in a fresh container."""
    if sandbox.backend != "docker":
        pytest.skip("bwrap starts a fresh sandbox per batch: there is nothing to wipe")
    sandbox.run(req("pass"))
    before = containers(sandbox)
    sandbox.all[0].exec_run(["python3", "-c", "open('/dev/shm/planted', 'w').write('x')"],
                            user="0:0")
    results = sandbox.run_many([req("print(os.listdir('/dev/shm'))"), req("print('second')")])
    assert [(r.status, r.stdout) for r in results] == [("ok", "[]\n"), ("ok", "second\n")]
    assert containers(sandbox) != before
