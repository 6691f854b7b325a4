"""Unit tests for actors/emulator/actions.py; expected values are worked out by hand."""
import pytest

from actors.emulator.actions import (
    Action, ActionError, click_matches, parse_action, scale_to_device, scale_to_model, swipe_vector,
)

ALL = [
    Action("click", x=10, y=20),
    Action("long_press", x=5, y=6, time=2.0),
    Action("swipe", direction="up"),
    Action("type", text="héllo world"),
    Action("open", text="Settings"),
    Action("system_button", text="Back"),
    Action("wait", time=1.5),
    Action("terminate", text="failure"),
]


def call(args: str, name: str = "mobile_use") -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {args}}}</tool_call>'


# --- format and parsing ----------------------------------------------------------------------------

def test_to_tool_call_exact_format():
    assert Action("click", x=10, y=20).to_tool_call() == (
        '<tool_call>{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [10, 20]}}'
        '</tool_call>')
    assert Action("system_button", text="Home").to_tool_call() == (
        '<tool_call>{"name": "mobile_use", "arguments": {"action": "system_button", "button": "Home"}}'
        '</tool_call>')
    assert '"action": "long_press", "coordinate": [5, 6], "time": 2.0' in ALL[1].to_tool_call()
    assert '"status": "failure"' in ALL[7].to_tool_call()


@pytest.mark.parametrize("action", ALL, ids=lambda a: a.kind)
def test_round_trip(action):
    assert parse_action(action.to_tool_call()) == action


def test_last_block_prose_fences_and_missing_close_tag():
    text = ("Thought: first I'd click. " + call('{"action": "click", "coordinate": [1, 2]}') +
            " no wait, go back.\n<tool_call>\n```json\n"
            '{"name": "mobile_use", "arguments": {"action": "system_button", "button": "Back"}}\n```')
    assert parse_action(text) == Action("system_button", text="Back")


def test_float_coordinates_round_half_up_and_extra_args_ignored():
    a = parse_action(call('{"action": "click", "coordinate": [10.5, 20.49], "text": "ignored"}'))
    assert (a.x, a.y, a.text) == (11, 20, None)


@pytest.mark.parametrize("text, code", [
    ("I will click the button.", "no_tool_call"),
    ('<tool_call>{"name": "mobile_use", "arguments": {"action": </tool_call>', "bad_json"),
    ('<tool_call>["mobile_use"]</tool_call>', "bad_json"),
    (call('{"action": "click", "coordinate": [1, 2]}', name="computer_use"), "wrong_tool"),
    (call('{"action": "scroll", "direction": "up"}'), "unknown_action"),
    ('<tool_call>{"name": "mobile_use"}</tool_call>', "missing_argument"),
    (call('"click"'), "bad_argument"),
    (call('{"coordinate": [1, 2]}'), "missing_argument"),
    (call('{"action": "click"}'), "missing_argument"),
    (call('{"action": "click", "coordinate": "[1, 2]"}'), "bad_argument"),
    (call('{"action": "click", "coordinate": [1, 2, 3]}'), "bad_argument"),
    (call('{"action": "click", "coordinate": [true, 2]}'), "bad_argument"),
    (call('{"action": "long_press", "coordinate": [1, 2]}'), "missing_argument"),
    (call('{"action": "wait", "time": 0}'), "bad_argument"),
    (call('{"action": "wait", "time": "2"}'), "bad_argument"),
    (call('{"action": "swipe"}'), "missing_argument"),
    (call('{"action": "swipe", "direction": "north"}'), "bad_argument"),
    (call('{"action": "type", "text": ""}'), "bad_argument"),
    (call('{"action": "open", "text": 3}'), "bad_argument"),
    (call('{"action": "system_button", "button": "Menu"}'), "bad_argument"),
    (call('{"action": "system_button", "text": "Back"}'), "missing_argument"),
    (call('{"action": "terminate", "status": "done"}'), "bad_argument"),
])
def test_parse_errors(text, code):
    with pytest.raises(ActionError) as err:
        parse_action(text)
    assert err.value.code == code
    assert str(err.value).startswith(code + ": ")


