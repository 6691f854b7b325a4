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
