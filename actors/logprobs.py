"""The learner's log-probabilities of sampled completions: the samples, their prompt groups, and
the forwards that score them (one per prompt with its samples on its KV cache, or one per whole
sequence)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from actors.generation import cache_kwarg, left_pad, output_cache, right_pad


@dataclass
class Sample:
    prompt_ids: list[int]
    token_ids: list[int]
    advantage: float
    sampler_logprobs: list[float] | None = None
    image: bytes | None = None        # a vision-language prompt's image (its ids hold the placeholder)

    @property
    def prompt_key(self) -> tuple:
        """Samples of one prompt share this; an image's placeholder ids alone do not tell images apart."""
        return (tuple(self.prompt_ids), self.image)


def prompt_groups(samples: list[Sample]) -> list[list[int]]:
    """Indices of each run of consecutive samples of one prompt (a batch keeps a prompt's samples
    together)."""
    groups: list[list[int]] = []
    for i, smp in enumerate(samples):
        if groups and samples[groups[-1][0]].prompt_key == smp.prompt_key:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def completion_logprobs(model, samples: list[Sample], pad_id: int, device: str = "cpu", vision=None,
                        whole_sequences: bool = False):
    """Log-probs of each completion token [S, T] and the completion mask [S, T].

    Each distinct prompt is run once (with gradients); its KV cache is indexed out to its
    samples, which are then run on top of it. The gradient through the shared prompt is the
    sum over its samples, exactly as if each sample had been run in full. Image prompts get
    their pixel inputs from ``vision`` (``actors.vision.VisionInputs``) in the prompt forward.
    ``whole_sequences`` runs each sample in full instead (``sequence_logprobs``): a model training
    with gradient checkpointing keeps no KV cache (Hugging Face turns it off).
    """
    if vision is None and any(s.image is not None for s in samples):
        raise ValueError("samples with images need a vision-language model")
    if whole_sequences:
        return sequence_logprobs(model, samples, pad_id, device, vision)
    groups = prompt_groups(samples)
    prompts = [samples[g[0]] for g in groups]
    rows = torch.tensor([row for row, g in enumerate(groups) for _ in g], device=device)
    prompt, prompt_mask = (t.to(device) for t in left_pad([p.prompt_ids for p in prompts], pad_id))
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    images = [p.image for p in prompts if p.image is not None]
    out = model(input_ids=prompt, attention_mask=prompt_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1, **(vision.pixel_inputs(images, device) if images else {}))
    first_logits = out.logits[:, -1][rows]                       # predicts completion token 0
    comp, comp_mask = completion_targets(samples, pad_id, device)
    cache = output_cache(out)
    cache.batch_select_indices(rows)
    # the last token's logits are not needed, but feeding it keeps two forwards per call even for
    # one-token completions: sharded ranks (FSDP) must run the same number of forwards
    mask = torch.cat([prompt_mask[rows], comp_mask], 1)
    pos = positions[rows, -1:] + 1 + torch.arange(comp.shape[1], device=device)
    rest = model(input_ids=comp, attention_mask=mask, position_ids=pos, use_cache=True,
                 **{cache_kwarg(model): cache}).logits[:, :-1]
    return token_logprobs(torch.cat([first_logits[:, None], rest], 1), comp), comp_mask.float()


def sequence_logprobs(model, samples: list[Sample], pad_id: int, device: str = "cpu", vision=None):
    """``completion_logprobs`` with one forward over each whole sample. Left-padded, so every
    completion ends at the right edge: the lm head runs only on the last T + 1 positions (T the
    longest completion), not on every prompt position — on a CPU its 49k-wide matmul is a large
    share of a short-completion step. Completion token j of a sample with c tokens is predicted at
    kept position T − c + j."""
    ids, attention = left_pad([s.prompt_ids + s.token_ids for s in samples], pad_id)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    longest = max(len(s.token_ids) for s in samples)
    images = [s.image for s in samples if s.image is not None]
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                   use_cache=False, logits_to_keep=longest + 1,
                   **(vision.pixel_inputs(images, device) if images else {})).logits
    return completion_logprobs_at_end(logits, samples, pad_id, device)


def completion_logprobs_at_end(logits: torch.Tensor, samples: list[Sample], pad_id: int, device: str):
    """Log-probs and mask [S, T] from the logits of a left-padded forward's last T + 1 positions."""
    longest = max(len(s.token_ids) for s in samples)
    comp, comp_mask = completion_targets(samples, pad_id, device)
    at = torch.tensor([[min(longest - len(s.token_ids) + j, longest) for j in range(comp.shape[1])]
                       for s in samples], device=device)
    picked = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))
    return token_logprobs(picked, comp), comp_mask.float()


def completion_targets(samples: list[Sample], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The completions right-padded [S, T] and their mask."""
    comp, comp_mask = right_pad([s.token_ids for s in samples], pad_id)
    return comp.to(device), comp_mask.to(device)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in fp32."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)
