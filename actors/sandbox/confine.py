"""The sandbox runner's dealings with the kernel and the file system: stdlib and ctypes only.

Not imported inside the sandbox: ``actors.sandbox.types.RUNNER_SOURCE`` is this file followed by
``runner.py`` (without its import of this module), run as ``python3 -c``.
"""
import ctypes
import errno
import glob
import os

PROGRAM_UID = 1000
LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP = 1, 4, 22
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x20000, 0x8000000, 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
# (audit arch, has the x32 ABI, syscalls): ptrace, process_vm_readv/writev, kcmp, add_key,
# request_key, keyctl, pidfd_open, pidfd_getfd, process_madvise — what reaches into another
# process or into state (key rings) that outlives the task; no honest program needs them
BLOCKED_SYSCALLS = {
    "x86_64": (0xC000003E, True, (101, 310, 311, 312, 248, 249, 250, 434, 438, 440)),
    "aarch64": (0xC00000B7, False, (117, 270, 271, 272, 217, 218, 219, 434, 438, 440)),
}
def libc_call(name: str, *args) -> None:
    if getattr(LIBC, name)(*args) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def prctl(option: int, value: int) -> None:
    libc_call("prctl", ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
              ctypes.c_ulong(0), ctypes.c_ulong(0))


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def seccomp_filter():
    """A classic BPF filter answering EPERM to BLOCKED_SYSCALLS, to any foreign-ABI syscall
    (int 0x80, x32) and allowing the rest; None on an architecture we have no table for."""
    spec = BLOCKED_SYSCALLS.get(os.uname().machine)
    if spec is None:
        return None
    arch, x32, numbers = spec
    deny, allow = 0x00050000 | errno.EPERM, 0x7FFF0000
    code = [(0x20, 0, 0, 4), (0x15, 1, 0, arch), (0x06, 0, 0, deny), (0x20, 0, 0, 0)]
    if x32:
        code += [(0x35, 0, 1, 0x40000000), (0x06, 0, 0, deny)]
    for nr in numbers:
        code += [(0x15, 0, 1, nr), (0x06, 0, 0, deny)]
    code.append((0x06, 0, 0, allow))
    insns = (SockFilter * len(code))(*[SockFilter(*c) for c in code])
    prog = SockFprog(len(code), insns)
    prog.keep = insns
    return prog


def clear_dir(path: str) -> None:
    """Empty ``path`` as the owner of what is in it, whatever the previous task did to it:
    directories it made unreadable are opened up, and trees too deep for recursion (or for a path)
    are flattened, each subdirectory's subdirectories moved up beside it before it is removed.
    Anything left is an error, never silently kept for the next task."""
    st = os.stat(path)
    if st.st_uid == os.geteuid():   # else (/dev/shm, /dev/mqueue) the program could not chmod it
        os.chmod(path, (st.st_mode & 0o7777) | 0o700)
    top = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    moved = 0
    try:
        while True:
            dirs = []
            for entry in list(os.scandir(top)):
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.name)
                else:
                    os.unlink(entry.name, dir_fd=top)
            if not dirs:
                return
            for name in dirs:
                os.chmod(name, 0o700, dir_fd=top)
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
                try:
                    for entry in list(os.scandir(sub)):
                        if not entry.is_dir(follow_symlinks=False):
                            os.unlink(entry.name, dir_fd=sub)
                            continue
                        while True:
                            moved += 1
                            try:
                                os.rename(entry.name, f".evoray-wipe-{moved}", src_dir_fd=sub,
                                          dst_dir_fd=top)
                                break
                            except OSError as e:
                                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                                    raise
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)


def sysv_ipc_ids(kind: str) -> list:
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            return [int(line.split()[1]) for line in f.readlines()[1:] if line.strip()]
    except FileNotFoundError:
        return []


def clear_sysv_ipc() -> None:
    """Remove every SysV shared memory segment, message queue and semaphore set (docker: the
    container's IPC namespace outlives the task; everything in it belongs to the program's uid)."""
    for kind, call, args in (("shm", "shmctl", (0, None)), ("msg", "msgctl", (0, None)),
                             ("sem", "semctl", (0, 0))):
        for ident in sysv_ipc_ids(kind):
            libc_call(call, ident, *args)   # IPC_RMID
        if sysv_ipc_ids(kind):
            raise OSError(f"SysV {kind} objects are left after removing them all")


def enter_user_namespace() -> None:
    """bwrap: the program gets a user namespace of its own where it is uid 1000 and, once it
    execs, has no capability — none at all in the namespace of its supervisor and init."""
    uid, gid = os.getuid(), os.getgid()
    libc_call("unshare", CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{PROGRAM_UID} {uid} 1"),
                       ("gid_map", f"{PROGRAM_UID} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def detach_stdio() -> None:
    """A forked helper must not keep the runner's stdin/stdout (the verdict channel)."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


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


def check_paths(files: dict) -> None:
    for rel in files:
        parts = rel.replace("\\", "/").split("/")
        if not rel or rel.startswith("/") or ".." in parts:
            raise ValueError(f"file path escapes the work dir: {rel!r}")


def write_files(workdir: str, files: dict) -> None:
    root = os.path.realpath(workdir)
    for rel, content in files.items():
        path = os.path.realpath(os.path.join(root, rel))
        if not path.startswith(root + os.sep):
            raise ValueError(f"file path escapes the work dir: {rel!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)


def collect(workdir: str, patterns: list, cap: int) -> dict:
    found, total = {}, 0
    root = os.path.realpath(workdir)
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(workdir, pattern), recursive=True)):
            if not os.path.isfile(path) or os.path.islink(path) or "__pycache__" in path:
                continue
            if not os.path.realpath(path).startswith(root + os.sep):
                continue   # reached through a symlinked directory: not the program's file
            rel = os.path.relpath(path, workdir)
            with open(path, "rb") as f:
                data = f.read(cap - total + 1)
            total += len(data)
            if total > cap:
                raise ValueError(f"collected files exceed {cap} bytes")
            found[rel] = data.decode("utf-8", errors="replace")
    return found
