"""UI-Genie's run-to-completion training on Ray Train (``services/ray_train.py``): the reward
model's head trained by 1 and by 2 workers gives the one-process head, a worker that fails is
retried from the run's last checkpoint, and the agent's SFT on 2 workers lowers the loss and hands
back weights the sampler loads and the next SFT starts from. One local Ray instance for the
module; a trainer takes ~20–30 s to start here, so there are two."""
from __future__ import annotations

import random

import pytest
import torch

from actors.reward_model.model import RewardModelSettings, fit_head, new_head, read_meta
from services.config import RayTrainConfig


@pytest.fixture(scope="module")
def ray_session():
    import ray
    ray.init(num_cpus=4, include_dashboard=False, namespace="test-ray-train", log_to_driver=False)
    yield ray
    ray.shutdown()


def rm_data(n: int = 90, dim: int = 12):
    """Features whose label is a noisy linear rule, so the head has something to learn."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * torch.randn(n, generator=gen) > 0).long().tolist()
    return x, y


SETTINGS = RewardModelSettings(head_hidden=8, lr=1e-2, batch_size=32, seed=3)   # 3 mini-batches: 32, 32, 26


def one_process_head(x, y, epochs):
    head = new_head(x.shape[1], SETTINGS)
    head.set_normaliser(x)
    n_pos = sum(y)
    losses = fit_head(head, x, torch.tensor(y, dtype=torch.float32), (len(y) - n_pos) / n_pos, SETTINGS, epochs)
    return head.state_dict(), losses


def train_rm_head(ray, tmp_path, workers: int, fail_once=None):
    from dataclasses import asdict

    from actors.reward_model.train import train_head
    from services.ray_train import checkpoint_files, fit
    x, y = rm_data()
    config = {"features": [ray.put(x)], "labels": y, "settings": asdict(SETTINGS), "epochs": 15,
              "threads": 1, "fail_once": fail_once}
    run = fit(train_head, config, RayTrainConfig(workers=workers, max_failures=1), str(tmp_path / "store"), "rm-head")
    files = checkpoint_files(run.checkpoint)
    (tmp_path / "head").mkdir()
    for name, data in files.items():
        (tmp_path / "head" / name).write_bytes(data)
    from safetensors.torch import load_file
    return load_file(str(tmp_path / "head" / "head.safetensors")), run, read_meta(tmp_path / "head")


@pytest.mark.slow
def test_rm_head_on_two_workers_with_a_failed_attempt_is_the_one_process_head(ray_session, tmp_path):
    """Each mini-batch dealt over 2 DDP ranks (rank 1 gets 13 of the last 26 rows) is the same step
    as one process's (``fit_head``, what a single worker runs); the first attempt fails, the worker
    group is restarted and the head still comes back, in ``RewardModel.save``'s layout."""
    import signal
    marker = tmp_path / "failed-once"
    handler = signal.getsignal(signal.SIGINT)
    state, run, meta = train_rm_head(ray_session, tmp_path, workers=2, fail_once=str(marker))
    assert signal.getsignal(signal.SIGINT) is handler, "Ray Train's SIGINT handler outlived the run"
    assert marker.is_file(), "the first attempt did not run"
    assert meta["feature_size"] == 12 and meta["settings"]["head_hidden"] == 8
    expected, losses = one_process_head(*rm_data(), 15)
    assert losses[-1] < 0.5 * losses[0]
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v, rtol=1e-4, atol=1e-5)
    assert run.metrics["loss_last"] == pytest.approx(losses[-1], rel=1e-4)


@pytest.mark.slow
def test_agent_sft_on_two_workers_resumes_from_its_checkpoint_and_lowers_the_loss(ray_session, tmp_path, tiny_lm):
    """Two epochs on 2 workers; the first attempt fails after epoch 1's checkpoint, the retry
    starts from it, so every planned step ran once. The weights load into a sampler."""
    from actors.sampler import Sampler, SamplerSettings
    from actors.sft import plan, read_checkpoint, start_model, train_sft
    from services.ray_train import fit
    sampler = Sampler(SamplerSettings(model=tiny_lm, threads=1, system_prompt="system"))
    words = ["three", "four", "yes", "no", "red", "green", "up"]
    rows = [(sampler.encode([{"role": "user", "content": f"what is {w}"}], "ok so"),
             sampler.encode_reply(f"{w} done")) for w in words]
    steps = plan(len(rows), 6, 3, random.Random(0))   # 3, 3 and 1 rows: rank 1 sits the last one out
    config = {"model": tiny_lm, "lr": 1e-2, "grad_clip": 1.0, "trainable_layers": 1,
              "micro_batch_tokens": 20, "threads": 1, "seed": 0, "version": 1,
              "rows": [ray_session.put(rows)], "start": None, "plan": steps,
              "fail_once": str(tmp_path / "failed-once")}
    run = fit(train_sft, config, RayTrainConfig(workers=2, max_failures=1), str(tmp_path / "store"), "agent-sft")
    assert (tmp_path / "failed-once").is_file()
    with run.checkpoint.as_directory() as d:
        packed, meta = read_checkpoint(d)
    assert meta["epoch"] == 6 and len(meta["losses"]) == 18 == run.metrics["steps"]
    assert sum(meta["losses"][-3:]) < 0.5 * sum(meta["losses"][:3])
    names = {name for name, *_ in packed.spec}
    assert names and all(n.startswith(("model.layers.1.", "model.norm")) for n in names)   # the top layer
    before = dict(sampler.backend.model.named_parameters())["model.norm.weight"].clone()
    sampler.load_weights(packed)
    assert sampler.version == 1
    after = dict(sampler.backend.model.named_parameters())["model.norm.weight"]
    assert not torch.equal(after, before)
    again, _ = start_model({"model": tiny_lm, "trainable_layers": 1, "start": [ray_session.put(packed)]})
    assert torch.equal(dict(again.named_parameters())["model.norm.weight"], after)   # the next SFT's start


