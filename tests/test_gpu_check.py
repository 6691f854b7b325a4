"""``make gpu-check``'s script where there is no GPU: it still writes its report, every check
skipped with the reason (on a GPU machine the same report holds the numbers)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_every_check_is_reported_skipped(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: make gpu-check runs the checks for real")
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["gpu"] is None
    assert set(report["checks"]) == {"vllm_sampling", "vllm_sync_ipc", "vllm_sync_nccl", "static_cache",
                                     "fsdp2_step", "deepspeed_step", "grpo_step_vs_trl"}
    assert all(c == {"status": "skipped", "skipped": "no CUDA device"} for c in report["checks"].values())


def test_each_check_is_a_function_the_script_can_run():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    assert all(callable(getattr(gpu_check, f"check_{name}")) for name in gpu_check.LIMITS)
    assert sum(gpu_check.LIMITS.values()) < 9 * 60       # the whole check fits in 9 minutes
