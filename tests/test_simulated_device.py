"""The simulated phone, the uiautomator-dump helpers and the simulated task suite (all CPU, fast)."""
from __future__ import annotations

import io
import pickle
import re
from collections import Counter

import pytest
from PIL import Image

from actors.emulator.device import Device, DeviceCrashed, DeviceError
from actors.emulator.simulated import TEMPLATES, SimulatedDevice, reference_actions, seed_suite, task_suite
from actors.emulator.uitree import compact_text, element_at, find, parse_hierarchy
from actors.emulator.actions import Action, swipe_vector

ATTRS = ["index", "text", "resource-id", "class", "package", "content-desc", "checkable", "checked",
         "clickable", "enabled", "focusable", "focused", "scrollable", "long-clickable", "password",
         "selected", "bounds"]
SIZE = (540, 1200)


@pytest.fixture
def dev():
    return SimulatedDevice()


def nodes_of(dev):
    return parse_hierarchy(dev.dump_hierarchy())


def tap_label(dev, label):
    node = find(nodes_of(dev), label)
    assert node is not None, f"{label!r} not on screen {dev.screen_id()}"
    dev.tap(*node.center)


def swipe(dev, direction):
    dev.swipe(*swipe_vector(direction, dev.size))


def labels(dev):
    return {n.label for n in nodes_of(dev) if n.label}


# --- the dump -------------------------------------------------------------------------------------
def test_dump_has_uiautomator_schema_and_parses_back(dev):
    dev.open_app("Settings")
    xml = dev.dump_hierarchy()
    assert xml.startswith("<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>"
                          '<hierarchy rotation="0"><node index="0" text="" resource-id="" '
                          'class="android.widget.FrameLayout" package="com.evoray.settings"')
    for attrs in re.findall(r"<node ([^>]*?)/?>", xml):
        assert re.findall(r'([\w-]+)="', attrs) == ATTRS
    nodes = parse_hierarchy(xml)
    assert len(nodes) == xml.count("<node ")
    assert nodes[0].bounds == (0, 0, 540, 1200) and nodes[0].depth == 0
    assert all(n.cls.startswith("android.") and n.package == "com.evoray.settings" for n in nodes)
    wifi = find(nodes, "wi-fi")
    assert (wifi.cls, wifi.checkable, wifi.checked, wifi.clickable) == ("android.widget.Switch", True,
                                                                        True, True)


def test_parse_hierarchy_rejects_bad_xml_and_tolerates_adb_trailer():
    with pytest.raises(ValueError, match="empty"):
        parse_hierarchy("  ")
    with pytest.raises(ValueError, match="not well-formed"):
        parse_hierarchy("<hierarchy><node")
    with pytest.raises(ValueError, match="expected <hierarchy>"):
        parse_hierarchy("<root/>")
    with pytest.raises(ValueError, match="bad bounds"):
        parse_hierarchy('<hierarchy><node class="x" bounds="[0,0]"/></hierarchy>')
    xml = '<hierarchy rotation="0"><node class="a" bounds="[0,0][10,10]"/></hierarchy>'
    assert len(parse_hierarchy(xml + "\nUI hierchary dumped to: /dev/tty")) == 1


def test_element_at_and_find(dev):
    dev.open_app("Contacts")
    nodes = nodes_of(dev)
    name = find(nodes, "aaron blake")                      # a plain TextView inside the row
    row = element_at(nodes, *name.center)
    assert not name.clickable and row.clickable and row.cls == "android.widget.LinearLayout"
    assert row.bounds == (0, 144, 540, 254)
    assert element_at(nodes, 540, 200) == row              # bounds are inclusive
    assert find(nodes, "Add contact").cls == "android.widget.ImageButton"    # by content-desc
    assert find(nodes, "nobody") is None and find(nodes, "") is None


def test_compact_text_of_the_settings_screen(dev):
    dev.open_app("Settings")
    assert compact_text(nodes_of(dev)).splitlines() == [
        '[2] text "Settings" @(282,96)',
        '[5] switch "Wi-Fi" on @(270,199)',
        '[6] switch "Bluetooth" off @(270,309)',
        '[7] switch "Airplane mode" off @(270,419)',
        '[8] item "Display | Dark theme, font size" @(270,529)',
        '[11] item "About phone | Name, Android version" @(270,639)',
    ]


def test_compact_text_shows_focus_lists_and_stays_short(dev):
    dev.open_app("Contacts")
    text = compact_text(nodes_of(dev))
    assert "list scrollable" in text and '"Aaron Blake | 555-0101"' in text
    assert len(text.split()) < 150                          # ~ a few hundred tokens at most
    tap_label(dev, "Add contact")
    tap_label(dev, "Name")
    assert '[5] edit "Name" focused @(270,222)' in compact_text(nodes_of(dev))


# --- the device -----------------------------------------------------------------------------------
def test_satisfies_the_device_protocol(dev):
    assert isinstance(dev, Device)
    assert dev.serial == "sim-0" and dev.size == SIZE and dev.healthy()


