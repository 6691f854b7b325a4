"""The in-sandbox runner: stdlib only, executed as ``python3 -c <this file>`` inside the sandbox.

It reads a JSON batch of requests on stdin; for each one it writes the task's files into the (emptied) work dir, runs the
command as a child under resource limits; it prints the JSON results on stdout. Both backends
(docker, bwrap) use it, so a program gets the same limits and the same verdicts on either.

Why a child process: the untrusted program's stdout/stderr are pipes that we cap, so it can neither
flood the host nor forge the runner's JSON on the real stdout. After the child ends, ``kill(-1)``
removes anything it left behind (daemons, ``setsid`` escapees) — PID 1 of the sandbox is exempt.
"""
import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


def read_oom_kills() -> int:
    """OOM kills in this sandbox's memory cgroup (v1 or v2); 0 where the cgroup is not visible."""
    for path, key in (("/sys/fs/cgroup/memory.events", "oom_kill"),
                      ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill")):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return 0


def clear_dir(path: str) -> None:
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass


def write_files(workdir: str, files: dict) -> None:
    root = os.path.realpath(workdir)
    for rel, content in files.items():
        path = os.path.realpath(os.path.join(root, rel))
        if not path.startswith(root + os.sep):
            raise ValueError(f"file path escapes the work dir: {rel!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)


def limiter(req: dict):
    def apply() -> None:
        mb = 1024 * 1024
        limits = [(resource.RLIMIT_CORE, 0),
                  (resource.RLIMIT_FSIZE, req["file_mb"] * mb),
                  (resource.RLIMIT_NOFILE, 256),
                  (resource.RLIMIT_CPU, int(req["timeout_s"]) + 2)]
        if req.get("memory_mb"):
            limits.append((resource.RLIMIT_AS, req["memory_mb"] * mb))
        if req.get("nproc"):
            limits.append((resource.RLIMIT_NPROC, req["nproc"]))
        for which, value in limits:
            resource.setrlimit(which, (value, value))
    return apply


def capped_reader(stream, cap: int, out: list) -> threading.Thread:
    """Keep the first ``cap`` bytes and drain the rest, so a flood neither blocks nor bloats."""
    def pump() -> None:
        kept, dropped = bytearray(), 0
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            room = cap - len(kept)
            kept += chunk[:max(room, 0)]
            dropped += max(len(chunk) - max(room, 0), 0)
        text = kept.decode("utf-8", errors="replace")
        if dropped:
            text += f"\n[evoray: output truncated, {dropped} more bytes]"
        out.append(text)
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def collect(workdir: str, patterns: list, cap: int) -> dict:
    found, total = {}, 0
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(workdir, pattern), recursive=True)):
            if not os.path.isfile(path) or os.path.islink(path) or "__pycache__" in path:
                continue
            rel = os.path.relpath(path, workdir)
            with open(path, "rb") as f:
                data = f.read(cap - total + 1)
            total += len(data)
            if total > cap:
                raise ValueError(f"collected files exceed {cap} bytes")
            found[rel] = data.decode("utf-8", errors="replace")
    return found


def run(req: dict) -> dict:
    workdir = req.get("workdir", "/work")
    for d in (workdir, "/tmp"):
        clear_dir(d)   # a warm container's previous task leaves nothing behind
    write_files(workdir, req.get("files", {}))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": "/tmp"}
    env.update(req.get("env", {}))
    oom_before = read_oom_kills()
    start = time.monotonic()
    proc = subprocess.Popen(req["command"], cwd=workdir, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=limiter(req), start_new_session=True)
    out, err = [], []
    readers = [capped_reader(proc.stdout, req["output_bytes"], out),
               capped_reader(proc.stderr, req["output_bytes"], err)]
    try:
        proc.stdin.write(req.get("stdin", "").encode())
        proc.stdin.close()
    except OSError:
        pass   # the program exited or closed stdin without reading it
    timed_out = False
    try:
        proc.wait(timeout=req["timeout_s"])
    except subprocess.TimeoutExpired:
        timed_out = True
    wall = time.monotonic() - start
    if req.get("kill_all"):   # only set by backends that give the sandbox its own PID namespace
        try:
            os.kill(-1, signal.SIGKILL)   # everything the program started, wherever it hid
        except OSError:
            pass
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()
    for t in readers:
        t.join(timeout=5)
    stdout, stderr = (out or [""])[0], (err or [""])[0]
    code = proc.returncode
    tail = stderr[-2000:]
    if timed_out:
        status, code = "timeout", None
    elif read_oom_kills() > oom_before or (code != 0 and any(m in tail for m in MEMORY_MARKERS)):
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
        result["files"] = collect(workdir, req["collect"], req.get("collect_bytes", 4 << 20))
    return result


def run_one(req: dict) -> dict:
    try:
        return run(req)
    except Exception as e:   # the sandbox worked, the request did not: say so, don't hang
        return {"status": "error", "exit_code": None, "stdout": "",
                "stderr": f"evoray runner: {type(e).__name__}: {e}", "wall_s": 0.0}


def main() -> None:
    """``{"batch": [request, ...]}`` in, ``{"results": [result, ...]}`` out. Requests of a batch
    run one after another, each in a wiped work dir with nothing left running from the one before
    — the same isolation as separate execs, without paying for a process launch into the sandbox
    per request."""
    batch = json.loads(sys.stdin.read())["batch"]
    sys.stdout.write(json.dumps({"results": [run_one(req) for req in batch]}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
