"""Episodes on a real simulated device with a scripted agent: greedy rollouts, per-step errors that
never end a run, reward-guided beam search finding what greedy misses, crashed devices."""
from __future__ import annotations

import re

import pytest

from actors.emulator.device import DeviceCrashed
from actors.emulator.simulated import SimulatedDevice, reference_actions, setup, task_suite
from actors.sampler import Completion
from actors.emulator.actions import Action
from jobs.uigenie.policy import INSTRUCTIONS, target_completion
from jobs.uigenie.rollout import DeviceRunner, EpisodeOps, Policy, run_episodes

OPS = EpisodeOps(setup=setup, succeeded=lambda task, device: task.check(device.state),
                 reference=reference_actions)


def task(task_id: str):
    return next(t for t in task_suite() if t.id == task_id)


def reference(t) -> list[Action]:
    return [a for *_, a, _ in reference_actions(t, SimulatedDevice())]


def n_done(prompt: str) -> int:
    """How many actions the prompt's history lists (the agent's position in its plan)."""
    past = prompt.split("\nDone: ", 1)[1].split("\nScreen (", 1)[0]
    return 0 if past == "none" else len(past.split("; "))


def scripted(plan_of, per_prompt):
    """A stand-in for Sampler.generate: replies chosen by ``per_prompt(goal, step, n)``."""
    calls = []
    def generate(prompts, params, prefix):
        calls.append((len(prompts), params.n))
        out = []
        for i, p in enumerate(prompts):
            goal = re.search(r"Goal: (.*)", p).group(1)
            for text in per_prompt(plan_of[goal], n_done(p), params.n):
                out.append(Completion(i, [], [], [], text, True, 0))
        return out
    generate.calls = calls
    return generate


def local_runner(device):
    return DeviceRunner(lambda op: op(device), workers=1)


def test_greedy_rollout_of_the_reference_plan_succeeds():
    t = task("contacts.delete.elena-petrova")
    plan = reference(t)
    gen = scripted({t.goal: plan}, lambda plan, k, n: [target_completion(plan[min(k, len(plan) - 1)])])
    [r] = run_episodes([t], OPS, local_runner(SimulatedDevice()), Policy(gen), max_steps=8)
    assert r.success and r.done and len(r.steps) == len(plan)
    assert [s.action for s in r.steps] == plan
    assert r.steps[0].text == "open Contacts" and r.steps[1].text.startswith('click "')
    assert r.steps[0].png.startswith(b"\x89PNG") and "Contacts" in r.steps[0].screen


def test_bad_steps_are_recorded_and_the_episode_goes_on():
    t = task("settings.wifi.off")
    plan = reference(t)
    bad = ["oops no tool call", 'click", "coordinate": [9999, 5]}}</tool_call>',
           'open", "text": "Nope"}}</tool_call>', 'type", "text": "hi"}}</tool_call>']
    calls = iter(range(100))
    def per_prompt(plan, _, n):
        # one prompt per step (the history shows only the last 5): 4 bad steps, then the plan
        k = next(calls)
        return [bad[k]] if k < len(bad) else [target_completion(plan[k - len(bad)])]
    gen = scripted({t.goal: plan}, per_prompt)
    [r] = run_episodes([t], OPS, local_runner(SimulatedDevice()), Policy(gen), max_steps=4 + len(plan))
    codes = [s.error.split(":")[0] if s.error else None for s in r.steps]
    assert codes[:4] == ["bad_json", "out_of_screen", "unknown_app", "no_focus"]   # the prefix is forced
    assert r.steps[0].action is None and r.steps[0].text == "invalid (bad_json)"
    assert r.success, "bad steps change nothing on the device; the plan still works afterwards"


def test_beam_search_finds_what_greedy_misses():
    tasks = [task("settings.wifi.off"), task("todo.add.buy-stamps")] if any(
        t.id == "todo.add.buy-stamps" for t in task_suite()) else [task("settings.wifi.off")]
    plans = {t.goal: reference(t) for t in tasks}
    wrong = target_completion(Action("system_button", text="Home"))
    def per_prompt(plan, k, n):
        right = target_completion(plan[min(k, len(plan) - 1)])
        return [wrong, right, wrong][:n]            # the first proposal is always wrong
    greedy = run_episodes(tasks, OPS, local_runner(SimulatedDevice()),
                          Policy(scripted(plans, per_prompt)), max_steps=6)
    assert not any(r.success for r in greedy)
    oracle = {t.goal: {a.to_tool_call() for a in plans[t.goal]} for t in tasks}
    def score(children):                            # a perfect reward model
        return [1.0 if c.steps[-1].action.to_tool_call() in oracle[c.task.goal] else 0.0 for c in children]
    gen = scripted(plans, per_prompt)
    beams = run_episodes(tasks, OPS, local_runner(SimulatedDevice()), Policy(gen), max_steps=6,
                         n=3, temperature=1.0, score=score, width=2)
    solved = {r.task.id for r in beams if r.success}
    assert solved == {t.id for t in tasks}
    assert all(n == 3 for _, n in gen.calls)
    best = [r for r in beams if r.success][0]
    assert all(s.reward == 1.0 for s in best.steps)



