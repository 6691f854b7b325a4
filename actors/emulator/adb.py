"""The adb backend: a real Android emulator (or device) behind the ``Device`` protocol.

``Emulator`` launches one AVD headless and talks to its console (snapshot load, kill);
``AdbDevice`` drives a device through the adb server with adbutils (``input``, ``screencap``,
``uiautomator dump``). Any transport failure becomes ``DeviceCrashed`` so the pool restarts the
device; only app-level mistakes (unknown app, untypeable text) are ``DeviceError`` step errors.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import adbutils
from adbutils.errors import AdbError

from actors.emulator.device import BUTTONS, DeviceCrashed, DeviceError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEYCODES = {"back": 4, "home": 3, "enter": 66}
DUMP_PATH = "/data/local/tmp/uidump.xml"
# Package names on the google_apis x86_64 system images; a pool can override or extend them.
DEFAULT_APPS = {
    "settings": "com.android.settings",
    "contacts": "com.android.contacts",
    "clock": "com.google.android.deskclock",
    "chrome": "com.android.chrome",
    "messages": "com.google.android.apps.messaging",
    "camera": "com.android.camera2",
    "phone": "com.android.dialer",
    "files": "com.google.android.documentsui",
    "calendar": "com.google.android.calendar",
    "maps": "com.google.android.apps.maps",
    "youtube": "com.google.android.youtube",
    "gmail": "com.google.android.gm",
    "photos": "com.google.android.apps.photos",
}
LAUNCHERS = {"com.google.android.apps.nexuslauncher", "com.android.launcher3", "com.android.launcher"}
# socket errors and timeouts are OSErrors; adbutils may run `adb start-server` (SubprocessError)
_TRANSPORT_ERRORS = (AdbError, OSError, EOFError, subprocess.SubprocessError)


class BootTimeout(DeviceCrashed, TimeoutError):
    """The emulator did not report ``sys.boot_completed=1`` in time."""


class ConsoleError(RuntimeError):
    """The emulator console refused a command (its ``KO:`` reply is the message)."""


def emulator_command(avd: str, port: int, emulator_bin: str = "emulator", extra=()) -> list[str]:
    """The documented headless launch line; ``-read-only`` lets many instances share one AVD."""
    if not (isinstance(port, int) and 5554 <= port <= 5682 and port % 2 == 0):
        raise ValueError(f"emulator console port must be even and in 5554..5682, got {port!r}")
    return [emulator_bin, "-avd", avd, "-no-window", "-no-audio", "-no-boot-anim", "-read-only",
            "-port", str(port), *extra]


def _boot_completed(client: adbutils.AdbClient, serial: str, timeout_s: float) -> str:
    """One ``getprop sys.boot_completed`` probe (raises adbutils/socket errors)."""
    return client.device(serial).shell("getprop sys.boot_completed", timeout=timeout_s).strip()


class Emulator:
    """One headless AVD process on console port ``port`` (adb serial ``emulator-{port}``).

    Constructing it launches nothing: ``start()`` does, so a handle can also drive the console of
    an emulator someone else launched (the container's start script).
    """

    def __init__(self, avd: str, port: int, emulator_bin: str = "emulator", extra=(),
                 log_path: str | Path | None = None, adb_host: str = "127.0.0.1",
                 adb_port: int = 5037, console_port: int | None = None,
                 token_path: str | Path | None = None):
        self.command = emulator_command(avd, port, emulator_bin, extra)
        self.avd, self.port, self.serial = avd, port, f"emulator-{port}"
        self.log_path = Path(log_path or Path(tempfile.gettempdir()) / f"evoray-emulator-{port}.log")
        self.console_port = console_port or port
        self.token_path = Path(token_path or Path.home() / ".emulator_console_auth_token")
        self._adb = adbutils.AdbClient(host=adb_host, port=adb_port)
        self.process: subprocess.Popen | None = None

    def start(self) -> "Emulator":
        """Launch in its own process group (so ``stop`` takes qemu children too), logging to a file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                raise DeviceCrashed(f"{self.serial}: cannot launch {self.command[0]!r}: {e}") from e
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_boot(self, timeout_s: float = 300, poll_s: float = 2) -> float:
        """Poll ``sys.boot_completed`` until "1"; returns seconds waited. Boots of minutes are normal."""
        start, last = time.monotonic(), None
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise DeviceCrashed(f"{self.serial}: emulator exited with code {self.process.returncode}"
                                    f" while booting; log {self.log_path}:\n{self.log_tail()}")
            try:
                last = _boot_completed(self._adb, self.serial, max(poll_s, 1.0))
                if last == "1":
                    return time.monotonic() - start
            except _TRANSPORT_ERRORS as e:  # not registered with adb yet, or adbd restarting
                last = f"unreachable ({e})"
            if time.monotonic() - start + poll_s > timeout_s:
                raise BootTimeout(f"{self.serial} did not finish booting within {timeout_s}s "
                                  f"(last sys.boot_completed: {last!r})")
            time.sleep(poll_s)

    def console(self, command: str, timeout_s: float = 30) -> list[str]:
        """Run one console command; returns its output lines; ``KO:`` raises ``ConsoleError``."""
        try:
            with socket.create_connection(("127.0.0.1", self.console_port), timeout=timeout_s) as s:
                reader = s.makefile("rb")
                banner = _read_reply(reader)
                token = self.token_path.read_text().strip() if self.token_path.is_file() else ""
                if token:
                    _send(s, f"auth {token}")
                    _read_reply(reader)
                elif any("Authentication required" in line for line in banner):
                    raise ConsoleError(f"{self.serial}: console wants auth; no token at {self.token_path}")
                _send(s, command)
                return _read_reply(reader, eof_ok=command == "kill")
        except OSError as e:
            raise DeviceCrashed(f"{self.serial}: console on port {self.console_port} failed during "
                                f"{command!r}: {e}") from e

    def load_snapshot(self, name: str) -> None:
        """Rewind the running emulator to snapshot ``name`` (seconds, versus minutes for a boot)."""
        self.console(f"avd snapshot load {name}")

    def stop(self, grace_s: float = 10) -> None:
        """Ask the console to kill the emulator, then make sure the process group is gone."""
        try:
            self.console("kill", timeout_s=5)
        except (ConsoleError, DeviceCrashed):
            pass
        if self.process is None:
            return
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.process.pid, sig)
                    self.process.wait(grace_s)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.process = None


