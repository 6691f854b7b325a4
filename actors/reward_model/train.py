"""The reward model's head trained as a Ray Train worker function (``TorchTrainer(train_head, ...)``).

The frozen backbone stays in the ``RewardModel`` actor, which computes (and caches) the features;
the workers get them through the object store and train a fresh seeded head on them, exactly
``RewardModel.fit``'s training (``fit_head``: standardised features, balanced BCE, AdamW over
seeded mini-batches), the head wrapped by ``ray.train.torch.prepare_model`` (DDP over the workers;
each mini-batch is dealt out over the ranks and the step equals the one-process one). Rank 0
writes the head in ``RewardModel.save``'s layout through ``ray.train.report``; the driver hands
those files to the actor (``RewardModel.load_files``), which scores with it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def train_head(config: dict) -> None:
    """The worker function. ``config``: features ([ref] of the [N, F] tensor), labels (0/1),
    settings (``RewardModelSettings`` as a dict), epochs, threads, fail_once (tests: a marker
    path; the first attempt fails before training)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from actors.model_loading import use_threads
    from actors.reward_model.model import RewardModelSettings, train_fresh_head, write_head
    from actors.sft import fail_once
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_threads(config.get("threads"))
    fail_once(config.get("fail_once"))
    s = RewardModelSettings(**config["settings"])
    x = ray.get(config["features"][0]).float()
    y = torch.tensor([float(v) for v in config["labels"]])
    # DDP when W > 1, onto this worker's device
    head, metrics = train_fresh_head(x, y, s, config["epochs"], ray.train.torch.prepare_model, rank, world)
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="evoray-rm-head-") as tmp:
        write_head(Path(tmp), head, x.shape[1], s)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
