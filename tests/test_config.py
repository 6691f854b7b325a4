"""Unit tests for the configs (services/config.py and each loop's config.py)."""
from pathlib import Path

import pytest
import yaml

from jobs.srt.config import SRTConfig
from services.config import ConfigError, apply_override, dump_config, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
JOB_CONFIGS = sorted({*REPO.glob("jobs/configs/**/*.yaml"), *REPO.glob("jobs/configs/**/*.yml")})


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_validate():
    cfg = parse_config({})
    assert isinstance(cfg, SRTConfig)
    assert cfg.job == "srt"
    assert cfg.learner.lr == 3e-6
    assert cfg.learner.advantage == "grpo"
    assert (cfg.learner.clip_low, cfg.learner.clip_high) == (0.2, 0.28)
    assert cfg.learner.kl_estimator == "low_var_kl"
    assert cfg.learner.aggregation == "token-mean"
    assert cfg.sampling.n == 8
    assert cfg.train.steps == 40
    assert cfg.data.split_fractions == {"train": 0.6, "val": 0.1, "heldout": 0.3}
    assert SRTConfig() == cfg


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == SRTConfig()
    assert load_config(write(tmp_path, "# only a comment\n")) == SRTConfig()


def test_yaml_values_are_read(tmp_path):
    path = write(tmp_path, "name: run1\nlearner:\n  lr: 1.0e-5\n  advantage: rloo\ntrain:\n  steps: 5\n")
    cfg = load_config(path)
    assert cfg.name == "run1"
    assert cfg.learner.lr == 1e-5
    assert cfg.learner.advantage == "rloo"
    assert cfg.train.steps == 5
    assert cfg.sampling.n == 8  # untouched defaults stay


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "learner:\n  lrr: 1.0e-5\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "learner.lrr" in msg
    assert "unknown key" in msg
    assert str(path) in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"learnr: unknown key"):
        load_config(write(tmp_path, "learnr:\n  lr: 1.0\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.steps") as e:
        load_config(write(tmp_path, "train:\n  steps: many\n"))
    assert "integer" in str(e.value)
    with pytest.raises(ConfigError, match=r"sampling\.top_p"):
        load_config(write(tmp_path, "sampling:\n  top_p: 1.5\n"))   # le=1
    with pytest.raises(ConfigError, match=r"reward\.kind"):
        load_config(write(tmp_path, "reward:\n  kind: vibes\n"))    # not a Literal choice


def test_several_errors_are_all_reported(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "learner:\n  lrr: 1\ntrain:\n  steps: 0\n"))
    assert "learner.lrr" in str(e.value) and "train.steps" in str(e.value)


@pytest.mark.parametrize("field, value, choices", [
    ("advantage", "ppo", ["drgrpo", "grpo", "rloo"]),
    ("policy_loss", "nope", ["ppo_clip", "vanilla_pg"]),
    ("kl_estimator", "k9", ["k1", "low_var_kl"]),
    ("aggregation", "sum", ["seq-mean-token-mean", "token-mean"]),
])
def test_unregistered_names_list_the_choices(tmp_path, field, value, choices):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f"learner:\n  {field}: {value}\n"))
    msg = str(e.value)
    assert f"learner.{field}" in msg
    assert repr(value) in msg and "not registered" in msg
    for choice in choices:
        assert repr(choice) in msg


def test_overrides(tmp_path):
    path = write(tmp_path, "learner:\n  lr: 1.0e-4\n")
    cfg = load_config(path, ["learner.lr=1e-5", "train.steps=3"])
    assert cfg.learner.lr == 1e-5        # '1e-5' is a YAML string; pydantic reads it as a float
    assert cfg.train.steps == 3
    assert isinstance(cfg.train.steps, int)


def test_override_creates_sections_and_parses_yaml_values(tmp_path):
    cfg = load_config(write(tmp_path, ""), ["reward.soft=true", "sampling.temperature=0.7",
                                             "name=my run", "data.split_fractions={train: 0.5, heldout: 0.5}"])
    assert cfg.reward.soft is True
    assert cfg.sampling.temperature == 0.7
    assert cfg.name == "my run"
    assert cfg.data.split_fractions == {"train": 0.5, "heldout": 0.5}


def test_override_value_may_contain_equals(tmp_path):
    # split at the first '=' only
    cfg = load_config(write(tmp_path, ""), ["data.template=a=b {question}"])
    assert cfg.data.template == "a=b {question}"


