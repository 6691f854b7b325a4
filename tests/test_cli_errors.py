"""Bad input fails at start, before Ray or the model start, with a message naming the problem."""
from __future__ import annotations

import json

import pytest

from services.cli import main

ROOT_CONFIG = "jobs/configs/srt-smoke.yaml"


def run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_unknown_key_names_it(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("job: srt\nlearner:\n  lrr: 0.1\n")
    code, err = run(["run", str(cfg), "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "learner.lrr" in err and "unknown key" in err
    assert not (tmp_path / "r").exists()


def test_wrong_type_via_set_names_key(capsys, tmp_path):
    code, err = run(["run", ROOT_CONFIG, "--set", "train.steps=many", "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "train.steps" in err


def test_missing_model_path(tmp_path, capsys):
    code, err = run(["run", ROOT_CONFIG, "--set", f"model.name={tmp_path}/nope",
                     "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and f"{tmp_path}/nope" in err


def test_dataset_without_prompt_column(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    code, err = run(["run", ROOT_CONFIG, "--set", f"data.source={data}", "--set", f"data.heldout_source={held}",
                     "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and str(data) in err and "prompt" in err


def test_missing_config_file(capsys, tmp_path):
    code, err = run(["run", str(tmp_path / "absent.yaml")], capsys)
    assert code == 2 and "absent.yaml" in err


def test_resume_needs_a_run_dir(capsys, tmp_path):
    code, err = run(["resume", str(tmp_path)], capsys)
    assert code == 2 and "config.yaml" in err


@pytest.mark.parametrize("key", ["reward.kind=labels", "learner.advantage=ppo"])
def test_bad_choices(capsys, key, tmp_path):
    code, err = run(["run", ROOT_CONFIG, "--set", key, "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and key.split("=")[0] in err


# --- the CLI as a user runs it: exit 2, one line on stderr, no traceback, seconds, nothing left ---

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, timeout=60):
    """``evoray ARGS`` in a fresh process; (exit code, stderr lines, seconds)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return proc.returncode, proc.stderr.strip().splitlines(), time.monotonic() - start


def assert_one_line_error(code, lines, seconds, *needles):
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("evoray: error: "), lines
    assert "Traceback" not in lines[0]
    assert seconds < 10, f"{seconds:.1f}s"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def labelled(tmp_path, name="held.jsonl"):
    path = tmp_path / name
    path.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    return path


BAD_RUNS = {
    "hub id neither cached nor reachable": (["--set", "model.name=no-such-org/no-such-model"],
                                            {"HF_HUB_OFFLINE": "1"}, "model.name", "no-such-org/no-such-model"),
    "YAML error in a --set value": (["--set", "sampling={n: 4"], {}, "--set sampling={n: 4"),
    "negative number": (["--set", "train.steps=-3"], {}, "train.steps"),
    "zero rows asked for": (["--set", "data.n_train=0"], {}, "data.n_train"),
    "unknown job": (["--set", "job=nope"], {}, "job", "nope"),
    "unknown tracker": (["--set", "tracking=[tensorbored]"], {}, "tracking"),
    "--set without =": (["--set", "train.steps"], {}, "train.steps", "key.path=value"),
    "a Ray address nothing answers at": (["--set", "ray.address=127.0.0.1:1"], {}, "ray.address 127.0.0.1:1"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_run_fails_at_once_and_leaves_nothing(tmp_path, case):
    extra, env, *needles = BAD_RUNS[case]
    run_dir = tmp_path / "r"
    code, lines, seconds = cli("run", ROOT_CONFIG, *extra, "--run-dir", str(run_dir), env=env)
    assert_one_line_error(code, lines, seconds, *needles)
    assert not run_dir.exists()


def test_unreadable_dataset_is_named(tmp_path):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"not parquet")
    code, lines, seconds = cli("run", ROOT_CONFIG, "--set", f"data.source={bad}",
                               "--set", f"data.heldout_source={labelled(tmp_path)}",
                               "--run-dir", str(tmp_path / "r"))
    assert_one_line_error(code, lines, seconds, str(bad), "Parquet")
    assert not (tmp_path / "r").exists()


def test_jsonl_row_that_is_not_an_object(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a"}\n[1, 2]\n')
    code, lines, seconds = cli("run", ROOT_CONFIG, "--set", f"data.source={data}",
                               "--set", f"data.heldout_source={labelled(tmp_path)}")
    assert_one_line_error(code, lines, seconds, f"{data}:2")


@pytest.mark.parametrize("what", ["missing", "directory", "binary"])
def test_bad_config_file(tmp_path, what):
    path = {"missing": tmp_path / "absent.yaml", "directory": tmp_path, "binary": tmp_path / "c.yaml"}[what]
    if what == "binary":
        path.write_bytes(b"\xff\xfe\x00bad")
    code, lines, seconds = cli("run", str(path))
    assert_one_line_error(code, lines, seconds, str(path))


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    code, lines, seconds = cli("run", ROOT_CONFIG, "--run-dir", str(tmp_path / "f"))
    assert_one_line_error(code, lines, seconds, str(tmp_path / "f"), "file")


# --- run directories a resume cannot use, or a run may reuse ------------------------------------

def failed_start(tmp_path) -> Path:
    """What a start that died before step 0's checkpoint leaves: a config and a first event."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "samples").mkdir()
    (run_dir / "config.yaml").write_text((ROOT / ROOT_CONFIG).read_text())
    (run_dir / "events.jsonl").write_text(json.dumps({"event": "run_started", "step": 0}) + "\n")
    return run_dir


def finished_run(tmp_path) -> Path:
    """A run whose last event says it finished (a checkpoint pointer is all resume looks for first)."""
    from services.run_state import config_digest
    run_dir = failed_start(tmp_path)
    (run_dir / "checkpoints" / "step_000008").mkdir()
    (run_dir / "checkpoints" / "latest").write_text("step_000008")
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"event": "run_finished", "step": 8, "config": config_digest(run_dir)}) + "\n")
    return run_dir


def test_resume_without_checkpoint_says_so_before_ray(tmp_path):
    run_dir = failed_start(tmp_path)
    code, lines, seconds = cli("resume", str(run_dir))
    assert_one_line_error(code, lines, seconds, str(run_dir), "no checkpoint", "evoray run")


def test_resume_of_a_finished_run_says_it_is_finished(tmp_path):
    run_dir = finished_run(tmp_path)
    code, lines, seconds = cli("resume", str(run_dir))
    assert_one_line_error(code, lines, seconds, "finished at step 8", "train.steps")


def test_a_changed_config_reopens_a_finished_run(tmp_path):
    from services.run_state import finished_event
    run_dir = finished_run(tmp_path)
    assert finished_event(run_dir)["step"] == 8
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace("steps: 2,", "steps: 12,"))
    assert finished_event(run_dir) is None


@pytest.mark.parametrize("key", ["learner.lr=1e-3", "model.name=other", "data.source=x.jsonl", "train={steps: 9}"])
def test_resume_refuses_keys_the_checkpoints_depend_on(tmp_path, key):
    run_dir = finished_run(tmp_path)
    before = (run_dir / "config.yaml").read_text()
    code, lines, seconds = cli("resume", str(run_dir), "--set", key)
    assert_one_line_error(code, lines, seconds, f"--set {key.split('=')[0]}", "train.steps")
    assert (run_dir / "config.yaml").read_text() == before


def test_resume_set_writes_a_resumable_key(tmp_path, capsys):
    """``--set train.steps`` lands in config.yaml (the checks then start Ray: here the run dir's
    checkpoint is fake, so only the config change is looked at — with Ray kept away)."""
    import argparse

    from services.cli import resume_config
    run_dir = finished_run(tmp_path)
    cfg = resume_config(argparse.Namespace(run_dir=str(run_dir), set=["train.steps=20", "eval.every=5"]))
    assert cfg.train.steps == 20 and cfg.eval.every == 5
    assert "steps: 20" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])["event"] == "config_changed"
    from services.run_state import finished_event
    assert finished_event(run_dir) is None          # more steps asked for: no longer finished


def test_run_reuses_the_directory_of_a_failed_start(tmp_path):
    from services.config import load_config
    from services.run_state import prepare_new_run
    run_dir = failed_start(tmp_path)
    cls = type(load_config(ROOT_CONFIG))
    assert prepare_new_run(str(run_dir), cls, empty=True)
    assert run_dir.is_dir() and not any(run_dir.iterdir())
    finished = finished_run(tmp_path / "other")
    with pytest.raises(Exception, match="not empty"):
        prepare_new_run(str(finished), cls, empty=False)


def test_run_refuses_a_used_directory_at_once(tmp_path):
    run_dir = finished_run(tmp_path)
    code, lines, seconds = cli("run", ROOT_CONFIG, "--run-dir", str(run_dir))
    assert_one_line_error(code, lines, seconds, "not empty", f"evoray resume {run_dir}")


def test_version_and_help():
    code, _, _ = cli("--version")
    assert code == 0
    out = subprocess.run([sys.executable, "-m", "services.cli", "run", "--help"], cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert "--run-dir" in out and "runs/NAME-" in out and "config" in out


def test_a_failed_start_removes_what_it_wrote(tmp_path):
    """Ctrl-C or a crash before the first checkpoint: the directory this command created goes; one
    that existed (a failed start being reused) is emptied; a resumable run is never touched."""
    from services.config import load_config
    from services.run_state import remove_failed_start
    cls = type(load_config(ROOT_CONFIG))
    created = failed_start(tmp_path / "a")
    assert remove_failed_start(str(created), cls, created=True) and not created.exists()
    reused = failed_start(tmp_path / "b")
    assert remove_failed_start(str(reused), cls, created=False) and reused.is_dir() and not any(reused.iterdir())
    started = finished_run(tmp_path / "c")
    assert not remove_failed_start(str(started), cls, created=True) and (started / "config.yaml").is_file()
