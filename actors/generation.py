"""Batched sampling for transformers models with one prefill per prompt.

Each prompt is prefilled once; its KV cache is repeated for its ``n`` samples, so a group of n
samples costs one prompt forward instead of n (and ``greedy`` decodes one more reply per prompt
from a copy of the same cache: the reply a temperature-0 call would give, without its prefill).
Decoding is a plain loop of one-token forwards that records the log-probability of each sampled
token under the (temperature-scaled) sampling distribution, which is what the learner needs as π_old.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, fields

import torch


@dataclass
class SampledBatch:
    prompt_index: list[int]          # which prompt each sample belongs to
    token_ids: list[list[int]]       # completion tokens, the EOS included when it was produced
    logprobs: list[list[float]]      # one per completion token
    finished: list[bool]             # True when EOS ended the completion within the token limit


def cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); use whichever forward takes."""
    forward = getattr(model, "module", model).forward      # a DeepSpeed engine wraps the model
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned, under whichever name its output class uses."""
    return out["cache"] if "cache" in out else out.past_key_values


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) [N, longest], each sequence at the right end (prompts to continue)."""
    return _pad(sequences, pad_id, left=True)


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) [N, longest], each sequence from position 0."""
    return _pad(sequences, pad_id, left=False)


def _pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def nucleus_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probabilities of the sampling distribution over the last axis: logits / temperature,
    renormalised to the smallest set of tokens whose probability reaches ``top_p``."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        keep = sorted_logp.exp().cumsum(-1) - sorted_logp.exp() < top_p
        sorted_logp = sorted_logp.masked_fill(~keep, float("-inf"))
        logp = torch.log_softmax(torch.full_like(logp, float("-inf")).scatter(-1, order, sorted_logp), dim=-1)
    return logp


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (tokens, log-prob of each under the sampling distribution)."""
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, torch.zeros_like(tokens, dtype=torch.float32)
    logp = nucleus_logprobs(logits, temperature, top_p)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def token_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Indices grouped longest first so that rows × longest row ≤ budget (a lone row may exceed it)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.inference_mode()
def generate_groups(model, prompts: list[list[int]], n: int, max_new_tokens: int, eos_ids: set[int],
                    pad_id: int, temperature: float = 1.0, top_p: float = 1.0,
                    seed: int | None = None, device="cpu", prefill_inputs: dict | None = None,
                    batch_tokens: int | None = None, greedy: bool = False) -> SampledBatch:
    """Sample ``n`` completions for each tokenised prompt (see module docstring), grouped by prompt
    in order; ``greedy``: each prompt's greedy completion first, then its ``n`` samples.
    ``prefill_inputs``: more inputs of the prompt forward, one row per prompt (a VLM's
    ``pixel_values``); the decoding steps only read the cache.

    ``batch_tokens``: prompts of similar length run together, at most that many padded prompt
    tokens (prompts × longest) per batch; None: all in one. Every row of a batch is left-padded to
    its longest prompt and decoded until its last row ends: 96 UI screens of 125–403 tokens took
    67 s in one batch and 41 s in batches of 2048 tokens on 2 CPU cores (``evoray bench
    uigenie-sampling``, docs/uigenie.md)."""
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    if batch_tokens:
        batches = token_batches([len(p) for p in prompts], batch_tokens)
    else:                       # the caller's order: the same random draws as before batching
        batches = [list(range(len(prompts)))] if prompts else []
    samples: list[tuple[int, list[int], list[float], bool]] = []
    for rows in batches:
        extra = {k: v[torch.tensor(rows, device=v.device)] for k, v in (prefill_inputs or {}).items()}
        b = _generate(model, [prompts[i] for i in rows], n, max_new_tokens, eos_ids, pad_id,
                      temperature, top_p, generator, device, extra, greedy)
        samples += [(rows[p], *s) for p, *s in zip(b.prompt_index, b.token_ids, b.logprobs, b.finished)]
    samples.sort(key=lambda s: s[0])            # stable: each prompt's n samples keep their order
    return SampledBatch(*(list(col) for col in zip(*samples))) if samples else SampledBatch([], [], [], [])


