"""Episodes on the device pool, many at once, one step at a time: the agent's greedy rollouts and
UI-Genie's reward-guided beam search are the same loop with different n, temperature and pruning.

Devices are stateless from the loop's point of view: an episode is (task, the actions taken so
far), and every device operation starts by resetting the device to the task's initial state and
replaying those actions. So any free device can serve any step, beams branch without device
snapshots, and a device that crashes mid-step costs a retry of that one operation.

    frontier ← one empty rollout per task
    repeat up to max_steps:
        screens  ← observe every live rollout (replay on a leased device)
        replies  ← one batched generation: n proposals per screen (beam search: + the greedy one)
        scores   ← the reward model's action-level reward of each valid proposal (beam search)
        children ← the best `width` proposals per task (all of them for n = 1)
        execute each child's action (replay + act); terminate → outcome check on the final state
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

from actors.emulator.device import DeviceCrashed
from actors.emulator.pool import TaskFailed
from actors.emulator.actions import Action
from actors.emulator.observation import Observation, observe
from jobs.uigenie.env import describe, execute, try_execute
from jobs.uigenie.policy import Proposal, agent_prompt, propose, target_completion


@dataclass
class StepRecord:
    """One step: the screen it was taken on, the model's reply, the action or the error."""
    screen_id: str
    app: str
    screen: str                     # compact UI text the agent saw
    png: Optional[bytes]
    prompt: str
    reply: str                      # the model's completion after the fixed reply prefix
    action: Optional[Action]        # None when the reply did not parse
    error: Optional[str] = None     # parse error, or the device's / action's per-step error
    reward: Optional[float] = None  # the reward model's action-level score, when scored
    text: str = ""                  # the action as the history shows it

    @property
    def replayable(self) -> bool:
        return self.action is not None and self.error is None and self.action.kind != "terminate"


@dataclass
class Rollout:
    task: object                    # a task: .id, .goal, .level; setup(task, device); check(state)
    steps: list[StepRecord] = field(default_factory=list)
    done: bool = False
    success: bool = False
    crashed: Optional[str] = None   # the episode was abandoned: no device could run it
    greedy_line: bool = True        # every step so far was its screen's greedy proposal (beam search)

    def actions(self) -> list[Action]:
        return [s.action for s in self.steps if s.replayable]

    def history(self) -> list[str]:
        return [s.text for s in self.steps]

    def extend(self, step: StepRecord) -> "Rollout":
        return replace(self, steps=self.steps + [step])


@dataclass
class EpisodeOps:
    """How the loop touches a task on a device (kept apart so tests and other suites can swap it)."""
    setup: Callable                 # setup(task, device): initial state, home screen
    succeeded: Callable             # succeeded(task, device) -> bool
    model_size: Optional[tuple[int, int]] = None   # None: the agent's coordinates are device pixels
    reference: Optional[Callable] = None           # reference(task, device) -> [(.., .., Action, bounds)]


def _replay(ops: EpisodeOps, device, task, actions: list[Action]) -> tuple[int, int]:
    size = tuple(ops.model_size or device.size)
    ops.setup(task, device)
    for a in actions:
        execute(device, a, size)
    return size


# The ops below capture only (task, actions) — not the rollout with its screenshots — because
# they travel to the device's actor with every call.

def observe_op(ops: EpisodeOps, r: Rollout):
    task, actions = r.task, r.actions()
    def op(device) -> Observation:
        _replay(ops, device, task, actions)
        return observe(device)
    return op


def act_op(ops: EpisodeOps, r: Rollout):
    """Replay the parent, take the child's last action → (error, done, success)."""
    task, parent, action = r.task, Rollout(r.task, r.steps[:-1]).actions(), r.steps[-1].action
    def op(device) -> tuple[Optional[str], bool, bool]:
        size = _replay(ops, device, task, parent)
        error = try_execute(device, action, size)
        if action.kind != "terminate":
            return error, False, False
        return None, True, action.text == "success" and bool(ops.succeeded(task, device))
    return op


def reference_op(ops: EpisodeOps, task):
    """A task's scripted solution replayed with observations → (reference rollout, target bounds
    per step): the steps carry the prompts the agent would see, the replies it should give."""
    def op(device) -> tuple[Rollout, list]:
        plan = ops.reference(task, device)
        r, bounds = Rollout(task), []
        size = _replay(ops, device, task, [])
        for *_, action, target in plan:
            obs = observe(device)
            prompt = agent_prompt(task.goal, r.history(), obs.text, obs.app)
            step = StepRecord(obs.screen_id, obs.app, obs.text, obs.png, prompt, target_completion(action),
                              action, None, None, describe(action, obs.xml))
            step.error = try_execute(device, action, size)
            r, bounds = r.extend(step), bounds + [target]
        last = r.steps[-1].action if r.steps else None
        r.done = True
        r.success = bool(last and last.kind == "terminate" and last.text == "success"
                         and ops.succeeded(task, device))
        return r, bounds
    return op


class DeviceRunner:
    """Runs device operations concurrently, each on a leased device (``run_with_device`` from the
    pool, or any callable with the same shape). A crash that outlives the retries comes back as the
    exception instead of a result, so one bad device fails one episode, never the run."""

    def __init__(self, run_with_device: Callable, workers: int):
        self.run_with_device = run_with_device
        self.workers = max(1, workers)

    def map(self, ops: list[Callable]) -> list:
        def one(op):
            try:
                return self.run_with_device(op)
            except (DeviceCrashed, TaskFailed) as e:
                return e
        if len(ops) <= 1 or self.workers == 1:
            return [one(op) for op in ops]
        with ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(one, ops))


