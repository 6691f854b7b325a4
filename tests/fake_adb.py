"""A fake adb server and a fake emulator console, speaking the real wire protocols on localhost.

The adb side implements the smart-socket host protocol as adbutils 2.12 uses it: 4-hex-digit
length-prefixed requests, ``OKAY`` / ``FAIL``+len+message replies, ``host:version``,
``host:devices(-l)``, ``host:tport:serial:S`` (adb >= 41; answers OKAY + an 8-byte transport id)
and ``host:transport:S`` (older), ``host-serial:S:get-state``, then on the device transport
``shell:CMD`` (raw output, then close), ``shell,v2:CMD`` (framed) and ``sync:`` (STAT, RECV).
Shell commands are recorded per serial and answered by a tiny interpreter over a scripted device
state (``;`` and ``&&`` chains, ``getprop``, ``wm size``, ``screencap -p``, ``uiautomator dump``,
``dumpsys window``, ``monkey``, ``input``, ``rm``, ``cat``, ``echo``, ``reboot``).
"""
from __future__ import annotations

import io
import re
import socketserver
import struct
import threading
from dataclasses import dataclass, field

from PIL import Image

CANNED_XML = ('<?xml version=\'1.0\' encoding=\'UTF-8\' standalone=\'yes\' ?><hierarchy rotation="0">'
              '<node index="0" text="Settings" resource-id="" class="android.widget.TextView" '
              'package="com.android.settings" clickable="true" bounds="[0,0][1080,200]" /></hierarchy>')
LAUNCHER = "com.google.android.apps.nexuslauncher"
INSTALLED = {"com.android.settings", "com.android.contacts", "com.google.android.deskclock",
             "com.android.chrome", "com.google.android.apps.messaging", "com.android.camera2", LAUNCHER}


