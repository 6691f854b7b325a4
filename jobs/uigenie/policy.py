"""The agent's prompt and reply format, and the Sampler call that turns screens into actions.

On CPU the agent is the embedded SmolLM2 reading a compact text rendering of the UI tree (on GPU
the same prompt goes to a VLM with the screenshot attached). Every reply starts with a fixed
``<tool_call>{"name": "mobile_use", "arguments": {"action": "`` prefix that is part of the prompt,
so a 135M model spends its few tokens on the decision, not on boilerplate; SFT targets are the
remainder after the same prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from actors.emulator.actions import Action, ActionError, parse_action
from actors.reward_model.model import MAX_HISTORY

REPLY_PREFIX = '<tool_call>{"name": "mobile_use", "arguments": {"action": "'
INSTRUCTIONS = "Next action (click, long_press, swipe, type, open, system_button, wait, terminate)."
SYSTEM_PROMPT = "You operate an Android phone."     # shorter than SmolLM2's default: tokens are time on CPU


def agent_prompt(goal: str, history: Sequence[str], screen: str, app: str) -> str:
    """The user turn: goal, the last 5 actions (oldest first), the current screen."""
    past = "; ".join(list(history)[-MAX_HISTORY:]) or "none"
    return f"{INSTRUCTIONS}\nGoal: {goal}\nDone: {past}\nScreen ({app}):\n{screen}"


def target_completion(action: Action) -> str:
    """What the model should generate after REPLY_PREFIX to produce ``action`` (SFT target)."""
    call = action.to_tool_call()
    if not call.startswith(REPLY_PREFIX):
        raise ValueError(f"tool call {call!r} does not start with the reply prefix")
    return call[len(REPLY_PREFIX):]


def reply_kind(completion: str) -> str:
    """The action kind a completion (after REPLY_PREFIX) starts with, well-formed or not."""
    return completion.split('"')[0]


def parse_reply(completion: str) -> Action:
    """REPLY_PREFIX + the model's completion → Action (ActionError on a malformed reply)."""
    return parse_action(REPLY_PREFIX + completion)


@dataclass
class Proposal:
    """One sampled candidate: the parsed action or the error that made it unusable."""
    text: str
    action: Optional[Action]
    error: Optional[str]
    finished: bool


def to_proposal(text: str, finished: bool) -> Proposal:
    if not finished:
        return Proposal(text, None, "truncated: the reply hit max_new_tokens", False)
    try:
        return Proposal(text, parse_reply(text), None, True)
    except ActionError as e:
        return Proposal(text, None, str(e), True)


def propose(generate, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
            seed: Optional[int] = None, greedy: bool = False) -> list[list[Proposal]]:
    """``n`` proposals per prompt (``greedy``: the greedy one first, then n). ``generate(prompts,
    params, reply_prefix)`` is the Sampler's ``generate`` (one batched generation; each prompt's
    prefill is shared by its samples)."""
    from actors.sampler import SamplingParams
    if not prompts:
        return []
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                            greedy=greedy)
    out: list[list[Proposal]] = [[] for _ in prompts]
    for c in generate(prompts, params, REPLY_PREFIX):
        out[c.prompt_index].append(to_proposal(c.text, c.finished))
    return out


def remote_generate(sampler):
    """A Sampler actor's ``generate`` as a plain function."""
    def generate(prompts, params, reply_prefix):
        import ray
        return ray.get(sampler.generate.remote(prompts, params, reply_prefix))
    return generate