def test_beam_search_ranks_the_greedy_action_among_its_samples():
    """Samples that never repeat the greedy action: without ``greedy`` beam search loses what
    greedy decoding solves; with it the reward model finds it among the candidates."""
    t = task("settings.wifi.off")
    plan = reference(t)
    wrong = [target_completion(Action("system_button", text="Home")), target_completion(Action("wait", time=1.0))]
    asked = []
    def generate(prompts, params, prefix):
        asked.append(params.greedy)
        right = target_completion(plan[min(n_done(prompts[0]), len(plan) - 1)])
        texts = [right] * params.greedy + (wrong[:params.n] if params.temperature > 0 else [right])
        return [Completion(i, [], [], [], x, True, 0) for i in range(len(prompts)) for x in texts]
    calls = []
    def score(children):
        calls.append(len(children))
        return [1.0 if c.steps[-1].action.to_tool_call() in {a.to_tool_call() for a in plan} else 0.0
                for c in children]
    def beam(greedy):
        return run_episodes([t], OPS, local_runner(SimulatedDevice()), Policy(generate), max_steps=len(plan) + 1,
                            n=2, temperature=1.0, score=score, width=1, greedy=greedy)
    assert not any(r.success for r in beam(greedy=False))
    assert calls and all(c == 2 for c in calls)
    calls.clear(), asked.clear()
    [r] = [r for r in beam(greedy=True) if r.success]
    assert [s.action for s in r.steps] == plan
    assert calls[0] == 3                # the greedy proposal and both samples were scored
    assert all(asked)                   # one call a step: the greedy reply comes with the samples


def test_keep_greedy_makes_beam_search_solve_what_greedy_decoding_solves():
    """A reward model that prefers a wrong sample at every step: without ``keep_greedy`` its one
    beam never takes the (right) greedy action; with it the greedy line survives beside the RM's
    favourite, and the success is the greedy plan itself."""
    t = task("settings.wifi.off")
    plan = reference(t)
    wrong = target_completion(Action("wait", time=1.0))
    def generate(prompts, params, prefix):
        right = target_completion(plan[min(n_done(prompts[0]), len(plan) - 1)])
        texts = ([right] if params.greedy or params.temperature == 0 else []) + [wrong] * (params.temperature > 0)
        return [Completion(i, [], [], [], x, True, 0) for i in range(len(prompts)) for x in texts]
    def misleading(children):
        return [1.0 if c.steps[-1].action.kind == "wait" else 0.0 for c in children]
    def run(width, keep_greedy, **kw):
        return run_episodes([t], OPS, local_runner(SimulatedDevice()), Policy(generate), max_steps=len(plan) + 1,
                            **kw, width=width, keep_greedy=keep_greedy)
    [g] = run(None, False)
    assert g.success
    beam = dict(n=1, temperature=1.0, score=misleading, greedy=True)
    assert not any(r.success for r in run(1, False, **beam))
    done = run(1, True, **beam)
    [r] = [r for r in done if r.success]
    assert [s.action for s in r.steps] == plan and r.greedy_line
    assert all(s.reward == 0.0 for s in r.steps)        # kept although ranked below the wait


def test_prune_keeps_the_greedy_line_in_the_last_place():
    from jobs.uigenie.rollout import Rollout, StepRecord, _prune
    t1, t2 = task("settings.wifi.off"), task("contacts.delete.elena-petrova")
    def child(t, reward, line):
        step = StepRecord("s", "app", "", None, "", "", Action("wait", time=1.0), reward=reward)
        return Rollout(t, [step], greedy_line=line)
    a = [child(t1, 0.9, False), child(t1, 0.8, False), child(t1, 0.1, True), child(t1, 0.5, False)]
    b = [child(t2, 0.2, True), child(t2, 0.7, False)]
    assert _prune([a, b], 2) == [a[0], a[1], b[1], b[0]]
    kept = _prune([a, b], 2, keep_greedy=True)
    assert [c.steps[0].reward for c in kept] == [0.9, 0.1, 0.7, 0.2]
    assert _prune([a], 1, keep_greedy=True)[0] is a[2]
    assert _prune([a[:2]], 1, keep_greedy=True) == [a[0]]    # no greedy line left: the RM decides
    assert len(_prune([a, b], None, keep_greedy=True)) == 6


def test_a_crashed_device_fails_its_episode_not_the_run():
    t = task("settings.wifi.off")
    plan = reference(t)
    gen = scripted({t.goal: plan}, lambda plan, k, n: [target_completion(plan[min(k, len(plan) - 1)])])
    def always_crashes(op):
        raise DeviceCrashed("sim-0 is gone")
    [r] = run_episodes([t], OPS, DeviceRunner(always_crashes, 1), Policy(gen), max_steps=3)
    assert r.done and not r.success and "sim-0 is gone" in r.crashed


@pytest.mark.parametrize("task_id", ["clock.add.06-45", "combo.settings.wifi.off+todo.add.pack-charger"])
def test_reference_op_replays_with_observations(task_id):
    from jobs.uigenie.rollout import reference_op
    if not any(t.id == task_id for t in task_suite()):
        pytest.skip(f"{task_id} not in the suite")
    r, bounds = reference_op(OPS, task(task_id))(SimulatedDevice())
    assert r.success and len(bounds) == len(r.steps)
    assert r.steps[-1].action == Action("terminate", text="success")
    assert all(s.prompt.startswith(INSTRUCTIONS) for s in r.steps)
    assert r.steps[1].prompt.split("\n")[2] == f"Done: {r.steps[0].text}"
