"""What a Learner checkpoint holds (actors/learner_checkpoint.py): no weights while the policy is
the base model, the optimizer state in ``resume/``, and a checkpoint without it loads as weights."""
from __future__ import annotations

import shutil


from actors.learner import Learner, LearnerSettings
from tests.test_generation_learner import assert_params_close, fixed_samples, params


def settings(path, **kw) -> LearnerSettings:
    return LearnerSettings(**{"model": path, "lr": 1e-2, "threads": 1, **kw})


def test_an_untrained_policy_is_saved_without_weights(tiny_lm, prompt_ids, tmp_path):
    """Version 0 is the base model: no model.safetensors; a learner that has trained since loads
    the base weights back from its model, one that has not keeps its own."""
    base = Learner(settings(tiny_lm))
    base.save(str(tmp_path / "v0"))
    assert not (tmp_path / "v0" / "model.safetensors").exists()
    assert (tmp_path / "v0" / "resume" / "trainer_state.pt").is_file()
    moved = Learner(settings(tiny_lm))
    moved.train_step(fixed_samples(prompt_ids))
    assert moved.load(str(tmp_path / "v0")) == 0
    assert_params_close(params(moved.model), params(base.model), atol=0)
    # the optimizer state went back to the empty one of version 0: both take the same next step
    a, b = moved.train_step(fixed_samples(prompt_ids)), base.train_step(fixed_samples(prompt_ids))
    assert a["loss"] == b["loss"]
    assert_params_close(params(moved.model), params(base.model), atol=0)


def test_a_checkpoint_without_resume_state_loads_its_weights(tiny_lm, prompt_ids, tmp_path, capfd):
    trained = Learner(settings(tiny_lm))
    trained.train_step(fixed_samples(prompt_ids))
    trained.save(str(tmp_path / "v1"))
    shutil.rmtree(tmp_path / "v1" / "resume")
    fresh = Learner(settings(tiny_lm))
    assert fresh.load(str(tmp_path / "v1")) == 1
    assert "no resume state; weights only" in capfd.readouterr().err
    assert_params_close(params(fresh.model), params(trained.model), atol=0)
    assert fresh.opt.state_dict()["state"] == {}                  # Adam starts afresh
