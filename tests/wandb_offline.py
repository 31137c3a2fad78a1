"""Reading an offline W&B run back, for the tests: the one place that knows the
format of its ``run-<id>.wandb`` transaction log.

W&B offers no public reader for an offline run (``wandb.Api`` reads the server
only), so this parses the log with W&B's own protobuf record type.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

# The .wandb file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of
# chunks, each with a 7-byte header (CRC, length, type); a record spans chunks
# FIRST/MIDDLE/LAST or fits in one FULL chunk.
BLOCK, CHUNK_HEADER, FULL, LAST = 32768, 7, 1, 4


def read_records(path: Path) -> list:
    """Every protobuf record of an offline run's transaction log."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, parts, pos = [], [], 7
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        pos += CHUNK_HEADER
        if kind == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def _key(item) -> str:
    return item.key or item.nested_key[0]


class OfflineRun:
    """What one offline run recorded: run settings, config, history keys, artifacts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        records = read_records(next(folder.glob("run-*.wandb")))
        self.run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        self.config = {u.key: json.loads(u.value_json) for u in self.run.config.update}
        for record in records:
            if record.WhichOneof("record_type") == "config":
                self.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        self.history = {_key(item) for r in records if r.WhichOneof("record_type") == "history"
                        for item in r.history.item}
        self.artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]

    def models(self, used: bool) -> dict:
        """Model artifacts by name: those it declared used, or those it produced."""
        return {a.name: a for a in self.artifacts if a.type == "model" and a.use_after_commit == used}
