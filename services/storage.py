"""Run directories that every node of a cluster sees: a shared mount, or a pyarrow filesystem URI
(``s3://``, ``gs://``, ``hdfs://``, ``file://``).

With a URI the driver keeps a local mirror and pushes it after every checkpoint and at the end
(pointer files last, so a reader never follows ``latest`` to a half-uploaded checkpoint); actors on
other nodes write their checkpoint parts straight to the URI (``write_dir``) and read them back with
``read_dir``. A path on a multi-node cluster must be visible on every node (``check_shared``)."""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Callable

from actors.storage import download_dir, filesystem_of

POINTERS = ("checkpoints/latest", "checkpoints/best")


def mirror_dir(uri: str) -> Path:
    """The driver's local copy of a URI run directory (its name ends with the run's name)."""
    digest = hashlib.sha1(uri.encode()).hexdigest()[:10]
    base = Path(os.environ.get("EVORAY_CACHE", Path.home() / ".cache" / "evoray")) / "runs"
    return base / f"{digest}-{uri.rstrip('/').rsplit('/', 1)[-1]}"


class RunMirror:
    """Keeps a URI in step with the local mirror: uploads what changed, removes what was deleted
    locally (pruned checkpoints), and uploads pointer files last."""

    def __init__(self, local: Path, uri: str):
        self.local, self.uri = Path(local), uri.rstrip("/")
        self.filesystem, self.path = filesystem_of(self.uri)
        self._sent: dict[str, tuple[int, int]] = {}

    def exists(self) -> bool:
        """Something is already stored at the URI."""
        from pyarrow import fs
        return bool(self.filesystem.get_file_info(fs.FileSelector(self.path, allow_not_found=True)))

    def pull(self) -> bool:
        ok = download_dir(self.uri, self.local)
        if ok:
            self._sent = self._snapshot()
        return ok

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        out = {}
        for p in self.local.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                st = p.stat()
                out[p.relative_to(self.local).as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def push(self) -> int:
        """Upload new and changed files; returns how many were sent."""
        from pyarrow import fs
        now = self._snapshot()
        changed = sorted((k for k, v in now.items() if self._sent.get(k) != v), key=lambda k: k in POINTERS)
        for rel in changed:
            dest = f"{self.path}/{rel}"
            self.filesystem.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            fs.copy_files(str(self.local / rel), dest, source_filesystem=fs.LocalFileSystem(),
                          destination_filesystem=self.filesystem)
        gone_dirs = {k.split("/")[1] for k in self._sent if k not in now and k.startswith("checkpoints/step_")}
        for d in gone_dirs:
            if not (self.local / "checkpoints" / d).exists():
                self.filesystem.delete_dir(f"{self.path}/checkpoints/{d}")
        self._sent = now
        return len(changed)


    def delete_in_parts(self, checkpoint: str, folder: str) -> None:
        """Delete ``folder`` inside each part directory of ``checkpoint`` (a path under the run)
        at the URI, where actors wrote them."""
        from pyarrow import fs
        parts = self.filesystem.get_file_info(fs.FileSelector(f"{self.path}/{checkpoint}", allow_not_found=True))
        for part in parts:
            if part.type == fs.FileType.Directory and \
                    self.filesystem.get_file_info(f"{part.path}/{folder}").type == fs.FileType.Directory:
                self.filesystem.delete_dir(f"{part.path}/{folder}")


def check_shared(run_dir: Path, nodes: list[dict], probe: Callable[[str, str], bool]) -> None:
    """Fail when a node of a multi-node cluster cannot see ``run_dir``. ``probe(node_id, marker)``
    answers whether a file the driver wrote is visible on that node."""
    if len(nodes) < 2:
        return
    marker = run_dir / f".evoray-shared-{uuid.uuid4().hex}"
    marker.write_text("visible?")
    try:
        blind = [n["NodeManagerAddress"] + f" ({n['NodeID'][:8]})" for n in nodes
                 if not probe(n["NodeID"], str(marker))]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise ValueError(
            f"--run-dir {run_dir} is a node-local path: the cluster has {len(nodes)} nodes and "
            f"{', '.join(blind)} cannot see it. Use a shared mount every node sees, or a URI "
            f"such as s3://bucket/runs/NAME (pyarrow filesystems)")


def ray_probe(node_id: str, marker: str) -> bool:
    """Run ``os.path.exists(marker)`` on node ``node_id`` (a zero-CPU task pinned there)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    exists = ray.remote(num_cpus=0)(os.path.exists).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    return ray.get(exists.remote(marker), timeout=60)

