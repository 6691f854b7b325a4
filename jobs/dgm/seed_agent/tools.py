"""The agent's tools: run a shell command, replace a file. Standard library only."""
from __future__ import annotations

import os
import subprocess

OUTPUT_LIMIT = 4000


def bash(command: str, cwd: str, timeout: float = 120) -> str:
    """Run ``command`` with bash in ``cwd``; return its exit code and (truncated) output."""
    try:
        p = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"[timed out after {timeout:.0f} s]"
    out = (p.stdout + p.stderr)[-OUTPUT_LIMIT:]
    return f"[exit code {p.returncode}]\n{out}"


def write_file(path: str, content: str, root: str) -> str:
    """Replace (or create) ``path`` under ``root`` with ``content``."""
    full = os.path.realpath(os.path.join(root, path))
    if not full.startswith(os.path.realpath(root) + os.sep):
        return f"[refused: {path} is outside the repository]"
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(content if content.endswith("\n") else content + "\n")
    return f"[wrote {path}: {content.count(chr(10)) + 1} lines]"
