"""Key numbers exported as Ray metrics (``ray.util.metrics``) so they show in the Ray dashboard
and on the metrics export port (Prometheus): ``heldout/pass@1`` → gauge ``evoray_heldout_pass_at_1``
with tags ``run`` and ``job``."""
from __future__ import annotations

import re


def prometheus_name(metric: str) -> str:
    name = metric.replace("@", "_at_")
    return "evoray_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


class RayMetrics:
    def __init__(self, run: str, job: str):
        self.tags = {"run": run, "job": job}
        self._gauges: dict = {}
        self._events = None
        self.counts: dict[str, int] = {}

    def event(self, kind: str) -> None:
        """Count an event (``evoray_events_total{event=...}``) next to its line in events.jsonl."""
        import ray
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if not ray.is_initialized():
            return
        from ray.util.metrics import Counter
        if self._events is None:
            self._events = Counter("evoray_events", description="evoray run events (events.jsonl)",
                                   tag_keys=("run", "job", "event"))
        self._events.inc(1, tags={**self.tags, "event": kind})

    def export(self, values: dict[str, float]) -> None:
        import ray
        if not ray.is_initialized():
            return
        from ray.util.metrics import Gauge
        for key, value in values.items():
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = self._gauges[key] = Gauge(prometheus_name(key), description=f"evoray {key}",
                                                   tag_keys=("run", "job"))
            gauge.set(float(value), tags=self.tags)
