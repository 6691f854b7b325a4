"""Runs inside each vLLM worker process (``worker_extension_cls``): in-place weight updates."""
from __future__ import annotations


class WeightUpdateExtension:
    def load_packed_weights(self, packed) -> None:
        from actors.weight_sync import unpack_views
        device = self.device  # the worker's CUDA device
        self.model_runner.model.load_weights(
            weights=((name, view.to(device, non_blocking=True)) for name, view in unpack_views(packed)))
