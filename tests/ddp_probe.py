"""What each process of a multi-process test run did, written to ``$MMSENT_PROBE_DIR``.

Imported by the processes of ``tests/test_ddp.py`` (the test puts this folder on
``PYTHONPATH``): a data source that records which process decodes clips, and a
callback that records training ids, validation metrics, checkpoint writes and the
modality selection per rank.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from mmsent.data import RawClipSource


def probe_file(name: str) -> Path:
    return Path(os.environ["MMSENT_PROBE_DIR"]) / name


class CountingSource(RawClipSource):
    """A raw-clip source that notes the process decoding each clip."""

    def load(self, record):
        with probe_file("loads.txt").open("a") as out:
            out.write(f"{os.getpid()}\n")
        return super().load(record)


class RankRecorder(pl.Callback):
    """Records, per rank: training ids per epoch, validation metrics, checkpoint writes, selection."""

    def setup(self, trainer, pl_module, stage):
        self.rank = trainer.global_rank
        self.saves = []
        original = torch.save

        def recording_save(obj, path, *args, **kwargs):
            self.saves.append(str(path))
            return original(obj, path, *args, **kwargs)

        torch.save = recording_save

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with probe_file(f"train-rank{self.rank}-epoch{trainer.current_epoch}.txt").open("a") as out:
            out.write("".join(f"{clip}\n" for clip in batch["id"]))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            probe_file(f"val-rank{self.rank}-epoch{trainer.current_epoch}.json").write_text(json.dumps(metrics))

    def on_fit_end(self, trainer, pl_module):
        selection = next((c for c in trainer.callbacks if type(c).__name__ == "ModalitySelection"), None)
        record = {"saves": self.saves, "world_size": trainer.world_size,
                  "selection": selection.record if selection else None}
        probe_file(f"fit-rank{self.rank}.json").write_text(json.dumps(record, default=str))