def _generate(model, prompts: list[list[int]], n: int, max_new_tokens: int, eos_ids: set[int],
              pad_id: int, temperature: float, top_p: float, generator: torch.Generator | None,
              device, prefill_inputs: dict, greedy: bool = False) -> SampledBatch:
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **prefill_inputs)
    cache, logits = output_cache(out), out.logits[:, -1]
    first = [_decode(model, copy.deepcopy(cache), logits, mask, positions, 1, max_new_tokens, eos_ids,
                     pad_id, 0.0, top_p, None, device)] if greedy else []
    return joined(*first, _decode(model, cache, logits, mask, positions, n, max_new_tokens, eos_ids, pad_id,
                                  temperature, top_p, generator, device))


def joined(*batches: SampledBatch) -> SampledBatch:
    """The batches' completions one after the other (``generate_groups`` then groups them by prompt,
    keeping this order within a prompt)."""
    return SampledBatch(*([x for b in batches for x in getattr(b, f.name)] for f in fields(SampledBatch)))


def _decode(model, cache, logits: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, n: int,
            max_new_tokens: int, eos_ids: set[int], pad_id: int, temperature: float, top_p: float,
            generator: torch.Generator | None, device) -> SampledBatch:
    """``n`` completions per prompt from its prefill (``cache``, last ``logits``; the cache grows)."""
    cache.batch_repeat_interleave(n)
    logits = logits.repeat_interleave(n, dim=0)
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
    return cut_at_eos(torch.stack(tokens_out, 1).tolist(), torch.stack(logps_out, 1).tolist(), n, eos_ids)


def cut_at_eos(token_rows: list[list[int]], logp_rows: list[list[float]], n: int,
               eos_ids: set[int]) -> SampledBatch:
    """Rows of n samples per prompt → completions ending at their first EOS (kept), finished
    when there is one; what follows it is padding."""
    batch = SampledBatch([], [], [], [])
    for row, (toks, lps) in enumerate(zip(token_rows, logp_rows)):
        end = next((i + 1 for i, t in enumerate(toks) if t in eos_ids), len(toks))
        batch.prompt_index.append(row // n)
        batch.token_ids.append(toks[:end])
        batch.logprobs.append(lps[:end])
        batch.finished.append(end > 0 and toks[end - 1] in eos_ids)
    return batch


def sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """log-prob of ``tokens`` [R, T] under the distribution ``sample_next`` draws from, given the
    model's ``logits`` [R, T, V] at each position: temperature-scaled, renormalised to the nucleus."""
    if temperature <= 0:
        return torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    return nucleus_logprobs(logits, temperature, top_p).gather(-1, tokens[..., None]).squeeze(-1)


@torch.inference_mode()
def generate_static(model, prompts: list[list[int]], n: int, max_new_tokens: int, eos_ids: set[int],
                    pad_id: int, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                    device="cpu", prefill_inputs: dict | None = None) -> SampledBatch:
    """``generate_groups``'s result through Hugging Face ``generate`` with a static KV cache, which
    transformers compiles on a GPU (CUDA graphs): decoding a small model is bound by the host
    launching kernels one at a time, and a captured graph launches a whole step at once. Each
    prompt is repeated n times (its prefill is cheap next to decoding); the sampling log-probs come
    from one teacher-forced forward over the finished sequences."""
    ids, mask = (t.to(device).repeat_interleave(n, dim=0) for t in left_pad(prompts, pad_id))
    extra = {k: v.repeat_interleave(n, dim=0) for k, v in (prefill_inputs or {}).items()}
    if seed is not None:
        torch.manual_seed(seed)
    eos = sorted(eos_ids)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=temperature > 0,
                         temperature=temperature if temperature > 0 else None, top_p=top_p, top_k=None,
                         max_new_tokens=max_new_tokens, eos_token_id=eos or None, pad_token_id=pad_id,
                         cache_implementation="static", return_dict_in_generate=False, **extra)
    completion = out[:, ids.shape[1]:]
    full_mask = torch.cat([mask, torch.ones_like(completion)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=out, attention_mask=full_mask, position_ids=positions, **extra).logits
    logp = sampling_logprobs(logits[:, ids.shape[1] - 1:-1], completion, temperature, top_p)
    return cut_at_eos(completion.tolist(), logp.tolist(), n, eos_ids)