def _send(sock: socket.socket, line: str) -> None:
    sock.sendall(line.encode() + b"\r\n")


def _read_reply(reader, eof_ok: bool = False) -> list[str]:
    """Lines up to the console's ``OK``/``OK: ...`` terminator; ``KO: ...`` raises."""
    lines = []
    while True:
        raw = reader.readline()
        if not raw:
            if eof_ok:
                return lines
            raise ConnectionError("emulator console closed the connection")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line == "OK" or line.startswith("OK:"):
            return lines
        if line.startswith("KO"):
            raise ConsoleError(line)
        lines.append(line)


def input_text_commands(text: str) -> list[str]:
    """Shell lines that type ``text``: spaces as ``%s`` (input's only space), one shell-quoted
    word each, newlines as ENTER. ``input text`` types ASCII only, so anything else is refused."""
    if not all(c == "\n" or (c.isascii() and c.isprintable()) for c in text):
        raise DeviceError("bad_input", f"`input text` can type printable ASCII only: {text!r}")
    commands = []
    for i, line in enumerate(text.split("\n")):
        if i:
            commands.append(f"input keyevent {KEYCODES['enter']}")
        if line:
            commands.append("input text " + shlex.quote(line.replace(" ", "%s")))
    return commands


class AdbDevice:
    """A device behind an adb server; owns ``emulator`` (restarts and stops it) when given one."""

    def __init__(self, serial: str, adb_host: str = "127.0.0.1", adb_port: int = 5037,
                 emulator: Emulator | None = None, snapshot: str = "evoray-clean",
                 apps: dict[str, str] | None = None, command_timeout_s: float = 60,
                 boot_timeout_s: float = 300, poll_s: float = 2):
        self.serial, self.emulator, self.snapshot = serial, emulator, snapshot
        self.apps = {**DEFAULT_APPS, **{k.lower(): v for k, v in (apps or {}).items()}}
        self.command_timeout_s, self.boot_timeout_s, self.poll_s = command_timeout_s, boot_timeout_s, poll_s
        self._client = adbutils.AdbClient(host=adb_host, port=adb_port)
        self._device = self._client.device(serial)
        self._size: tuple[int, int] | None = None

    # -- transport ------------------------------------------------------------------------------
    def _shell(self, command: str, encoding: str | None = "utf-8", timeout_s: float | None = None):
        """Every device call goes through here, so every transport failure is a crash."""
        try:
            return self._device.shell(command, encoding=encoding, timeout=timeout_s or self.command_timeout_s)
        except _TRANSPORT_ERRORS as e:
            raise DeviceCrashed(f"{self.serial}: adb shell {command!r} failed: {e!r}") from e

    # -- observation ----------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        """(width, height) from ``wm size`` (an override wins over the physical size); cached."""
        if self._size is None:
            out = self._shell("wm size")
            m = re.search(r"Override size: (\d+)x(\d+)", out) or re.search(r"Physical size: (\d+)x(\d+)", out)
            if not m:
                raise DeviceCrashed(f"{self.serial}: unexpected `wm size` output {out!r}")
            self._size = (int(m.group(1)), int(m.group(2)))
        return self._size

    def screenshot(self) -> bytes:
        png = self._shell("screencap -p", encoding=None)
        if not png.startswith(PNG_MAGIC):
            raise DeviceCrashed(f"{self.serial}: screencap -p returned no PNG ({png[:60]!r})")
        return png

    def dump_hierarchy(self, attempts: int = 3) -> str:
        """uiautomator dump to a file, read back over sync. An animated screen can keep uiautomator
        from idling: that is retried, then a step error, not a crash."""
        out = ""
        for attempt in range(attempts):
            out = self._shell(f"rm -f {DUMP_PATH}; uiautomator dump {DUMP_PATH} && echo success")
            if "success" in out and "ERROR" not in out:
                try:
                    xml = self._device.sync.read_text(DUMP_PATH)
                except _TRANSPORT_ERRORS as e:
                    raise DeviceCrashed(f"{self.serial}: reading {DUMP_PATH} failed: {e!r}") from e
                if xml.lstrip().startswith("<?xml"):
                    return xml
                out = xml[:200]
            time.sleep(0.5 * (attempt + 1))
        raise DeviceError("hierarchy_unavailable", f"uiautomator dump failed {attempts}x: {out.strip()}")

    def current_app(self) -> str:
        """The focused window's package as an app name ("launcher" on home, the package if unnamed)."""
        out = self._shell("dumpsys window")
        m = (re.search(r"mCurrentFocus=Window\{[^}]*?\s([\w.]+)/[^\s}]+\}", out)
             or re.search(r"mFocusedApp=.*?ActivityRecord\{[^}]*?\s([\w.]+)/", out))
        if not m:
            return "unknown"
        package = m.group(1)
        if package in LAUNCHERS:
            return "launcher"
        return next((name for name, pkg in self.apps.items() if pkg == package), package)

    # -- actions --------------------------------------------------------------------------------
    def tap(self, x: int, y: int) -> None:
        self._shell(f"input tap {int(x)} {int(y)}")

    def long_press(self, x: int, y: int, seconds: float) -> None:
        """A swipe that does not move is a press held for its duration."""
        self.swipe(x, y, x, y, seconds)

    def swipe(self, x1: int, y1: int, x2: int, y2: int, seconds: float = 0.3) -> None:
        self._shell(f"input swipe {int(x1)} {int(y1)} {int(x2)} {int(y2)} {max(1, round(seconds * 1000))}")

    def type_text(self, text: str) -> None:
        """ASCII only; a literal "%s" in ``text`` types a space (``input text`` has no escape for it)."""
        for command in input_text_commands(text):
            self._shell(command)

    def press(self, button: str) -> None:
        if button not in BUTTONS:
            raise DeviceError("bad_input", f"unknown button {button!r}; one of {', '.join(BUTTONS)}")
        self._shell(f"input keyevent {KEYCODES[button]}")

    def open_app(self, name: str) -> None:
        """Launch by name via monkey's LAUNCHER intent (no activity name needed)."""
        package = self.apps.get(name.strip().lower())
        if package is None:
            known = ", ".join(sorted(self.apps))
            raise DeviceError("unknown_app", f"{name!r} is not a known app; known: {known}")
        out = self._shell(f"monkey -p {package} -c android.intent.category.LAUNCHER 1")
        if "No activities found" in out or "monkey aborted" in out:
            raise DeviceError("unknown_app", f"{name!r} ({package}) is not installed on {self.serial}")

    def wait(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    # -- lifecycle ------------------------------------------------------------------------------
    def healthy(self, timeout_s: float = 5) -> bool:
        try:
            return _boot_completed(self._client, self.serial, timeout_s) == "1"
        except Exception:  # noqa: BLE001 - a probe answers, it never raises
            return False

    def reset(self) -> None:
        """Back to the clean snapshot, on the home screen. A ``-read-only`` emulator refuses console
        snapshot loads (it discards all changes on exit instead), so there a relaunch is the reset."""
        if self.emulator is not None:
            try:
                self.emulator.load_snapshot(self.snapshot)
                self._wait_booted(self.boot_timeout_s)
            except ConsoleError as e:
                if "read-only" not in str(e):
                    raise DeviceCrashed(f"{self.serial}: snapshot {self.snapshot!r} load refused: {e}") from e
                self.restart()
        self._shell(f"input keyevent {KEYCODES['home']}")

    def restart(self) -> None:
        """Relaunch the owned emulator, else ``adb reboot``; either way wait for a full boot."""
        self._size = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator.start()
            self.emulator.wait_boot(self.boot_timeout_s, self.poll_s)
            return
        try:
            self._device.shell("reboot", timeout=self.command_timeout_s)
        except _TRANSPORT_ERRORS:
            pass  # adbd drops the connection as the device goes down
        deadline = time.monotonic() + 60
        while self.healthy(self.poll_s) and time.monotonic() < deadline:  # wait until it went down
            time.sleep(self.poll_s)
        self._wait_booted(self.boot_timeout_s)

    def _wait_booted(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy(max(self.poll_s, 1.0)):
            if time.monotonic() > deadline:
                raise BootTimeout(f"{self.serial} did not report sys.boot_completed=1 within {timeout_s}s")
            time.sleep(self.poll_s)

    def close(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()

    def __repr__(self) -> str:
        return f"AdbDevice({self.serial!r})"
