"""Reading an offline W&B run file (``offline-run-*/run-<id>.wandb``) without a W&B server.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of chunks, each
``crc32 (4) | length (2, little endian) | type (1: full, 2: first, 3: middle, 4: last) | data``; the data of a
record are a ``wandb.proto.wandb_internal_pb2.Record``. The local sweep reads each trial's metric from here.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from more_lightning.errors import SettingError

HEADER = 7
BLOCK = 32768
CHUNK_HEADER = 7


def run_records(path: str | Path) -> Iterator:
    """The protobuf records of a run file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise SettingError(f"{path} is not a W&B run file")
    position, pending = HEADER, b""
    while position + CHUNK_HEADER <= len(data):
        if BLOCK - position % BLOCK < CHUNK_HEADER:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + CHUNK_HEADER])
        pending += data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def run_history(path: str | Path) -> list[dict]:
    """Every ``history`` row of a run (the metrics of each logged step), values decoded from JSON."""
    rows = []
    for record in run_records(path):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return rows


def last_value(path: str | Path, metric: str) -> float | None:
    """The last logged value of ``metric`` (what W&B's summary, and so a sweep, reports)."""
    values = [row[metric] for row in run_history(path) if isinstance(row.get(metric), (int, float))]
    return float(values[-1]) if values else None
