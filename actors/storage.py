"""Directories on a local path or a pyarrow filesystem URI (``s3://``, ``gs://``, ``hdfs://``,
``file://``): what an actor needs to write its checkpoint parts straight to a run directory on any
node (``write_dir``) and read them back (``read_dir``)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

# The folder of a checkpoint part that only continuing the run reads (optimizer and RNG state): the
# run directory keeps it in the latest checkpoint alone.
RESUME_DIR = "resume"


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def filesystem_of(uri: str):
    from pyarrow import fs
    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as e:       # unknown scheme, no credentials, malformed URI
        raise ValueError(f"run directory {uri}: pyarrow cannot open it ({e})") from None


def upload_dir(local: Path, uri: str) -> None:
    from pyarrow import fs
    filesystem, path = filesystem_of(uri)
    filesystem.create_dir(path, recursive=True)
    fs.copy_files(str(local), path, source_filesystem=fs.LocalFileSystem(), destination_filesystem=filesystem)


def download_dir(uri: str, local: Path) -> bool:
    """Copy ``uri`` into ``local``; False when there is nothing at ``uri``."""
    from pyarrow import fs
    filesystem, path = filesystem_of(uri)
    if filesystem.get_file_info(path).type != fs.FileType.Directory:
        return False
    local.mkdir(parents=True, exist_ok=True)
    fs.copy_files(path, str(local), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return True


def write_dir(dest: str, write: Callable[[Path], None]) -> None:
    """``write(dir)`` into ``dest``: a local directory, or a URI (written to a local temp, uploaded)."""
    if not is_uri(dest):
        write(Path(dest))
        return
    with tempfile.TemporaryDirectory(prefix="evoray-upload-") as tmp:
        write(Path(tmp))
        upload_dir(Path(tmp), dest)


@contextlib.contextmanager
def read_dir(src: str) -> Iterator[Path]:
    """A local directory holding ``src``'s files for the duration of the block."""
    if not is_uri(src):
        yield Path(src)
        return
    with tempfile.TemporaryDirectory(prefix="evoray-download-") as tmp:
        if not download_dir(src, Path(tmp)):
            raise FileNotFoundError(f"{src}: no such checkpoint directory")
        yield Path(tmp)


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def shared_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the file or folder what the umask allows any new one
    (0644/0755 by default), so teammates on a shared mount can read the run."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def save_pretrained_atomically(target: Path, *parts) -> None:
    """``save_pretrained`` each part (model, tokenizer, processor) into a temporary directory beside
    ``target`` and rename it into place; if another process got there first, keep theirs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    shared_mode(tmp, directory=True)
    try:
        for part in parts:
            part.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process wrote it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