def test_train_section_builds_the_scaling_config_and_rejects_unknown_keys():
    from services.config import ConfigError, parse_config
    from services.ray_train import scaling
    s = scaling(RayTrainConfig(workers=3, num_cpus=2, resources={"trainer": 1}))
    assert s.num_workers == 3 and not s.use_gpu and s.resources_per_worker == {"CPU": 2.0, "trainer": 1.0}
    assert scaling(RayTrainConfig(use_gpu=True)).resources_per_worker["GPU"] == 1.0
    with pytest.raises(ConfigError, match=r"train\.worker: unknown key"):
        parse_config({"job": "uigenie", "train": {"worker": 2}})
    with pytest.raises(ConfigError, match=r"agent\.num_cpus: unknown key"):   # the learner actor is gone
        parse_config({"job": "uigenie", "agent": {"num_cpus": 1}})


def grads(module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.requires_grad]


def test_rm_head_rank_gradients_average_to_the_mini_batch_gradient():
    """Adam hides a wrong scale from the trained weights, so the ranks' gradients are checked
    directly: their average (what DDP all-reduces) is the one-process gradient, for a mini-batch
    that both ranks share and for one row (rank 1 then has none and adds zeros)."""
    from torch import nn

    from actors.reward_model.model import share_backward
    x, y = rm_data()
    y = torch.tensor(y, dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.7]), reduction="sum")
    for idx in (torch.arange(5, 32), torch.tensor([7])):
        heads = [new_head(x.shape[1], SETTINGS) for _ in range(3)]
        share_backward(heads[0], loss_fn, x, y, idx, 0, 1)
        parts = [share_backward(heads[1 + r], loss_fn, x, y, idx, r, 2) for r in range(2)]
        assert sum(parts) == pytest.approx(float(loss_fn(heads[0](x[idx]), y[idx])), rel=1e-5)
        for one, *ranks in zip(grads(heads[0]), grads(heads[1]), grads(heads[2])):
            torch.testing.assert_close(sum(ranks) / 2, one, rtol=1e-5, atol=1e-7)


def test_sft_rank_gradients_average_to_the_batch_gradient(tiny_lm):
    """The same for the agent's SFT: three rows over two ranks with one row per micro-batch
    (rank 0 accumulates two), and one row (rank 1 runs it with weight 0)."""
    from actors.learner import Sample
    from actors.model_loading import load_policy
    from actors.sft import backward_share
    rows = [Sample([5, 6, 7, 8], [9, 10, 1], 1.0), Sample([5, 11], [12, 1], 1.0),
            Sample([5, 6, 13, 14, 15], [16, 17, 18, 1], 1.0)]
    for batch in (rows, rows[1:2]):
        models = [load_policy(tiny_lm, "float32", "cpu")[0].train() for _ in range(3)]
        whole = backward_share(models[0], batch, 0, 1, 0, 1000)
        parts = [backward_share(models[1 + r], batch, r, 2, 0, 8) for r in range(2)]
        assert sum(parts) == pytest.approx(whole, rel=1e-5)
        for one, *ranks in zip(grads(models[0]), grads(models[1]), grads(models[2])):
            torch.testing.assert_close(sum(ranks) / 2, one, rtol=1e-4, atol=1e-6)


def test_ctrl_c_during_a_fit_stops_the_caller():
    """What Ray Train's ``fit`` does with SIGINT on the main thread (a handler of its own that
    outlives the run) must not happen to evoray's Ctrl-C: the fit runs off the main thread, and
    a SIGINT during it raises KeyboardInterrupt in the caller within a second."""
    import os
    import signal
    import threading
    import time

    from services.ray_train import fit_off_the_main_thread

    class Trainer:          # installs a handler where Ray Train would, then trains for 30 s
        def fit(self):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, lambda *_: None)
            time.sleep(30)

    # Python's own Ctrl-C handler, as in a terminal (a shell's `cmd &` starts pytest with SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            fit_off_the_main_thread(Trainer())
        assert time.monotonic() - start < 2.0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)

    class Failing:
        def fit(self):
            raise ValueError("worker said no")
    with pytest.raises(ValueError, match="worker said no"):
        fit_off_the_main_thread(Failing())