def test_same_actions_give_same_screens_and_pngs():
    def play(dev):
        seen = [dev.screen_id()]
        dev.open_app("Contacts")
        swipe(dev, "up")
        seen.append(dev.screen_id())
        tap_label(dev, "Kofi Mensah")
        seen.append(dev.screen_id())
        return seen, dev.screenshot()

    ids_a, png_a = play(SimulatedDevice())
    ids_b, png_b = play(SimulatedDevice(serial="sim-7"))
    assert ids_a == ids_b and png_a == png_b
    assert ids_a[0].startswith("launcher#") and ids_a[2].startswith("contacts/detail#")
    assert Image.open(io.BytesIO(png_a)).size == SIZE


def test_screenshot_follows_state(dev):
    dev.open_app("Settings")
    before = dev.screenshot()
    assert dev.screenshot() == before
    tap_label(dev, "Wi-Fi")
    assert dev.screenshot() != before and dev.state["settings"]["wifi"] is False


def test_navigation_back_home_and_current_app(dev):
    assert dev.current_app() == "launcher"
    tap_label(dev, "Settings")                              # launcher icon
    assert dev.current_app() == "Settings"
    tap_label(dev, "Display")
    assert dev.screen_id().startswith("settings/display#")
    tap_label(dev, "Navigate up")
    assert dev.screen_id().startswith("settings/main#")
    tap_label(dev, "About phone")
    dev.press("back")
    dev.press("back")
    assert dev.current_app() == "launcher"
    dev.press("back")                                       # back on home does nothing
    dev.open_app("todo")                                    # names match loosely
    assert dev.current_app() == "To-do"
    dev.press("home")
    assert dev.current_app() == "launcher" and dev.screen_id().startswith("launcher#")


def test_typing_into_a_focused_field_and_saving(dev):
    dev.open_app("Contacts")
    tap_label(dev, "Add contact")
    with pytest.raises(DeviceError) as err:
        dev.type_text("Alice")
    assert err.value.code == "no_focus"
    tap_label(dev, "Name")
    dev.type_text("Alice")
    dev.type_text(" Chen")
    assert find(nodes_of(dev), "Alice Chen").focused
    tap_label(dev, "Save")                                  # no phone yet: stays, says why
    assert "Phone is required" in labels(dev)
    tap_label(dev, "Phone")
    dev.type_text("555-0142")
    tap_label(dev, "Save")
    assert dev.screen_id().startswith("contacts/list#")
    assert {"name": "Alice Chen", "phone": "555-0142"} in dev.state["contacts"]


def test_clear_button_empties_a_prefilled_field(dev):
    dev.open_app("Contacts")
    tap_label(dev, "Chen Wei")
    tap_label(dev, "Edit")
    tap_label(dev, "Clear phone")
    dev.type_text("555-0177")
    tap_label(dev, "Save")
    assert dev.screen_id().startswith("contacts/detail#") and "555-0177" in labels(dev)


def test_swiping_up_reveals_hidden_contacts(dev):
    dev.open_app("Contacts")
    assert "Nadia Rahman" not in labels(dev) and "Aaron Blake" in labels(dev)
    before = dev.screen_id()
    dev.swipe(100, 700, 500, 650)                           # mostly horizontal: ignored
    assert dev.screen_id() == before
    swipe(dev, "up")
    assert "Nadia Rahman" in labels(dev) and "Aaron Blake" not in labels(dev)
    swipe(dev, "down")
    assert dev.screen_id() == before


def test_long_press_opens_a_menu_that_a_tap_outside_dismisses(dev):
    dev.open_app("To-do")
    dev.long_press(*find(nodes_of(dev), "Pay rent").center, 1.0)
    assert dev.screen_id().startswith("todo/list:menu#")
    dev.tap(270, 1190)                                      # outside the dialog
    assert dev.screen_id().startswith("todo/list#")
    dev.long_press(*find(nodes_of(dev), "Pay rent").center, 1.0)
    tap_label(dev, "Delete")
    assert "Pay rent" not in [t["text"] for t in dev.state["todo"]]


def test_step_errors_carry_their_code(dev):
    with pytest.raises(DeviceError) as err:
        dev.open_app("Camera")
    assert err.value.code == "unknown_app" and "Contacts" in str(err.value)
    for call in (lambda: dev.tap(-1, 5), lambda: dev.tap(540, 5), lambda: dev.long_press(5, 1200, 1),
                 lambda: dev.swipe(270, 900, 270, 1300)):
        with pytest.raises(DeviceError) as err:
            call()
        assert err.value.code == "out_of_screen"
    with pytest.raises(DeviceError) as err:
        dev.press("menu")
    assert err.value.code == "bad_input"
    before = dev.screen_id()
    dev.tap(270, 1000)                                      # empty space: nothing happens
    assert dev.screen_id() == before and dev.healthy()


