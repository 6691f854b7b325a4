"""A user's day through the CLI with real Ray actors (a tiny checkpoint, so it is quick): a 500-row
Parquet dataset is trained on whole, TensorBoard gets metrics.parquet's scalars, files are
readable by teammates, Ctrl-C names the run directory, and a finished run says so on resume."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_cli_errors import ROOT, assert_one_line_error, cli

pytestmark = pytest.mark.slow
SMOKE = "jobs/configs/srt-smoke.yaml"


def dataset(tmp_path: Path, n: int, name: str) -> Path:
    rows = [{"id": f"{name}{i}", "prompt": f"what is {i % 10} plus one", "answer": str(i % 10 + 1)} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
    return tmp_path / f"{name}.parquet"


def test_whole_dataset_tracked_in_tensorboard(tmp_path, tiny_lm):
    pytest.importorskip("tensorboardX", reason="make test installs it (the [test] extra)")
    from tests.tfevents import read_scalars
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", SMOKE, "--run-dir", str(run_dir),
         "--set", f"model.name={tiny_lm}", "--set", f"data.source={dataset(tmp_path, 500, 'train')}",
         "--set", f"data.heldout_source={dataset(tmp_path, 4, 'held')}", "--set", "data.n_train=null",
         "--set", "data.n_val=null", "--set", "data.n_heldout=null",
         "--set", "train.prompts_per_step=125", "--set", "train.steps=4", "--set", "sampling.n=2",
         "--set", "sampling.max_new_tokens=2", "--set", "eval.every=4", "--set", "eval.n=1",
         "--set", "tracking=[tensorboard]"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "500 train" in proc.stdout
    trained = {r["prompt_id"] for f in (run_dir / "samples").glob("train_step*.parquet")
               for r in pq.read_table(f).to_pylist()}
    assert len(trained) == 500                                 # every row, over one epoch
    data_event = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                  if '"data"' in line][0]
    assert (data_event["train"], data_event["heldout"]) == (500, 4)
    parquet = {(r["step"], r["name"]): r["value"] for r in pq.read_table(run_dir / "metrics.parquet").to_pylist()}
    assert read_scalars(run_dir / "tensorboard") == pytest.approx(parquet)
    assert stat.S_IMODE((run_dir / "metrics.parquet").stat().st_mode) == 0o666 & ~current_umask()
    assert stat.S_IMODE((run_dir / "checkpoints" / "step_000004").stat().st_mode) == 0o777 & ~current_umask()
    # finished: resume says so at once, and reopens with more steps
    code, lines, seconds = cli("resume", str(run_dir))
    assert_one_line_error(code, lines, seconds, "finished at step 4")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_ctrl_c_names_the_run_directory(tmp_path, tiny_lm):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run", SMOKE, "--run-dir", str(run_dir),
         "--set", f"model.name={tiny_lm}", "--set", "train.steps=200", "--set", "sampling.max_new_tokens=2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # as from a terminal, even where the tests were started with SIGINT ignored (`make test &`)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None and not latest.exists():
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert f"evoray resume {run_dir}" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
