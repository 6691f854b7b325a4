"""Read TensorBoard event files back, as TensorBoard does: each record is a length, its CRC, an
``Event`` protobuf and the data's CRC; a ``SessionLog.START`` at step s hides what earlier records
hold from step s on (a resumed run's ``purge_step``)."""
from __future__ import annotations

import struct
from pathlib import Path


def read_scalars(logdir: Path) -> dict[tuple[int, str], float]:
    from tensorboardX.proto import event_pb2
    scalars: dict[tuple[int, str], float] = {}
    files = sorted(Path(logdir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    for path in files:
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                scalars = {k: v for k, v in scalars.items() if k[0] < event.step}
            for value in event.summary.value:
                scalars[(event.step, value.tag)] = value.simple_value
    return scalars
