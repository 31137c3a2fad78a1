"""What each process of a multi-process test run did, written to ``$MMSENT_PROBE_DIR``.

Imported by the processes of ``tests/test_ddp.py`` (the test puts this folder on
``PYTHONPATH``): a data source that records which process decodes clips, and a
callback that records training ids, validation and test metrics, checkpoint writes,
the modality selection (rank 0 alone, after the fit) and the weights at the end of the fit,
per rank.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from mmsent.data import RawClipSource
from mmsent.selection import step as selection


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
        if stage != "fit":  # a validate or test in the test's own process must leave torch.save alone
            return
        checkpoint_io = trainer.strategy.checkpoint_io
        write_checkpoint, write_file = checkpoint_io.save_checkpoint, torch.save

        def recording_checkpoint(checkpoint, path, *args, **kwargs):
            self.saves.append(str(path))
            return write_checkpoint(checkpoint, path, *args, **kwargs)

        def recording_file(obj, target, *args, **kwargs):
            if isinstance(target, (str, os.PathLike)):  # a checkpoint I/O's own stream is counted above
                self.saves.append(str(target))
            return write_file(obj, target, *args, **kwargs)

        def recording_selected(obj, target, *args, **kwargs):
            # The selection runs after the fit: its file and record amend what the fit wrote.
            selection.atomic_torch_save = write_selected
            self.saves.append(str(target))
            self.fit_record.update(saves=self.saves, selection=obj["mmsent"]["modality_selection"])
            probe_file(f"fit-rank{self.rank}.json").write_text(json.dumps(self.fit_record, default=str))
            return write_selected(obj, target, *args, **kwargs)

        checkpoint_io.save_checkpoint = recording_checkpoint
        torch.save = recording_file
        write_selected = selection.atomic_torch_save
        selection.atomic_torch_save = recording_selected

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with probe_file(f"train-rank{self.rank}-epoch{trainer.current_epoch}.txt").open("a") as out:
            out.write("".join(f"{clip}\n" for clip in batch["id"]))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            probe_file(f"val-rank{self.rank}-epoch{trainer.current_epoch}.json").write_text(json.dumps(metrics))

    def on_test_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        probe_file(f"test-rank{trainer.global_rank}.json").write_text(json.dumps(metrics))

    def on_fit_end(self, trainer, pl_module):
        weights = hashlib.sha1()
        for value in pl_module.state_dict().values():
            weights.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.fit_record = {"saves": self.saves, "world_size": trainer.world_size, "weights": weights.hexdigest(),
                           "selection": None}
        probe_file(f"fit-rank{self.rank}.json").write_text(json.dumps(self.fit_record, default=str))
