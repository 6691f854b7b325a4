"""Batched sampling for transformers models with one prefill per prompt.

Each prompt is prefilled once; its KV cache is repeated for its ``n`` samples, so a group of n
samples costs one prompt forward instead of n. Decoding is a plain loop of one-token forwards that
records the log-probability of each sampled token under the (temperature-scaled) sampling
distribution, which is what the learner needs as π_old.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class SampledBatch:
    prompt_index: list[int]          # which prompt each sample belongs to
    token_ids: list[list[int]]       # completion tokens, the EOS included when it was produced
    logprobs: list[list[float]]      # one per completion token
    finished: list[bool]             # True when EOS ended the completion within the token limit


def cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); use whichever forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned, under whichever name its output class uses."""
    return out["cache"] if "cache" in out else out.past_key_values


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids, mask


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (tokens, log-prob of each under the sampling distribution)."""
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, torch.zeros_like(tokens, dtype=torch.float32)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        keep = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() < top_p
        sorted_logp = sorted_logp.masked_fill(~keep, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp)
        logp = torch.log_softmax(logp, dim=-1)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


@torch.inference_mode()
def generate_groups(model, prompts: list[list[int]], n: int, max_new_tokens: int, eos_ids: set[int],
                    pad_id: int, temperature: float = 1.0, top_p: float = 1.0,
                    seed: int | None = None, device="cpu", prefill_inputs: dict | None = None) -> SampledBatch:
    """Sample ``n`` completions for each tokenised prompt (see module docstring).
    ``prefill_inputs``: more inputs of the prompt forward, one row per prompt (a VLM's
    ``pixel_values``); the decoding steps only read the cache."""
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **(prefill_inputs or {}))
    cache = output_cache(out)
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].repeat_interleave(n, dim=0)
    mask = mask.repeat_interleave(n, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(n, dim=0) + 1
    rows = logits.shape[0]
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens_out, logps_out = [], []
    for step in range(max_new_tokens):
        tokens, logps = sample_next(logits, temperature, top_p, generator)
        tokens = tokens.masked_fill(done, pad_id)
        tokens_out.append(tokens)
        logps_out.append(logps.masked_fill(done, 0.0))
        newly_done = torch.isin(tokens, eos) & ~done
        done |= newly_done
        if done.all() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **{cache_kwarg(model): cache})
        cache, logits, next_pos = output_cache(out), out.logits[:, -1], next_pos + 1
    token_mat = torch.stack(tokens_out, 1).tolist()
    logp_mat = torch.stack(logps_out, 1).tolist()
    batch = SampledBatch([], [], [], [])
    for row in range(rows):
        seq, lps = [], []
        finished = False
        for tok, lp in zip(token_mat[row], logp_mat[row]):
            seq.append(tok)
            lps.append(lp)
            if tok in eos_ids:
                finished = True
                break
        batch.prompt_index.append(row // n)
        batch.token_ids.append(seq)
        batch.logprobs.append(lps)
        batch.finished.append(finished)
    return batch