def test_later_override_wins(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  steps: 9\n"), ["train.steps=3", "train.steps=4"])
    assert cfg.train.steps == 4


def test_bad_overrides(tmp_path):
    path = write(tmp_path, "train:\n  steps: 9\n")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["train.steps"])
    with pytest.raises(ConfigError, match=r"'steps' is not a section"):
        load_config(path, ["train.steps.x=1"])
    with pytest.raises(ConfigError, match=r"learner\.lrr"):
        load_config(path, ["learner.lrr=1"])
    with pytest.raises(ConfigError, match=r"train\.steps"):
        load_config(path, ["train.steps=0"])   # ge=1


def test_apply_override_on_dict():
    raw = {"train": {"steps": 1}}
    apply_override(raw, "train.seed=5")
    apply_override(raw, "learner.betas=[0.8, 0.9]")
    assert raw == {"train": {"steps": 1, "seed": 5}, "learner": {"betas": [0.8, 0.9]}}


def test_invalid_yaml_names_file_and_line(tmp_path):
    # line 3 'learner: lr: 3' — a mapping value after a plain scalar key is not allowed
    path = write(tmp_path, "model:\n  name: x\nlearner: lr: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:3" in str(e.value)
    assert "not valid YAML" in str(e.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "does not exist" in str(e.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
@pytest.mark.parametrize("override", ["train.steps=3", "name=x"])
def test_top_level_not_a_mapping_with_overrides(tmp_path, text, override):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, text), [override])


def test_unknown_job(tmp_path):
    with pytest.raises(ConfigError, match=r"job: 'sft' is not one of \['dgm', 'mmupt', 'srt', 'uigenie'\]"):
        load_config(write(tmp_path, "job: sft\n"))


def test_dump_round_trip():
    cfg = parse_config({"learner": {"lr": 1e-5, "advantage": "rloo", "betas": [0.8, 0.95]},
                        "train": {"steps": 3}, "reward": {"soft": True}})
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert again.learner.betas == (0.8, 0.95)


def test_assignment_is_validated():
    cfg = SRTConfig()
    with pytest.raises(ValueError):
        cfg.train.steps = 0


@pytest.mark.parametrize("path", JOB_CONFIGS or [pytest.param(
    None, marks=pytest.mark.skip(reason="no YAML files under jobs/configs/ yet (the glob is empty)"))],
    ids=lambda p: str(p.relative_to(REPO)) if p else "none")
def test_shipped_configs_load(path):
    from services.registry import lookup
    cfg = load_config(path)
    assert isinstance(cfg, lookup(cfg.job).config) and path.stem.startswith(cfg.job)


def test_dgm_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"loop.selection: .*unknown parent selection 'bestest'"):
        load_config(write(tmp_path, "job: dgm\nloop: {selection: bestest}\n"))
    with pytest.raises(ConfigError, match=r"sandbox.pool_sise: unknown key"):
        load_config(write(tmp_path, "job: dgm\nsandbox: {pool_sise: 2}\n"))
    with pytest.raises(ConfigError, match=r"tasks: .*benchmark 'repo' needs path"):
        load_config(write(tmp_path, "job: dgm\ntasks: {benchmark: repo}\n"))


def test_uigenie_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"beam.widht: unknown key"):
        load_config(write(tmp_path, "job: uigenie\nbeam: {widht: 2}\n"))
    with pytest.raises(ConfigError, match=r"tasks.split_fractions: .*exactly seed, explore and heldout"):
        load_config(write(tmp_path, "job: uigenie\ntasks: {split_fractions: {seed: 0.5, test: 0.5}}\n"))
    with pytest.raises(ConfigError, match=r"devices.size: .*greater than or equal to 1"):
        load_config(write(tmp_path, "job: uigenie\ndevices: {size: 0}\n"))


def test_uigenie_unknown_device_backend_fails_before_ray(tmp_path, capsys):
    from services.cli import main
    path = write(tmp_path, "job: uigenie\ndevices: {backend: emulatr}\n")
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert "unknown device backend 'emulatr'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("template, message", [
    ("{question} in \\boxed{}.", r"not a template with one field \{question\}"),
    ("{q}", r"not a template with one field \{question\}.*KeyError"),
    ("What is it?", r"has no \{question\} field"),
])
def test_prompt_template_is_checked_at_start(template, message):
    for job in ("srt", "mmupt"):
        with pytest.raises(ConfigError, match=r"data.template: .*" + message):
            parse_config({"job": job, "data": {"template": template}})
    assert parse_config({"job": "mmupt", "data": {"template": "{question} in \\boxed{{}}."}})
