"""Build one Device from a picklable spec, inside whichever process will own it.

The pool ships a ``DeviceSpec`` (not a device) to each Ray actor, because a device holds a live
connection (an adb socket, an emulator process) that cannot cross process boundaries; the actor
calls ``make_device`` once it is placed. Backend modules are imported lazily so a process only
needs the dependencies of the backend it actually runs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from actors.emulator.device import Device

BUILTIN = {"simulated": "actors.emulator.simulated", "adb": "actors.emulator.adb"}
EMULATOR_BASE_PORT = 5554   # emulator console ports go 5554, 5556, ... (adb takes the odd one)


@dataclass
class DeviceSpec:
    """Which backend to build and its constructor options.

    ``backend``: "simulated", "adb", or a dotted "package.module:Class" for a custom device
    (tests, new backends) built as ``Class(serial=..., **options)``.
    """
    backend: str
    options: dict[str, Any] = field(default_factory=dict)


def make_device(spec: DeviceSpec, index: int) -> Device:
    """The ``index``-th device of a pool built from ``spec`` (index picks serial / port)."""
    if spec.backend == "simulated":
        from actors.emulator.simulated import SimulatedDevice
        return SimulatedDevice(serial=f"sim-{index}", **spec.options)
    if spec.backend == "adb":
        return _make_adb(dict(spec.options), index)
    cls = _import_class(spec.backend)
    return cls(serial=f"{cls.__name__.lower()}-{index}", **spec.options)


def check_backend(backend: str) -> None:
    """Fail early (ValueError) on a backend that ``make_device`` could not build, before any
    actor starts: unknown names, and modules missing their dependencies (adbutils for adb)."""
    if backend not in BUILTIN:
        _import_class(backend)
        return
    try:
        importlib.import_module(BUILTIN[backend])
    except ImportError as e:
        raise ValueError(f"device backend {backend!r} cannot be imported: {e}") from e


def _make_adb(options: dict[str, Any], index: int) -> Device:
    """An adb device: the ``index``-th of ``serials`` (devices already running), or a freshly
    launched emulator of ``avd`` on its own console port so pool members never share a port."""
    from actors.emulator import adb

    if "avd" in options:   # emulator_options go to Emulator (emulator_bin, extra, log_path...)
        emulator = adb.Emulator(options.pop("avd"), port=EMULATOR_BASE_PORT + 2 * index,
                                **options.pop("emulator_options", {}))
        try:
            emulator.start().wait_boot(options.get("boot_timeout_s", 300))
        except BaseException:   # a half-booted emulator must not outlive the failed build
            emulator.stop()
            raise
        return adb.AdbDevice(serial=emulator.serial, emulator=emulator, **options)
    serials = options.pop("serials", None)
    if not serials:
        raise ValueError("adb backend needs options['serials'] (running devices) or "
                         "options['avd'] (emulators to launch)")
    if index >= len(serials):
        raise ValueError(f"adb backend: device {index} requested but only {len(serials)} serials "
                         f"given ({serials})")
    return adb.AdbDevice(serial=serials[index], **options)


def _import_class(backend: str) -> type:
    """The class a "package.module:Class" backend names, so new backends need no edit here."""
    module_name, _, class_name = backend.partition(":")
    if not (module_name and class_name):
        raise ValueError(f"unknown device backend {backend!r}: expected "
                         f"{' or '.join(map(repr, BUILTIN))} or 'package.module:Class'")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"device backend {backend!r} cannot be imported: {e}") from e
