"""The Learner's checkpoints (a mixin of ``actors.learner.Learner``): what resume needs, no more.

A checkpoint directory holds

- ``model.safetensors``: the fp32 master weights (whole tensors under every ``learner.strategy``);
  absent while the policy is still the base model (version 0): ``learner.json`` then says
  ``"weights": "base"`` and loading takes them from the model the learner was built with;
- ``adapters.safetensors`` instead, for a LoRA learner (``learner.lora``): the adapters alone, the
  base weights being the model's;
- ``learner.json``: the policy version;
- ``resume/trainer_state.pt``: optimizer and RNG state, which only continuing the run reads. The
  run directory keeps it in the latest checkpoint alone (``services.run_store``); without it a
  checkpoint loads as weights with a fresh optimizer.

Weights stay fp32: an RL step at lr ~1e-6 moves a weight by less than bf16 can tell apart, so
weights saved in the model's bf16 would be the base model's.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from actors import data_parallel
from actors.storage import RESUME_DIR as RESUME

ADAPTERS = "adapters.safetensors"      # a LoRA learner's checkpoint: its adapters, not the base


class Checkpoints:
    """``self`` has ``model``, ``strategy``, ``s``, ``rank``, ``world_size``, ``peers``, ``version``."""

    def checkpoint_state(self) -> tuple[dict, dict]:
        """(model state, optimizer state) whole, laid out as one process has them (a collective
        when sharded)."""
        with self.strategy.whole():
            state = self.model.state_dict()
            if self.s.lora is not None:
                from actors.lora import adapter_state
                state = adapter_state(state)
            model = {k: self.strategy.whole_value(v) for k, v in state.items()}
        return model, self.strategy.optimizer_state()

    def save(self, directory: str) -> None:
        """Write weights, version and resume state into ``directory`` (the caller renames it into
        place; a URI is written locally and uploaded)."""
        from actors.storage import write_dir
        model, optimizer = self._with_peers("checkpoint_state")
        write_dir(directory, lambda path: self._write_files(path, model, optimizer))

    def _write_files(self, path: Path, model: dict, optimizer: dict) -> None:
        from safetensors.torch import save_file
        (path / RESUME).mkdir(parents=True, exist_ok=True)
        if self.s.lora is not None:
            weights = ADAPTERS
            save_file({k: v.detach().contiguous() for k, v in model.items()}, str(path / ADAPTERS))
        elif self.version > 0:
            weights = "model.safetensors"
            save_file(self._weights_to_save(model), str(path / weights))
        else:
            weights = "base"
        torch.save({"optimizer": optimizer, "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate()}, path / RESUME / "trainer_state.pt")
        lora = self.s.lora.model_dump() if self.s.lora is not None else None
        (path / "learner.json").write_text(json.dumps({"version": self.version, "weights": weights, "lora": lora}))

    def _weights_to_save(self, model: dict) -> dict:
        """The state dict without the tied output embedding (the input embedding holds it)."""
        tied = self.model.config.tie_word_embeddings
        return {k: v.detach().contiguous() for k, v in model.items() if k != "lm_head.weight" or not tied}

    def load(self, directory: str) -> int:
        """Every rank loads the same checkpoint (rank 0 tells its peers to)."""
        from actors.storage import read_dir
        calls = [peer.load.remote(directory) for peer in self.peers]
        with read_dir(directory) as path:
            version = self._load_files(path)
        if calls:
            import ray
            ray.get(calls)
        return version

    def _load_files(self, path: Path) -> int:
        meta = json.loads((path / "learner.json").read_text())
        if (path / ADAPTERS).is_file() or self.s.lora is not None:
            self._load_adapters(path)
        elif (path / "model.safetensors").is_file():
            from safetensors.torch import load_file
            self._load_weights(load_file(str(path / "model.safetensors")), path)
        elif meta.get("weights") != "base":
            raise FileNotFoundError(f"checkpoint {path} has no model.safetensors")
        elif self.version != 0:            # version 0: the learner holds the base weights already
            self._load_weights(self._base_weights(), path)
        state_file = next((f for f in (path / RESUME / "trainer_state.pt", path / "trainer_state.pt")
                           if f.is_file()), None)
        if state_file is None:
            print(f"checkpoint {path}: no resume state; weights only, the optimizer starts afresh",
                  file=sys.stderr)
        else:
            self._load_trainer_state(torch.load(state_file, weights_only=False))
        self.version = meta["version"]
        return self.version

    def _load_adapters(self, path: Path) -> None:
        """A LoRA checkpoint's adapters into a learner with the same ``learner.lora``."""
        from safetensors.torch import load_file
        if self.s.lora is None:
            raise ValueError(f"checkpoint {path} holds LoRA adapters; set learner.lora to load it")
        if not (path / ADAPTERS).is_file():
            raise ValueError(f"checkpoint {path} holds full weights, not the adapters learner.lora trains")
        current = self.model.state_dict()
        adapters = load_file(str(path / ADAPTERS))
        wanted = {k for k in current if ".lora_" in k}
        if set(adapters) != wanted:
            raise ValueError(f"checkpoint {path}: its adapters do not match learner.lora "
                             f"(missing {sorted(wanted - set(adapters))[:3]}, "
                             f"unexpected {sorted(set(adapters) - wanted)[:3]})")
        self.model.load_state_dict({k: data_parallel.sharded_like(v, current[k]) for k, v in adapters.items()},
                                   strict=False)

    def _base_weights(self) -> dict:
        """The weights of the model the learner was built with."""
        from actors.model_loading import load_policy
        base, _, _ = load_policy(self.s.model, "float32", "cpu")
        return base.state_dict()

    def _load_weights(self, whole: dict, path: Path) -> None:
        missing, unexpected = self.strategy.load_weights(whole)
        if unexpected or [m for m in missing if m != "lm_head.weight"]:
            raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")

    def _load_trainer_state(self, state: dict) -> None:
        self.strategy.load_optimizer_state(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