def test_action_constructor_validates():
    with pytest.raises(ActionError) as err:
        Action("tap", x=1, y=2)
    assert err.value.code == "unknown_action"
    with pytest.raises(ActionError) as err:
        Action("click", x=1.5, y=2)
    assert err.value.code == "bad_argument"
    assert isinstance(err.value, ValueError)


# --- scaling ---------------------------------------------------------------------------------------

def test_scale_to_device_and_back():
    # model image 1092×2408 (multiples of 28) → device 1080×2400
    a = scale_to_device(Action("click", x=546, y=1204), (1092, 2408), (1080, 2400))
    assert (a.x, a.y) == (540, 1200)
    # 100·1080/1092 = 98.90 → 99;  2407·2400/2408 = 2399.0 → 2399 (still on screen)
    a = scale_to_device(Action("long_press", x=100, y=2407, time=1.0), (1092, 2408), (1080, 2400))
    assert (a.x, a.y, a.time) == (99, 2399, 1.0)
    back = scale_to_model(Action("click", x=99, y=2399), (1092, 2408), (1080, 2400))
    assert (back.x, back.y) == (100, 2407)   # 99·1092/1080 = 100.1 → 100; 2399·2408/2400 = 2407.0
    # half rounds up: 1·3/2 = 1.5 → 2
    assert scale_to_device(Action("click", x=1, y=1), (2, 2), (3, 3)).x == 2


def test_scale_leaves_coordinate_free_actions_alone():
    for a in ALL[2:]:
        assert scale_to_device(a, (100, 100), (1080, 2400)) is a


@pytest.mark.parametrize("x, y", [(1000, 50), (-3, 50), (50, 1000), (50, -3)])
def test_scale_out_of_screen(x, y):
    # model 1000×1000 → device 500×500: 1000 → 500 is outside [0, 500); -3 → -1.5 → -1
    # (-1 → -0.5 would round half up to 0, on screen)
    with pytest.raises(ActionError) as err:
        scale_to_device(Action("click", x=x, y=y), (1000, 1000), (500, 500))
    assert err.value.code == "out_of_screen"


# --- swipe convention ------------------------------------------------------------------------------

def test_swipe_finger_direction():
    # "up": finger moves from lower (y=1800) to upper (y=600) part of a 1080×2400 screen
    assert swipe_vector("up", (1080, 2400)) == (540, 1800, 540, 600)
    assert swipe_vector("down", (1080, 2400)) == (540, 600, 540, 1800)
    assert swipe_vector("left", (1080, 2400)) == (810, 1200, 270, 1200)
    assert swipe_vector("right", (1080, 2400)) == (270, 1200, 810, 1200)
    with pytest.raises(ActionError) as err:
        swipe_vector("north", (1080, 2400))
    assert err.value.code == "bad_argument"


# --- click matching --------------------------------------------------------------------------------

def test_click_matches_threshold_1080x2400():
    # diagonal √(1080² + 2400²) = √6926400 ≈ 2631.8; 0.14 × 2631.8 ≈ 368.45 px
    size, target = (1080, 2400), (540, 1200)
    assert click_matches((540, 1200 + 368), None, target, size)
    assert not click_matches((540, 1200 + 369), None, target, size)
    assert click_matches((540 + 200, 1200 + 309), None, target, size)      # √135481 ≈ 368.08
    assert not click_matches((540 + 220, 1200 + 296), None, target, size)  # √136016 ≈ 368.80


def test_click_matches_bounds():
    bounds = (100, 100, 200, 150)
    assert click_matches((100, 150), bounds, None, (1080, 2400))    # edges inclusive
    assert not click_matches((201, 120), bounds, None, (1080, 2400))
    # outside the bounds but near the point still counts
    assert click_matches((900, 120), bounds, (1000, 120), (1080, 2400))
    with pytest.raises(ValueError):
        click_matches((1, 1), None, None, (1080, 2400))
