"""Run directories on pyarrow filesystems (exercised with file:// URIs, the same pyarrow code an
s3:// or gs:// URI goes through) and the shared-path check for multi-node clusters."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from services.config import ConfigError
from services.driver import open_store
from actors.storage import read_dir, write_dir
from services.storage import RunMirror, check_shared

ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mirror_pushes_changes_deletes_pruned_checkpoints_and_pointers_last(tmp_path, monkeypatch):
    local, remote = tmp_path / "local", tmp_path / "remote"
    (local / "checkpoints" / "step_000001").mkdir(parents=True)
    (local / "checkpoints" / "step_000001" / "state.json").write_text("1")
    (local / "checkpoints" / "latest").write_text("step_000001")
    (local / "metrics.parquet").write_text("m1")
    sent = []
    original = pyarrow.fs.copy_files
    monkeypatch.setattr(pyarrow.fs, "copy_files", lambda src, dst, **kw: (sent.append(dst), original(src, dst, **kw)))
    mirror = RunMirror(local, f"file://{remote}")
    assert mirror.push() == 3
    assert sent[-1].endswith("checkpoints/latest")            # a pointer never leads its target
    assert tree(remote) == tree(local)
    assert mirror.push() == 0                                  # nothing changed, nothing sent
    (local / "metrics.parquet").write_text("m2, longer")
    (local / "checkpoints" / "step_000002").mkdir()
    (local / "checkpoints" / "step_000002" / "state.json").write_text("2")
    (local / "checkpoints" / "latest").write_text("step_000002")
    import shutil
    shutil.rmtree(local / "checkpoints" / "step_000001")
    assert mirror.push() == 3
    assert tree(remote) == tree(local)                         # step 1 gone there too


def test_actor_parts_round_trip_through_a_uri(tmp_path):
    uri = f"file://{tmp_path}/remote/checkpoints/step_000003/learner"
    write_dir(uri, lambda d: (d / "model.bin").write_bytes(b"\x00weights"))
    with read_dir(uri) as local:
        assert (local / "model.bin").read_bytes() == b"\x00weights"
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        with read_dir(f"file://{tmp_path}/nothing-here"):
            pass


def test_open_store_refuses_to_overwrite_or_resume_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EVORAY_CACHE", str(tmp_path / "cache"))
    uri = f"file://{tmp_path}/remote/run-1"
    with pytest.raises(ConfigError, match="is not a run directory"):
        open_store(uri, resume=True)
    store = open_store(uri, resume=False)
    store.write_config("job: srt\n")
    store.log(0, {"heldout/pass@1": 0.5})
    store.flush_metrics()                          # flushing pushes
    assert (tmp_path / "remote" / "run-1" / "config.yaml").read_text() == "job: srt\n"
    with pytest.raises(ConfigError, match="is not empty"):
        open_store(uri, resume=False)
    monkeypatch.setenv("EVORAY_CACHE", str(tmp_path / "another-driver"))
    again = open_store(uri, resume=True)           # a new driver pulls the run
    assert again.metric_series("heldout/pass@1") == [(0, 0.5)] and again.name == "run-1"


def test_unknown_scheme_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="pyarrow cannot open it"):
        RunMirror(tmp_path, "nosuchfs://bucket/run")


NODES = [{"NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"}, {"NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"}]


def test_a_node_local_run_dir_on_a_multi_node_cluster_fails(tmp_path):
    seen = []
    probe = lambda node, marker: seen.append(marker) or Path(marker).exists() and node.startswith("a")
    with pytest.raises(ValueError, match=r"node-local path: the cluster has 2 nodes and 10.0.0.2 \(bbbbbbbb\) cannot see it"):
        check_shared(tmp_path, NODES, probe)
    assert seen and not Path(seen[0]).exists()       # the marker is cleaned up
    check_shared(tmp_path, NODES, lambda node, marker: Path(marker).exists())
    check_shared(tmp_path, NODES[:1], lambda node, marker: pytest.fail("one node: nothing to check"))


@pytest.mark.slow
def test_srt_run_and_resume_on_a_uri_run_dir(tmp_path, tiny_number_lm):
    """The whole job with ``--run-dir file://...``: the learner writes its checkpoint part to the
    URI itself; a second driver with an empty cache resumes from the URI alone."""
    uri = f"file://{tmp_path}/bucket/runs/srt-uri"
    common = ["--set", f"model.name={tiny_number_lm}", "--set", "reward.require_finished=false",
              "--set", "ray.num_cpus=2", "--set", "ray.include_dashboard=false"]
    run = lambda *args, cache: subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT,
                                              capture_output=True, text=True, timeout=600,
                                              env={**__import__("os").environ, "EVORAY_CACHE": str(cache)})
    first = run("run", "jobs/configs/srt-smoke.yaml", "--run-dir", uri, *common, cache=tmp_path / "driver-1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip().splitlines()[-1] == uri
    remote = tmp_path / "bucket" / "runs" / "srt-uri"
    assert (remote / "checkpoints" / "latest").read_text() == "step_000002"
    learner = remote / "checkpoints" / "step_000002" / "learner"
    # the votes split (the model writes random digits), so the policy moved and its weights are there
    assert json.loads((learner / "learner.json").read_text())["version"] > 0
    assert (learner / "model.safetensors").is_file()
    # the actor wrote its resume state to the URI; the finished run deleted it there
    assert not list((remote / "checkpoints").glob("step_*/learner/resume"))
    assert sorted({r["step"] for r in pq.read_table(remote / "metrics.parquet").to_pylist()}) == [0, 1, 2]
    finished = run("resume", uri, cache=tmp_path / "driver-2")
    assert finished.returncode == 2 and f"{uri} already finished at step 2" in finished.stderr
    second = run("resume", uri, "--set", "train.steps=3", cache=tmp_path / "driver-2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert '"event": "resumed"' in (remote / "events.jsonl").read_text()
    assert "steps: 3" in (remote / "config.yaml").read_text()
    assert sorted({r["step"] for r in pq.read_table(remote / "metrics.parquet").to_pylist()}) == [0, 1, 2, 3]
