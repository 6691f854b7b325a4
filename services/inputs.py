"""Input checks a job's ``check`` shares, run before Ray starts: each failure is a ``ConfigError``
naming the key."""
from __future__ import annotations

from services.config import ConfigError


def check_model(name: str, key: str = "model.name") -> str:
    """Resolve ``name`` here, once: a model that cannot load fails now, and the one-off conversion
    of an embedded model happens (and says so) before any actor waits on it."""
    from actors.model_loading import needs_conversion, resolve_model
    if needs_conversion(name):
        print(f"building the embedded model {name} once (~1-7 min) …", flush=True)
    try:
        return resolve_model(name)
    except FileNotFoundError as e:
        raise ConfigError(f"{key}: {e}") from None