@dataclass
class Policy:
    """The agent: ``generate(prompts, params, reply_prefix)`` (a Sampler's, see policy.propose)."""
    generate: Callable
    max_new_tokens: int = 48
    seed: Optional[int] = None


def _step_of(obs: Observation, prompt: str, p: Proposal) -> StepRecord:
    text = describe(p.action, obs.xml) if p.action is not None else f"invalid ({p.error.split(':')[0]})"
    return StepRecord(obs.screen_id, obs.app, obs.text, obs.png, prompt, p.text, p.action, p.error, None, text)


def _dedupe(props: list[Proposal]) -> list[Proposal]:
    seen, out = set(), []
    for p in props:
        key = p.action.to_tool_call() if p.action is not None else ("error", p.error)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def step_frontier(frontier: list[Rollout], ops: EpisodeOps, runner: DeviceRunner, policy: Policy,
                  n: int, temperature: float, score: Optional[Callable] = None,
                  width: Optional[int] = None, greedy: bool = False,
                  keep_greedy: bool = False) -> list[Rollout]:
    """Advance every live rollout by one step; returns the new frontier (children of each rollout,
    at most ``width`` per task when pruning, best reward first). ``score(rollouts) -> rewards``
    scores each child's last step (the reward model); invalid proposals score -1. ``greedy`` adds
    each screen's greedy proposal to its ``n`` samples, so the reward model ranks greedy
    decoding's action among the others instead of hoping a sample repeats it; ``keep_greedy`` keeps
    the greedy line's child among the ``width`` even where the reward model ranks it out."""
    observed = runner.map([observe_op(ops, r) for r in frontier])
    live, children = [], []
    for r, obs in zip(frontier, observed):
        if isinstance(obs, Exception):
            children.append(replace(r, done=True, crashed=str(obs)))
        else:
            live.append((r, obs))
    prompts = [agent_prompt(r.task.goal, r.history(), obs.text, obs.app) for r, obs in live]
    proposals = propose(policy.generate, prompts, n, temperature, policy.max_new_tokens, policy.seed, greedy)
    expanded: list[list[Rollout]] = []
    for (r, obs), prompt, props in zip(live, prompts, proposals):
        # _dedupe keeps the first of equal actions, so the greedy proposal stays first
        expanded.append([replace(r.extend(_step_of(obs, prompt, p)), greedy_line=greedy and r.greedy_line and i == 0)
                         for i, p in enumerate(_dedupe(props))])
    if score is not None:
        flat = [c for group in expanded for c in group if c.steps[-1].action is not None]
        for c, reward in zip(flat, score(flat) if flat else []):
            c.steps[-1].reward = float(reward)
    chosen = _prune(expanded, width, keep_greedy)
    results = runner.map([act_op(ops, c) for c in chosen if c.steps[-1].action is not None])
    it = iter(results)
    for c in chosen:
        if c.steps[-1].action is None:
            continue                          # a malformed reply: the step is recorded, nothing runs
        res = next(it)
        if isinstance(res, Exception):
            c.done, c.crashed = True, str(res)
        else:
            c.steps[-1].error, c.done, c.success = res
    return children + chosen


def _prune(expanded: list[list[Rollout]], width: Optional[int], keep_greedy: bool = False) -> list[Rollout]:
    """Keep the best ``width`` children per task (several rollouts of one task compete).
    ``keep_greedy``: a task's greedy-line child (at most one) takes the last place when the reward
    model ranks it out, so beam search follows what greedy decoding does as well (beam ⊇ greedy)."""
    if width is None:
        return [c for group in expanded for c in group]
    by_task: dict[str, list[Rollout]] = {}
    for group in expanded:
        for c in group:
            by_task.setdefault(c.task.id, []).append(c)
    def key(c: Rollout) -> float:
        r = c.steps[-1].reward
        return -1.0 if r is None else r
    chosen = []
    for cs in by_task.values():
        best = sorted(cs, key=key, reverse=True)[:width]
        line = [c for c in cs if c.greedy_line]
        if keep_greedy and line and not any(c is line[0] for c in best):
            best[-1] = line[0]
        chosen += best
    return chosen


def run_episodes(tasks: list, ops: EpisodeOps, runner: DeviceRunner, policy: Policy, max_steps: int,
                 n: int = 1, temperature: float = 0.0, score: Optional[Callable] = None,
                 width: Optional[int] = None, stop_on_success: bool = True, greedy: bool = False,
                 keep_greedy: bool = False,
                 on_step: Optional[Callable[[int, list[Rollout]], None]] = None) -> list[Rollout]:
    """Run every task to a terminal state or ``max_steps``. Greedy evaluation: n=1, temperature 0,
    no score. Beam search: n = expansions, a reward model ``score``, ``width`` beams per task
    (``greedy``: the greedy action is one more candidate per beam; ``keep_greedy``: one beam per task
    always takes it).
    Returns every finished rollout (terminated, crashed or out of steps) of every task."""
    frontier = [Rollout(t) for t in tasks]
    finished: list[Rollout] = []
    for depth in range(max_steps):
        frontier = step_frontier(frontier, ops, runner, policy, n, temperature, score, width, greedy,
                                 keep_greedy)
        finished += [r for r in frontier if r.done]
        solved = {r.task.id for r in finished if r.success} if stop_on_success else set()
        frontier = [r for r in frontier if not r.done and r.task.id not in solved]
        if on_step:
            on_step(depth, finished)
        if not frontier:
            break
    return finished + frontier