def test_crash_injection_and_restart(dev):
    dev.open_app("Settings")
    tap_label(dev, "Wi-Fi")
    dev.crash()
    assert not dev.healthy()
    for call in (lambda: dev.tap(1, 1), dev.screenshot, dev.dump_hierarchy, dev.current_app,
                 dev.reset, lambda: dev.state):
        with pytest.raises(DeviceCrashed):
            call()
    dev.restart()
    assert dev.healthy() and dev.current_app() == "launcher"
    assert dev.state["settings"]["wifi"] is True            # a fresh phone


def test_crash_after_n_actions_fires_once():
    dev = SimulatedDevice(crash_after=3)
    dev.open_app("Clock")
    dev.press("back")
    with pytest.raises(DeviceCrashed):
        dev.wait(1)
    assert not dev.healthy()
    dev.restart()
    for _ in range(5):
        dev.wait(1)
    assert dev.healthy()
    dev.close()
    assert not dev.healthy()


def test_load_state_sets_what_reset_returns_to(dev):
    dev.load_state({"settings": {"bluetooth": True}, "todo": [{"text": "Only one", "done": False}]})
    assert dev.state["settings"]["bluetooth"] and dev.state["todo"] == [{"text": "Only one",
                                                                         "done": False}]
    assert len(dev.state["contacts"]) == 14                 # missing sections keep the defaults
    dev.open_app("To-do")
    tap_label(dev, "Only one")
    dev.reset()
    assert dev.current_app() == "launcher" and dev.state["todo"][0]["done"] is False
    with pytest.raises(ValueError, match="unknown state sections"):
        dev.load_state({"photos": []})


# --- the task suite -------------------------------------------------------------------------------
def test_suite_shape():
    tasks = task_suite()
    assert len(tasks) >= 60 and len({t.id for t in tasks}) == len(tasks)
    assert [t.id for t in task_suite()] == [t.id for t in tasks]
    levels = Counter(t.level for t in tasks)
    assert set(levels) == {1, 2, 3} and min(levels.values()) >= 10
    templates = Counter(t.template for t in tasks)
    assert len(templates) >= 10 and min(templates.values()) >= 2
    for name in templates:                                  # parameters differ within a family
        goals = [t.goal for t in tasks if t.template == name]
        assert len(set(goals)) == len(goals)


def test_every_reference_solves_its_task(dev):
    for task in task_suite():
        assert not task.check(task.initial_state), task.id
        records = reference_actions(task, dev)
        assert task.check(dev.state), task.id
        assert records[0][0].startswith("launcher#") and records[-1][2] == Action("terminate",
                                                                                  text="success")
        for screen, xml, action, bounds in records:
            if action.kind in ("click", "long_press"):
                left, top, right, bottom = bounds
                assert left <= action.x <= right and top <= action.y <= bottom, (task.id, screen)
                assert element_at(parse_hierarchy(xml), action.x, action.y).bounds == bounds
            else:
                assert bounds is None


def test_seed_tasks_are_solvable_simple_and_new():
    """Generated seeds: every reference works, levels 1-2 only, every single-app template but the
    level-3 one, and only the closed-parameter tasks (switches, theme, font size) are in the suite."""
    seeds = seed_suite()
    assert len(seeds) >= 60 and len({t.id for t in seeds}) == len(seeds)
    assert {t.level for t in seeds} == {1, 2} and not seed_suite(levels=(3,))
    assert set(TEMPLATES) - {t.template for t in seeds} == {"edit_phone", "combo"}
    shared = {t.template for t in seeds if t.id in {s.id for s in task_suite()}}
    assert shared == {"toggle_setting", "dark_theme", "font_size"}
    for task in seeds:
        dev = SimulatedDevice()
        reference_actions(task, dev)
        assert task.check(dev.state), task.id


def test_tasks_pickle_with_the_standard_library():
    tasks = task_suite()
    copies = pickle.loads(pickle.dumps(tasks))
    assert [t.id for t in copies] == [t.id for t in tasks]
    assert [t.check(t.initial_state) for t in copies] == [False] * len(tasks)


def test_scrolling_tasks_record_swipes_and_unseen_parameters_work(dev):
    kofi = next(t for t in task_suite() if t.id == "contacts.delete.kofi-mensah")
    assert kofi.level == 3
    kinds = [a.kind for _, _, a, _ in reference_actions(kofi, dev)]
    assert kinds == ["open", "swipe", "click", "click", "terminate"]
    held_out = [TEMPLATES["add_contact"]("Zoe Park", "555-0999"),
                TEMPLATES["delete_contact"]("Zoe Park"),                 # added by the task itself
                TEMPLATES["edit_phone"]("Aaron Blake", "555-0101"),      # the number it already has
                TEMPLATES["complete_todo"]("Feed the cat", True),
                TEMPLATES["toggle_alarm"](5, 55, True),
                TEMPLATES["combo"](("font_size", "large"), ("delete_todo", "Buy milk"))]
    assert held_out[0].id == "contacts.add.zoe-park" and held_out[1].level == 3
    for task in held_out:
        assert not task.check(task.initial_state), task.id
        reference_actions(task, dev)
        assert task.check(dev.state), task.id
