"""The adb backend against a fake adb server and a fake emulator console (real wire protocols).

No Android SDK is needed: adbutils talks to ``tests/fake_adb.py`` over TCP exactly as it talks to a
real adb server, and ``Emulator`` launches a shell script that records its argv.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from actors.emulator.adb import (AdbDevice, BootTimeout, ConsoleError, Emulator, emulator_command,
                                 input_text_commands)
from actors.emulator.device import Device, DeviceCrashed, DeviceError
from tests.fake_adb import CANNED_XML, FakeAdbServer, FakeConsole

ROOT = Path(__file__).resolve().parents[1]
SERIAL = "emulator-5554"


@pytest.fixture
def adb():
    with FakeAdbServer() as server:
        server.add(SERIAL)
        yield server


@pytest.fixture
def console():
    fake = FakeConsole()
    yield fake
    fake.close()


@pytest.fixture
def device(adb):
    return AdbDevice(SERIAL, adb_port=adb.port, poll_s=0.05, command_timeout_s=5)


def fake_emulator(tmp_path: Path, body: str = "exec sleep 30") -> tuple[Path, Path]:
    """A stand-in ``emulator`` binary: records its argv (one per line), then runs ``body``."""
    argv = tmp_path / "argv.txt"
    script = tmp_path / "emulator"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > {argv}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, argv


def wait_for(path: Path, timeout_s: float = 5) -> str:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text()


# -- actions: the exact shell lines ---------------------------------------------------------------
def test_actions_send_the_expected_shell_commands(adb, device):
    device.tap(10, 20)
    device.long_press(10, 20, 1.5)
    device.swipe(1, 2, 3, 4)
    device.swipe(1, 2, 3, 400, seconds=0.8)
    device.press("back")
    device.press("home")
    assert adb.commands(SERIAL) == ["input tap 10 20", "input swipe 10 20 10 20 1500",
                                    "input swipe 1 2 3 4 300", "input swipe 1 2 3 400 800",
                                    "input keyevent 4", "input keyevent 3"]
    with pytest.raises(DeviceError) as err:
        device.press("menu")
    assert err.value.code == "bad_input"


def test_type_text_escapes_spaces_and_shell_metacharacters(adb, device):
    device.type_text("hello world")
    device.type_text("a&b;c|d $HOME 'q'")
    device.type_text("line1\nline2")
    device.type_text("")
    assert adb.commands(SERIAL) == [
        "input text hello%sworld",
        "input text 'a&b;c|d%s$HOME%s'\"'\"'q'\"'\"''",
        "input text line1", "input keyevent 66", "input text line2"]
    # the quoting survives a real POSIX shell: input would receive exactly one word
    word = subprocess.run(["sh", "-c", "printf %s " + input_text_commands("a&b;c|d $HOME 'q'")[0][11:]],
                          capture_output=True, text=True).stdout
    assert word == "a&b;c|d%s$HOME%s'q'"
    with pytest.raises(DeviceError) as err:
        device.type_text("café")
    assert err.value.code == "bad_input"


# -- observation ----------------------------------------------------------------------------------
def test_screenshot_hierarchy_and_size(adb, device):
    png = device.screenshot()
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert device.dump_hierarchy() == CANNED_XML
    assert device.size == (1080, 2400)
    assert device.size == (1080, 2400)
    assert adb.commands(SERIAL).count("wm size") == 1  # cached
    assert "sync:" in adb.requests  # the dump is read back over the sync protocol, like adbutils does


def test_hierarchy_failure_is_a_step_error(adb, device):
    adb.devices[SERIAL].dump_error = "ERROR: could not get idle state."
    with pytest.raises(DeviceError) as err:
        device.dump_hierarchy(attempts=1)
    assert err.value.code == "hierarchy_unavailable" and "idle state" in str(err.value)


def test_device_satisfies_the_protocol(device):
    assert isinstance(device, Device)


# -- apps -----------------------------------------------------------------------------------------
def test_open_app_and_current_app(adb, device):
    assert device.current_app() == "launcher"
    device.open_app("Settings")
    assert adb.commands(SERIAL)[-1] == "monkey -p com.android.settings -c android.intent.category.LAUNCHER 1"
    assert device.current_app() == "settings"
    adb.devices[SERIAL].focus = "org.example.notes"
    assert device.current_app() == "org.example.notes"


def test_unknown_and_missing_apps_are_step_errors(adb, device):
    with pytest.raises(DeviceError) as err:
        device.open_app("Fax Machine")
    assert err.value.code == "unknown_app" and "settings" in str(err.value) and "clock" in str(err.value)
    with pytest.raises(DeviceError) as err:
        device.open_app("maps")  # in the name map, not installed on this device
    assert err.value.code == "unknown_app" and "not installed" in str(err.value)


def test_app_map_is_overridable(adb):
    adb.devices[SERIAL].installed.add("org.example.notes")
    dev = AdbDevice(SERIAL, adb_port=adb.port, apps={"Notes": "org.example.notes"})
    dev.open_app("notes")
    assert dev.current_app() == "notes"


# -- crashes and health ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["offline", "drop"])
def test_lost_device_raises_device_crashed(adb, device, how):
    assert device.healthy()
    adb.crash(SERIAL, how)
    assert not device.healthy()
    for action in (lambda: device.tap(1, 2), device.screenshot, device.dump_hierarchy, device.current_app):
        with pytest.raises(DeviceCrashed, match=SERIAL):
            action()
    with pytest.raises(DeviceCrashed, match="input tap 1 2"):
        device.tap(1, 2)


def test_unknown_serial_is_a_crash_and_unhealthy(adb):
    dev = AdbDevice("emulator-5600", adb_port=adb.port)
    assert not dev.healthy()
    with pytest.raises(DeviceCrashed, match="emulator-5600"):
        dev.press("home")


def test_older_adb_server_uses_host_transport(adb):
    with FakeAdbServer(version=40) as old:
        old.add(SERIAL)
        AdbDevice(SERIAL, adb_port=old.port).tap(5, 6)
        assert f"host:transport:{SERIAL}" in old.requests
        assert old.commands(SERIAL) == ["input tap 5 6"]


def test_restart_without_emulator_reboots_and_waits(adb, device):
    device.restart()
    cmds = adb.commands(SERIAL)
    assert cmds[0] == "reboot" and cmds[-1] == "getprop sys.boot_completed"
    assert device.healthy()


# -- emulator console: reset ----------------------------------------------------------------------
def test_reset_loads_the_snapshot_through_the_console(adb, tmp_path):
    adb.devices[SERIAL].focus = "com.android.settings"
    loaded = []
    console = FakeConsole(token="s3cret", on_load=loaded.append)
    try:
        token = tmp_path / "token"
        token.write_text("s3cret\n")
        emu = Emulator("evoray", 5554, console_port=console.port, token_path=token, adb_port=adb.port)
        dev = AdbDevice(SERIAL, adb_port=adb.port, emulator=emu, poll_s=0.05)
        dev.reset()
        assert console.commands == ["auth s3cret", "avd snapshot load evoray-clean"]
        assert loaded == ["evoray-clean"]
        assert adb.commands(SERIAL)[-1] == "input keyevent 3"
        assert dev.current_app() == "launcher"
    finally:
        console.close()


def test_console_errors_are_reported(adb, console, tmp_path):
    emu = Emulator("evoray", 5554, console_port=console.port, token_path=tmp_path / "none")
    with pytest.raises(ConsoleError, match="does not exist"):
        emu.load_snapshot("nope")
    locked = FakeConsole(token="s3cret")
    try:
        emu = Emulator("evoray", 5554, console_port=locked.port, token_path=tmp_path / "none")
        with pytest.raises(ConsoleError, match="no token"):
            emu.load_snapshot("evoray-clean")
    finally:
        locked.close()


def test_read_only_emulator_resets_by_relaunching(tmp_path):
    """-read-only emulators refuse console snapshot loads; the reset then relaunches (changes are
    discarded on exit), and the relaunch uses the exact emulator_command line."""
    script, argv = fake_emulator(tmp_path)
    with FakeAdbServer() as adb:
        adb.add("emulator-5556")
        emu = None
        console = FakeConsole(read_only=True,
                              on_kill=lambda: emu.process and emu.process.terminate())
        try:
            emu = Emulator("evoray", 5556, emulator_bin=str(script), console_port=console.port,
                           log_path=tmp_path / "emu.log", adb_port=adb.port, token_path=tmp_path / "none")
            dev = AdbDevice("emulator-5556", adb_port=adb.port, emulator=emu, poll_s=0.05)
            dev.reset()
            assert console.commands == ["avd snapshot load evoray-clean", "kill"]
            assert wait_for(argv).split("\n")[:-1] == emulator_command("evoray", 5556, str(script))
            assert emu.running and adb.commands("emulator-5556")[-1] == "input keyevent 3"
            proc = emu.process
            dev.close()
            assert proc.poll() is not None and emu.process is None
        finally:
            console.close()


# -- emulator launch and boot ---------------------------------------------------------------------
def test_emulator_command_is_the_documented_line():
    assert emulator_command("evoray", 5554) == [
        "emulator", "-avd", "evoray", "-no-window", "-no-audio", "-no-boot-anim", "-read-only",
        "-port", "5554"]
    assert emulator_command("a", 5682, "/sdk/emulator/emulator", ("-gpu", "swiftshader_indirect"))[-3:] == [
        "5682", "-gpu", "swiftshader_indirect"]
    for bad in (5555, 5552, 5684, 80):
        with pytest.raises(ValueError, match=str(bad)):
            emulator_command("a", bad)


def test_emulator_launches_in_its_own_process_group_and_stops(tmp_path):
    script, argv = fake_emulator(tmp_path)
    closed = FakeConsole()
    port = closed.port
    closed.close()  # nothing listens on the console port: stop() must still end the process group
    emu = Emulator("evoray", 5558, emulator_bin=str(script), extra=("-gpu", "swiftshader_indirect"),
                   log_path=tmp_path / "logs" / "emu.log", console_port=port)
    assert emu.serial == "emulator-5558"
    emu.start()
    try:
        assert wait_for(argv).split("\n")[:-1] == [
            str(script), "-avd", "evoray", "-no-window", "-no-audio", "-no-boot-anim", "-read-only",
            "-port", "5558", "-gpu", "swiftshader_indirect"]
        assert os.getpgid(emu.process.pid) == emu.process.pid != os.getpgid(0)
        proc = emu.process
        emu.stop(grace_s=0.2)
        assert proc.poll() is not None and not emu.running
    finally:
        if emu.process:
            emu.process.kill()


def test_missing_emulator_binary_is_a_crash(tmp_path):
    emu = Emulator("evoray", 5554, emulator_bin=str(tmp_path / "no-such-emulator"), log_path=tmp_path / "l")
    with pytest.raises(DeviceCrashed, match="cannot launch"):
        emu.start()


def test_wait_boot_times_out_naming_serial_and_timeout(adb):
    adb.devices[SERIAL].boot_completed = "0"
    emu = Emulator("evoray", 5554, adb_port=adb.port)
    start = time.monotonic()
    with pytest.raises(BootTimeout) as err:
        emu.wait_boot(timeout_s=0.6, poll_s=0.1)
    assert time.monotonic() - start < 3
    assert isinstance(err.value, TimeoutError) and isinstance(err.value, DeviceCrashed)
    assert "emulator-5554" in str(err.value) and "0.6s" in str(err.value) and "'0'" in str(err.value)
    adb.devices[SERIAL].boot_completed = "1"
    assert emu.wait_boot(timeout_s=5, poll_s=0.1) < 1


def test_wait_boot_reports_an_emulator_that_died(adb, tmp_path):
    script, _ = fake_emulator(tmp_path, body="echo 'FATAL: /dev/kvm is not found'; exit 3")
    emu = Emulator("evoray", 5560, emulator_bin=str(script), adb_port=adb.port, log_path=tmp_path / "emu.log")
    emu.start()
    with pytest.raises(DeviceCrashed, match=r"exited with code 3(.|\n)*/dev/kvm is not found"):
        emu.wait_boot(timeout_s=10, poll_s=0.05)


# -- deployment files -----------------------------------------------------------------------------
def test_kuberay_manifest_asks_for_kvm():
    doc = yaml.safe_load((ROOT / "cluster/kuberay/emulator-workers.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    group = next(g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == "emulator-workers")
    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {"kvm": 1}
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 8)
    pod = group["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["privileged"] is True
    kvm = next(v for v in pod["volumes"] if v["name"] == "kvm")
    assert kvm["hostPath"]["path"] == "/dev/kvm"
    assert {"name": "kvm", "mountPath": "/dev/kvm"} in container["volumeMounts"]
    assert "start-emulator.sh" in container["args"][0]


def test_start_script_uses_the_emulator_command_flags():
    script = ROOT / "docker/emulator/start-emulator.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    flags = re.search(r"^FLAGS=\((.*)\)$", text, re.M).group(1).split()
    flags += re.search(r"FLAGS\+=\((.*)\)", text).group(1).split()
    assert flags == emulator_command("a", 5554)[3:7]
    assert '"${FLAGS[@]}" -port "$port"' in text
