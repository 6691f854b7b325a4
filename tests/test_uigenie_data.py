"""The pipeline's data rules on hand-made rollouts: which step becomes which label, and why."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from actors.emulator.actions import Action
from jobs.uigenie.data import (
    ScreenBook, agent_rows, failure_rows, rollout_record, step_texts, success_rows, verified_rows,
    write_parquet)
from jobs.uigenie.loop import EXTRA_ACTIONS, exploration_round, split_tasks
from jobs.uigenie.rollout import Rollout, StepRecord
from services.config import parse_config


@dataclass(frozen=True)
class T:
    id: str
    goal: str
    level: int = 1


def step(screen: str, action: Action | None, text: str, error: str | None = None) -> StepRecord:
    return StepRecord(screen, "app", f"screen {screen}", b"png-" + screen.encode(), f"prompt {screen}",
                      "reply", action, error, None, text)


WIFI = T("wifi.off", "Turn off Wi-Fi")
OPEN = Action("open", text="Settings")
TAP = Action("click", x=270, y=310)
DONE = Action("terminate", text="success")


def good_rollout() -> Rollout:
    return Rollout(WIFI, [step("home", OPEN, "open Settings"), step("settings", TAP, 'click "Wi-Fi"'),
                          step("settings-off", DONE, "terminate success")], done=True, success=True)


def test_success_rows_label_every_step_positive_and_corruptions_negative():
    ok = good_rollout()
    other = Rollout(T("bt.on", "Turn on Bluetooth"),
                    [step("home", OPEN, "open Settings"), step("settings", Action("click", x=270, y=400),
                                                                 'click "Bluetooth"'),
                     step("settings-bt", DONE, "terminate success")], done=True, success=True)
    book, texts = ScreenBook(), {}
    for r in (ok, other):
        book.add(r)
        texts.update(step_texts(r))
    rows = success_rows([ok, other], book, texts, random.Random(0), corruptions=3,
                        extra_actions=EXTRA_ACTIONS, source="gen1")
    real = [r for r in rows if r.source == "gen1"]
    assert [(r.task_id, r.action, r.label, r.final) for r in real] == [
        ("wifi.off", "open Settings", 1, False), ("wifi.off", 'click "Wi-Fi"', 1, False),
        ("wifi.off", "terminate success", 1, True),
        ("bt.on", "open Settings", 1, False), ("bt.on", 'click "Bluetooth"', 1, False),
        ("bt.on", "terminate success", 1, True)]
    corrupted = [r for r in rows if r.source != "gen1"]
    assert corrupted and all(r.label == 0 for r in corrupted)
    assert {r.source.split(":")[1] for r in corrupted} == {"early_truncation", "cross_task_substitution",
                                                          "redundant_continuation"}
    # every corrupted trajectory ends in a false "task complete": an outcome-level negative
    assert sum(r.final for r in corrupted) == 6
    # the history an example sees is the text of the steps before it (element names kept)
    second = real[2]
    assert second.history == ["open Settings", 'click "Wi-Fi"'] and second.png == b"png-settings-off"


def test_failure_rows_keep_only_known_steps():
    ok = good_rollout()
    failed = Rollout(WIFI, [step("home", OPEN, "open Settings"),            # on the good path → 1
                            step("settings", Action("swipe", direction="up"), "swipe up"),   # no effect → 0
                            step("settings", Action("open", text="Nope"), "open Nope",
                                 error="unknown_app: Nope"),                 # rejected → 0
                            step("settings-2", DONE, "terminate success")],  # refuted → 0
                     done=True, success=False)
    book, texts = ScreenBook(), {}
    for r in (ok, failed):
        book.add(r)
        texts.update(step_texts(r))
    rows = failure_rows([failed], [ok], book, texts, "gen1:failed")
    assert [(r.action, r.label, r.final) for r in rows] == [
        ("open Settings", 1, False), ("swipe up", 0, False), ("open Nope", 0, False),
        ("terminate success", 0, True)]
    crashed = Rollout(WIFI, failed.steps, done=True, success=False, crashed="device gone")
    assert failure_rows([crashed], [ok], book, texts, "x") == []
    looped = Rollout(WIFI, [step("home", OPEN, "open Settings"),                      # unknown
                            step("settings", Action("wait", time=1.0), "wait 1s"),      # may change nothing
                            step("settings", TAP, 'click "Wi-Fi"'),                     # changed the screen
                            step("settings-2", TAP, 'click "Wi-Fi"'),                   # no effect → 0
                            step("settings-2", TAP, 'click "Wi-Fi"')],                  # last: unknown
                     done=True, success=False)
    book.add(looped)
    rows = failure_rows([looped], [], book, texts | step_texts(looped), "gen1:failed")
    assert [(r.screen_id, r.action, r.label) for r in rows] == [("settings-2", 'click "Wi-Fi"', 0)]
    # a sibling beam with the same first steps: its shared negative is not counted twice
    sibling = Rollout(WIFI, looped.steps[:4] + [step("settings-2", DONE, "terminate success")],
                      done=True, success=False)
    rows = failure_rows([looped, sibling], [], book, texts | step_texts(looped), "gen1:failed")
    assert [(r.screen_id, r.action, r.label) for r in rows] == [
        ("settings-2", 'click "Wi-Fi"', 0), ("settings-2", "terminate success", 0)]


def test_verified_rows_use_the_rules_against_the_reference():
    ref = good_rollout()
    bounds = [None, (200, 280, 340, 340), None]
    proposals = [[OPEN, Action("open", text="Clock"), None],            # same / wrong app / malformed
                 [Action("click", x=300, y=330), Action("click", x=270, y=1100)],   # inside / far
                 [Action("terminate", text="failure")]]
    rows = verified_rows(ref, proposals, bounds, (540, 1200), "seed")
    got = [(r.action, r.label, r.source.split(":")[1]) for r in rows]
    assert got == [("open Settings", 1, "reference"), ("open Clock", 0, "verified"),
                   ('click "Wi-Fi"', 1, "reference"), ("click (300, 330)", 1, "verified"),
                   ("click (270, 1100)", 0, "verified"),
                   ("terminate success", 1, "reference"), ("terminate failure", 0, "verified")]


def test_agent_rows_and_parquet_keep_png_bytes(tmp_path):
    r = good_rollout()
    rows = agent_rows(r, "explore", 2)
    assert [x["completion"] for x in rows] == [
        'open", "text": "Settings"}}</tool_call>', 'click", "coordinate": [270, 310]}}</tool_call>',
        'terminate", "status": "success"}}</tool_call>']
    write_parquet(tmp_path / "t.parquet", [rollout_record(r, 2, "explore")])
    back = pq.read_table(tmp_path / "t.parquet").to_pylist()[0]
    assert back["success"] and back["steps"][0]["png"] == b"png-home"
    assert back["steps"][1]["action"] == TAP.to_tool_call()
    write_parquet(tmp_path / "empty.parquet", [])
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


def test_split_is_stable_disjoint_and_seed_only_from_seed_levels():
    tasks = [T(f"t{i}", f"goal {i}", level=1 + i % 3) for i in range(60)]
    cfg = parse_config({"job": "uigenie", "tasks": {"seed_levels": [1]}})
    a, b = split_tasks(cfg, tasks), split_tasks(cfg, list(reversed(tasks)))
    assert {k: [t.id for t in v] for k, v in a.items()} == {k: [t.id for t in v] for k, v in b.items()}
    ids = [t.id for v in a.values() for t in v]
    assert len(ids) == len(set(ids)) == 60
    assert a["seed"] and all(t.level == 1 for t in a["seed"])
    assert {t.level for t in a["heldout"]} == {1, 2, 3}
    capped = split_tasks(parse_config({"job": "uigenie", "tasks": {"n_heldout": 3}}), tasks)
    assert [t.id for t in capped["heldout"]] == [t.id for t in a["heldout"]][:3]


def test_capped_splits_take_each_template_in_turn():
    @dataclass(frozen=True)
    class Templated(T):
        template: str = ""
    tasks = [Templated(f"{k}.{i}", f"goal {k} {i}", 1, k) for k in "abcd" for i in range(12 if k == "a" else 3)]
    full = split_tasks(parse_config({"job": "uigenie"}), tasks)
    capped = split_tasks(parse_config({"job": "uigenie", "tasks": {"n_explore": 4, "n_heldout": 5}}), tasks)
    assert [t.id for t in capped["explore"]] == [t.id for t in full["explore"]]   # the pool: all of it
    for name, k in (("explore", 4), ("heldout", 5)):
        kinds = {t.template for t in full[name]}
        got = capped[name] if name == "heldout" else exploration_round(capped[name], k, set())
        assert len(got) == min(k, len(full[name]))
        assert {t.template for t in got} == kinds if len(kinds) <= k else len({t.template for t in got}) == k
        for kind in kinds:          # within a template, the uncapped split's order
            assert [t.id for t in got if t.template == kind] == \
                [t.id for t in full[name] if t.template == kind][:len([t for t in got if t.template == kind])]


def test_generated_seeds_keep_the_suite_for_exploration_and_held_out():
    suite = [T(f"t{i}", f"goal {i}", level=1 + i % 3) for i in range(40)]
    seeds = [T("t0", "goal 0", 1), T("s1", "new 1", 1), T("s2", "new 2", 2), T("s3", "new 3", 3)]
    cfg = parse_config({"job": "uigenie", "tasks": {"seeds": "generated"}})
    split = split_tasks(cfg, suite, seeds)
    assert [t.id for t in split["seed"]] == ["t0", "s1", "s2"]     # level 3 is not a seed level
    rest = [t.id for k in ("explore", "heldout") for t in split[k]]
    assert sorted(rest) == sorted(f"t{i}" for i in range(1, 40))   # t0 is a seed: not held out
    assert split["explore"] and split["heldout"]
    capped = split_tasks(parse_config({"job": "uigenie", "tasks": {"seeds": "generated", "n_seed": 1}}),
                         suite, seeds)
    assert [t.id for t in capped["seed"]] == ["t0"]
    assert len(capped["explore"]) + len(capped["heldout"]) == 39


def bare_loop(agent: dict, training=None):
    from types import SimpleNamespace
    from jobs.uigenie.loop import UIGenieLoop
    cfg = parse_config({"job": "uigenie", "agent": agent})
    return UIGenieLoop(cfg, SimpleNamespace(root=Path("unused")), SimpleNamespace(note=lambda text: None),
                       None, SimpleNamespace(sampler=None, training=training), None, None, [])


def test_an_exploration_round_puts_the_next_task_in_a_solved_ones_place():
    pool = [T(f"t{i}", f"goal {i}", 1) for i in range(6)]
    def ids(tasks):
        return [t.id for t in tasks]
    assert ids(exploration_round(pool, 3, set())) == ["t0", "t1", "t2"]
    assert ids(exploration_round(pool, 3, {"t1", "t9"})) == ["t0", "t2", "t3"]
    assert ids(exploration_round(pool, None, {"t0"})) == ["t1", "t2", "t3", "t4", "t5"]
    assert exploration_round(pool, 3, {t.id for t in pool}) == []
    loop = bare_loop({})
    loop.splits["explore"] = pool
    loop.agent_data = [{"task_id": i, "source": "explore"} for i in ("t0", "t2")] + [
        {"task_id": "t1", "source": "reference"}]
    for retire, want in ((True, ["t1", "t3"]), (False, ["t0", "t1"])):
        loop.cfg = parse_config({"job": "uigenie", "tasks": {"n_explore": 2, "retire_solved": retire}})
        assert ids(loop.exploring()) == want


def test_verify_steps_asks_the_agent_on_a_sample_and_keeps_every_reference():
    from actors.sampler import Completion
    asked = []
    def generate(prompts, params, prefix):
        asked.extend(prompts)
        return [Completion(i, [], [], [], 'terminate", "status": "failure"}}</tool_call>', True, 0)
                for i in range(len(prompts))]
    refs = [(good_rollout(), [None, (200, 280, 340, 340), None]) for _ in range(4)]     # 12 steps
    for limit, n in ((None, 12), (5, 5), (0, 0)):
        loop = bare_loop({"verify_samples": 1})
        loop.policy.generate = generate
        asked.clear()
        rows = loop.verified(refs, "seed", (540, 1200), limit)
        assert len(asked) == n
        assert sum(r.source == "seed:reference" for r in rows) == 12
        verified = [r for r in rows if r.source == "seed:verified"]
        assert len(verified) == n and not any(r.label for r in verified)     # "failure" is never right


def test_later_generations_replay_earlier_examples_per_new_one():
    """Generation 0: every seed example for ``sft_epochs``; later ones: the new examples, ``replay``
    earlier ones per new one, for ``explore_epochs`` at ``explore_lr``."""
    from types import SimpleNamespace
    calls = []
    training = SimpleNamespace(sft=lambda rows, epochs, batch, lr, rng: calls.append((rows, epochs, lr)) or {})
    loop = bare_loop({"sft_epochs": 4, "replay": 3, "explore_epochs": 2, "lr": 2e-4, "explore_lr": 5e-5}, training)
    seed = [{"prompt": f"s{i}"} for i in range(10)]
    loop.train_agent(seed)
    new = [{"prompt": "n0"}, {"prompt": "n1"}]
    loop.train_agent(new)
    (first, e0, lr0), (second, e1, lr1) = calls
    assert first == seed and e0 == 4 and lr0 == 2e-4
    assert second[:2] == new and len(second) == 2 + 6 and e1 == 2 and lr1 == 5e-5
    assert all(r in seed for r in second[2:]) and len({r["prompt"] for r in second[2:]}) == 6
