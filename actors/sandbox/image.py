"""The sandbox image, built on first use when it is missing — without any registry.

``docker/sandbox/build-base.sh`` makes the base (a debootstrap'd Debian minbase + python3, loaded
with ``docker import``); ``docker/sandbox/Dockerfile`` adds the non-root user.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from actors.sandbox.types import SandboxError

SANDBOX_DIR = Path(__file__).resolve().parents[2] / "docker" / "sandbox"
BASE_IMAGE = "evoray-sandbox-base:bookworm"


def default_tag() -> str:
    """Named by the Dockerfile's hash: a changed Dockerfile is a new image, not a stale reuse."""
    digest = hashlib.sha256((SANDBOX_DIR / "Dockerfile").read_bytes()).hexdigest()
    return f"evoray-sandbox:{digest[:12]}"


def _has(client, tag: str) -> bool:
    import docker
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_image(client, tag: str | None = None) -> str:
    """Return a usable image tag; build the default image (and its base) when absent."""
    if tag:
        if not _has(client, tag):
            raise SandboxError(f"sandbox image {tag} not found (docker images)")
        return tag
    tag = default_tag()
    if _has(client, tag):
        return tag
    if not _has(client, BASE_IMAGE):
        script = SANDBOX_DIR / "build-base.sh"
        proc = subprocess.run(["bash", str(script), BASE_IMAGE], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SandboxError(f"building {BASE_IMAGE} with {script} failed (needs root and "
                               f"debootstrap): {proc.stdout[-400:]}{proc.stderr[-400:]}")
    try:
        client.images.build(path=str(SANDBOX_DIR), tag=tag, network_mode="none", rm=True,
                            buildargs={"BASE": BASE_IMAGE})
    except Exception as e:
        raise SandboxError(f"building {tag} from {SANDBOX_DIR} failed: {e}") from e
    return tag
