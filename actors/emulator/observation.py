"""What the agent and the reward model see before a step: one type for every backend and caller
(the device pool's ``observe``, the episode runner)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

from actors.emulator.uitree import compact_text, parse_hierarchy


@dataclass
class Observation:
    """What the agent and the reward model see before a step."""
    app: str
    xml: str
    text: str                   # compact rendering of the UI tree (the CPU agent's "screenshot")
    screen_id: str              # app + hash of the hierarchy: equal screens share an id
    png: Optional[bytes] = None


def screen_id(app: str, xml: str) -> str:
    return f"{app}#{hashlib.sha256(xml.encode()).hexdigest()[:12]}"


def observe(device) -> Observation:
    xml = device.dump_hierarchy()
    app = device.current_app()
    return Observation(app, xml, compact_text(parse_hierarchy(xml), indices=False), screen_id(app, xml),
                       device.screenshot())
