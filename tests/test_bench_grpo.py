"""``evoray bench grpo-step``: the model shapes, the roofline by hand, and the tiny preset end to end."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.srt.bench_grpo import PRESETS, decode_roofline, n_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parameter_count_matches_the_built_model(preset):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**PRESETS[preset], tie_word_embeddings=True))
    assert n_params(preset) == sum(p.numel() for p in model.parameters())
    if preset == "qwen2-0.4b":
        assert 0.35e9 < n_params(preset) < 0.45e9        # "a ~0.4B-parameter Qwen2-shaped model"


def test_decode_roofline_by_hand():
    # tiny: 107,072 parameters → 214,144 bytes in bf16; KV per token 2 layers × (K,V) × 2 heads × 16 × 2 B = 256 B.
    # 2 sequences, prompt 3, 2 new tokens, 1 MB/s: step 0 reads 214,144 + 2·3·256, step 1 214,144 + 2·4·256.
    assert n_params("tiny") == 107_072
    seconds = (214_144 + 2 * 3 * 256 + 214_144 + 2 * 4 * 256) / 1e6
    assert decode_roofline("tiny", 2, 3, 2, 1e6) == pytest.approx(4 / seconds)


def test_tiny_preset_runs_and_writes_its_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "grpo-step", "--preset", "tiny", "--prompts", "2",
         "--samples", "4", "--new-tokens", "12", "--prompt-tokens", "6", "--steps", "2", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "grpo-step.json").read_text())
    assert set(result["evoray_s"]) == {"generation", "reward", "training", "sync"}
    assert result["evoray_step_s"] == pytest.approx(sum(result["evoray_s"].values()))
    assert result["roofline_tokens_per_s"] > result["evoray_tokens_per_s"] > 0
    assert result["sync_bytes"] == n_params("tiny") * 4          # fp32 on the CPU
    if importlib.util.find_spec("trl") is None:
        assert "trl is not installed" in proc.stdout and "speedup" not in result
    else:
        assert result["trl_step_s"] > 0 and result["speedup"] > 0