def tiny_png(size=(4, 8), color=(30, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class FakeDevice:
    """The scripted state one serial answers from; tests mutate it directly."""
    serial: str
    state: str = "device"               # "device", "offline" (FAIL device offline), "drop" (close)
    boot_completed: str = "1"
    boot_after_polls: int = 0           # getprop polls answering "0" before "1" (a reboot)
    size: tuple[int, int] = (1080, 2400)
    focus: str = LAUNCHER
    installed: set = field(default_factory=lambda: set(INSTALLED))
    files: dict = field(default_factory=dict)
    png: bytes = field(default_factory=tiny_png)
    xml: str = CANNED_XML
    dump_error: str = ""                # e.g. "ERROR: could not get idle state."
    commands: list = field(default_factory=list)

    def run(self, command: str) -> bytes:
        """Interpret a ``;``/``&&`` chain the way ``sh -c`` would, enough for what adbutils sends."""
        out = b""
        for statement in command.split(";"):
            for part in statement.split("&&"):
                text, rc = self._one(part.strip())
                out += text
                if rc:
                    break
        return out

    def _one(self, cmd: str) -> tuple[bytes, int]:
        if not cmd:
            return b"", 0
        if cmd == "getprop sys.boot_completed":
            if self.boot_after_polls > 0:
                self.boot_after_polls -= 1
                return b"0\n", 0
            return self.boot_completed.encode() + b"\n", 0
        if cmd == "wm size":
            return f"Physical size: {self.size[0]}x{self.size[1]}\n".encode(), 0
        if cmd == "screencap -p":
            return self.png, 0
        if m := re.fullmatch(r"uiautomator dump (\S+)", cmd):
            if self.dump_error:
                return self.dump_error.encode() + b"\n", 1
            self.files[m.group(1)] = self.xml.encode()
            return f"UI hierchary dumped to: {m.group(1)}\n".encode(), 0
        if m := re.fullmatch(r"rm -f (\S+)", cmd):
            self.files.pop(m.group(1), None)
            return b"", 0
        if m := re.fullmatch(r"cat (\S+)", cmd):
            if m.group(1) in self.files:
                return self.files[m.group(1)], 0
            return f"cat: {m.group(1)}: No such file or directory\n".encode(), 1
        if cmd.startswith("echo"):
            return cmd[5:].encode() + b"\n", 0
        if cmd.startswith("dumpsys window"):
            return (f"  mCurrentFocus=Window{{1a2b3c u0 {self.focus}/{self.focus}.Main}}\n"
                    f"  mFocusedApp=ActivityRecord{{4d5e u0 {self.focus}/.Main t7}}\n").encode(), 0
        if m := re.fullmatch(r"monkey -p (\S+) -c android.intent.category.LAUNCHER 1", cmd):
            if m.group(1) not in self.installed:
                return b"  bash arg: -p\n** No activities found to run, monkey aborted.\n", 252
            self.focus = m.group(1)
            return b"Events injected: 1\n", 0
        if cmd.startswith("input "):
            if cmd == "input keyevent 3":
                self.focus = LAUNCHER
            return b"", 0
        if cmd == "reboot":
            self.boot_after_polls = max(self.boot_after_polls, 1)
            return b"", 0
        return f"/system/bin/sh: {cmd.split()[0]}: not found\n".encode(), 127


class FakeAdbServer:
    """Serves from construction until ``close()`` (or the ``with`` block's end); ``port`` is ephemeral."""

    def __init__(self, version: int = 41):
        self.version = version
        self.devices: dict[str, FakeDevice] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    server._serve(self.request)
                except (ConnectionError, OSError, EOFError):
                    pass

        self._tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._tcp.daemon_threads = True
        self.port = self._tcp.server_address[1]
        threading.Thread(target=self._tcp.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._tcp.shutdown()
        self._tcp.server_close()

    def add(self, serial: str, **state) -> FakeDevice:
        self.devices[serial] = FakeDevice(serial, **state)
        return self.devices[serial]

    def crash(self, serial: str, how: str = "offline") -> None:
        """``offline``: transports answer FAIL "device offline"; ``drop``: the socket just closes."""
        self.devices[serial].state = how

    def commands(self, serial: str) -> list[str]:
        with self.lock:
            return list(self.devices[serial].commands)

    # -- wire -----------------------------------------------------------------------------------
    def _serve(self, conn) -> None:
        reader = conn.makefile("rb")
        device = None
        while True:
            request = _read_request(reader)
            if request is None:
                return
            with self.lock:
                self.requests.append(request)
            if device is None:
                device, done = self._host(conn, request)
                if done:
                    return
            else:
                self._service(conn, reader, device, request)
                return

    def _host(self, conn, req: str):
        """Answer a host request; returns (device the connection now talks to, finished?)."""
        if req == "host:version":
            _okay(conn, f"{self.version:04x}")
            return None, True
        if req in ("host:devices", "host:devices-l"):
            long = req.endswith("-l")
            lines = [f"{d.serial}\t{'offline' if d.state != 'device' else 'device'}"
                     + (f" product:sdk_gphone64_x86_64 model:sdk transport_id:{i + 1}" if long else "")
                     for i, d in enumerate(self.devices.values())]
            _okay(conn, "".join(line + "\n" for line in lines))
            return None, True
        m = (re.fullmatch(r"host:tport:serial:(.+)", req) or re.fullmatch(r"host:transport:(.+)", req)
             or re.fullmatch(r"host-serial:([^:]+(?::\d+)?):(get-state|get-serialno|features)", req))
        if not m:
            _fail(conn, f"unknown host service '{req}'")
            return None, True
        device = self.devices.get(m.group(1))
        if device is None:
            _fail(conn, f"device '{m.group(1)}' not found")
            return None, True
        if device.state == "drop":
            return None, True
        if device.state != "device":
            _fail(conn, "device offline")
            return None, True
        if req.startswith("host-serial:"):
            answer = {"get-state": "device", "get-serialno": device.serial, "features": "shell_v2,cmd"}
            _okay(conn, answer[m.group(2)])
            return None, True
        conn.sendall(b"OKAY" + (struct.pack("<Q", 1) if req.startswith("host:tport:") else b""))
        return device, False

    def _service(self, conn, reader, device: FakeDevice, req: str) -> None:
        if req.startswith("shell:") or req.startswith("shell,v2:"):
            command = req.split(":", 1)[1]
            with self.lock:
                device.commands.append(command)
                out = device.run(command)
            conn.sendall(b"OKAY")
            if req.startswith("shell,v2:"):
                out = b"\x01" + struct.pack("<I", len(out)) + out + b"\x03" + struct.pack("<I", 1) + b"\x00"
            conn.sendall(out)
        elif req == "sync:":
            conn.sendall(b"OKAY")
            self._sync(conn, reader, device)
        else:
            _fail(conn, f"unknown device service '{req}'")

    def _sync(self, conn, reader, device: FakeDevice) -> None:
        while True:
            head = reader.read(8)
            if len(head) < 8:
                return
            verb, length = head[:4].decode(), struct.unpack("<I", head[4:])[0]
            path = reader.read(length).decode()
            data = device.files.get(path)
            if verb == "STAT":
                mode, size = (0o100644, len(data)) if data is not None else (0, 0)
                conn.sendall(b"STAT" + struct.pack("<III", mode, size, 1_700_000_000 if data else 0))
            elif verb == "RECV" and data is None:
                msg = b"No such file or directory"
                conn.sendall(b"FAIL" + struct.pack("<I", len(msg)) + msg)
            elif verb == "RECV":
                for i in range(0, len(data), 65536):
                    chunk = data[i:i + 65536]
                    conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                conn.sendall(b"DONE" + struct.pack("<I", 0))
            else:
                return


def _read_request(reader) -> str | None:
    size = reader.read(4)
    if len(size) < 4:
        return None
    return reader.read(int(size, 16)).decode()


def _okay(conn, payload: str) -> None:
    data = payload.encode()
    conn.sendall(b"OKAY" + f"{len(data):04x}".encode() + data)


def _fail(conn, message: str) -> None:
    data = message.encode()
    conn.sendall(b"FAIL" + f"{len(data):04x}".encode() + data)


class FakeConsole:
    """The emulator console (telnet-style, line based): banner, optional auth, snapshot load, kill."""

    def __init__(self, token: str | None = None, read_only: bool = False, snapshots=("evoray-clean",),
                 on_load=None, on_kill=None):
        self.token, self.read_only, self.snapshots = token, read_only, set(snapshots)
        self.on_load, self.on_kill = on_load, on_kill
        self.commands: list[str] = []
        self.killed = False
        console = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    console._serve(self.rfile, self.wfile)
                except (ConnectionError, OSError):
                    pass

        self._tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._tcp.daemon_threads = True
        self.port = self._tcp.server_address[1]
        threading.Thread(target=self._tcp.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self._tcp.shutdown()
        self._tcp.server_close()

    def _serve(self, rfile, wfile) -> None:
        authed = self.token is None
        if authed:
            wfile.write(b"Android Console: type 'help' for a list of commands\r\nOK\r\n")
        else:
            wfile.write(b"Android Console: Authentication required\r\nAndroid Console: type 'auth "
                        b"<auth_token>' to authenticate\r\nAndroid Console: you can find your "
                        b"<auth_token> in \r\n'/root/.emulator_console_auth_token'\r\nOK\r\n")
        for raw in rfile:
            line = raw.decode().strip()
            self.commands.append(line)
            if line.startswith("auth "):
                authed = line[5:] == self.token
                wfile.write(b"Android Console: type 'help' for a list of commands\r\nOK\r\n" if authed else
                            b"KO: authentication token does not match ~/.emulator_console_auth_token\r\n")
            elif not authed:
                wfile.write(b"KO: unknown command, try 'help'\r\n")
            elif line == "kill":
                self.killed = True
                if self.on_kill:
                    self.on_kill()
                wfile.write(b"OK: killing emulator, bye bye\r\n")
                return
            elif m := re.fullmatch(r"avd snapshot load (\S+)", line):
                wfile.write(self._load(m.group(1)))
            else:
                wfile.write(b"KO: unknown command, try 'help'\r\n")

    def _load(self, name: str) -> bytes:
        if self.read_only:
            return b'KO: Snapshot load is disabled because "-read-only" was specified\r\n'
        if name not in self.snapshots:
            return f"KO: snapshot '{name}' does not exist\r\n".encode()
        if self.on_load:
            self.on_load(name)
        return b"OK\r\n"
