"""Faults and bad input: atomic checkpoints, exact resume, safe loading, locks,
configs checked before any work, failed stages recorded, short errors."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import yaml
from conftest import CONF, data_args
from test_pipeline import manifest, write_pipeline

from mmsent.callbacks.random_state import RandomState
from mmsent.cli import build_cli
from mmsent.data import RawClipSource
from mmsent.data.cache import cache_key, prepare
from mmsent.data.sources import read_label_table
from mmsent.errors import ConfigError
from mmsent.main import main
from mmsent.optim import build_param_groups
from mmsent.pipeline import run
from mmsent.pipeline.lock import LOCK_FILE, RunLock
from mmsent.pipeline.runner import resume_checkpoint
from mmsent.tasks.checkpoint_io import AtomicCheckpointIO


class Payload:
    """Pickled, it touches a marker file when unpickled: a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "loops": {}, "payload": Payload(marker)}, path)
    return path


# 1. Atomic checkpoints, and resuming past an unreadable last.ckpt.

def test_a_checkpoint_write_cut_short_leaves_the_previous_one_intact(tiny_data_args, tmp_path, monkeypatch):
    audio = str(CONF.parent.parent / "pipelines" / "quickstart" / "2_audio.yaml")
    trainer = build_cli([*tiny_data_args, "-c", audio], run=False).trainer
    io = trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO), "every mmsent fit writes checkpoints atomically"
    assert any(isinstance(callback, RandomState) for callback in trainer.callbacks)
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)
    real_save = torch.save

    def disk_full(obj, stream, *args, **kwargs):
        real_save(obj, stream, *args, **kwargs)
        stream.truncate(10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=rf"writing checkpoint {path} failed: No space left on device"):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.glob("*ckpt*")] == ["last.ckpt"], "no temporary file is left"


def test_a_resume_skips_an_unreadable_last_checkpoint_for_the_newest_readable_one(tmp_path, capsys):
    folder = tmp_path / "out" / "fusion" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"loops": {}, "epoch": 0}, folder / "best-epoch000.ckpt")
    torch.save({"loops": {}, "epoch": 1}, folder / "best-epoch001.ckpt")
    os.utime(folder / "best-epoch000.ckpt", (1, 1))
    (folder / "last.ckpt").write_bytes((folder / "best-epoch001.ckpt").read_bytes()[:100])
    pipeline = SimpleNamespace(output_dir=tmp_path / "out")
    stage = SimpleNamespace(name="fusion")
    assert resume_checkpoint(pipeline, stage, {"status": "running"}) == str(folder / "best-epoch001.ckpt")
    said = capsys.readouterr().out
    assert f"{folder / 'last.ckpt'} is unreadable, truncated or corrupt" in said
    assert "the newest readable checkpoint" in said
    assert resume_checkpoint(pipeline, stage, {"status": "done"}) is None


# 2 and 6. Killed in stage 4 and resumed: the same figures; the failure is recorded.

class Crash(RuntimeError):
    """Raised inside the fusion stage to kill it after an epoch's checkpoint."""


def test_a_stage_killed_and_resumed_ends_with_the_figures_of_one_never_killed(
        tiny_raw, tiny_cache, tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
        write_pipeline(folder, tiny_raw, tiny_cache, fusion_epochs=3, with_video=False)
    run(whole / "pipeline.yaml")
    # The same unimodal stages, handed over as finished, so only stages 4 and 5 run again.
    shutil.copytree(whole / "out", killed / "out")
    for name in ("fusion", "finetune"):
        shutil.rmtree(killed / "out" / name)
    record = manifest(killed)
    for name in ("fusion", "finetune"):
        del record["stages"][name]
    (killed / "out" / "manifest.json").write_text(json.dumps(record))

    def crash_at_epoch_two(self, trainer, pl_module):
        if trainer.current_epoch == 2 and Path(trainer.default_root_dir).name == "fusion":
            raise Crash("killed in epoch 2 of the fusion stage")

    monkeypatch.setattr(RandomState, "on_train_epoch_start", crash_at_epoch_two, raising=False)
    with pytest.raises(Crash):
        run(killed / "pipeline.yaml")
    failed = manifest(killed)["stages"]["fusion"]
    assert failed["status"] == "failed"
    assert failed["error"] == "Crash: killed in epoch 2 of the fusion stage"
    assert failed["resume_command"] == f"mmsent pipeline run {killed / 'pipeline.yaml'}"
    assert "finetune" not in manifest(killed)["stages"]
    monkeypatch.undo()

    run(killed / "pipeline.yaml")
    resumed = manifest(killed)["stages"]
    assert resumed["fusion"]["resumed_from"] == str(killed / "out" / "fusion" / "checkpoints" / "last.ckpt")
    assert "error" not in resumed["fusion"]
    expected = json.loads((whole / "out" / "report.json").read_text())
    got = json.loads((killed / "out" / "report.json").read_text())
    for row_expected, row_got in zip(expected["stages"], got["stages"], strict=True):
        assert {k: v for k, v in row_got.items() if "time" not in k} == \
            {k: v for k, v in row_expected.items() if "time" not in k}, row_got["stage"]
    for name in ("fusion", "finetune"):
        assert resumed[name]["metrics"] == manifest(whole)["stages"][name]["metrics"], name


# 3. weights_only on every path, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says.

def test_a_malicious_checkpoint_is_refused_on_every_loading_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    bad = malicious_checkpoint(tmp_path / "last.ckpt", marker)
    with pytest.raises(ConfigError, match=rf"--ckpt_path: checkpoint {bad} refused"):
        AtomicCheckpointIO().load_checkpoint(bad)
    folder = tmp_path / "out" / "fusion" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(bad, folder / "last.ckpt")
    with pytest.raises(ConfigError, match=rf"stage fusion: --ckpt_path: checkpoint {folder / 'last.ckpt'} refused"):
        resume_checkpoint(SimpleNamespace(output_dir=tmp_path / "out"), SimpleNamespace(name="fusion"),
                          {"status": "running"})
    assert not marker.exists()


def test_the_pipeline_resume_refuses_a_malicious_last_checkpoint(tiny_raw, tiny_cache, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("MMSENT_DEBUG", raising=False)
    pipeline = write_pipeline(tmp_path, tiny_raw, tiny_cache, with_video=False)
    spec = yaml.safe_load(pipeline.read_text())
    spec["stages"] = spec["stages"][:1]
    pipeline.write_text(yaml.safe_dump(spec))
    last = malicious_checkpoint(tmp_path / "out" / "text" / "checkpoints" / "last.ckpt", tmp_path / "marker")
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(
        {"pipeline": "tiny", "group": "g", "stages": {"text": {"status": "running"}}}))
    with pytest.raises(SystemExit) as stop:
        main(["pipeline", "run", str(pipeline)])
    assert not (tmp_path / "marker").exists(), "the pickle's code ran"
    assert stop.value.code == 1
    assert f"stage text: --ckpt_path: checkpoint {last} refused" in capsys.readouterr().err
    assert manifest(tmp_path)["stages"]["text"]["status"] == "failed"


# 4. One run per output folder; one preparation per cache.

def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    (tmp_path / "a.yaml").write_text("trainer: {max_epochs: 1}\n")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"),
                                        "stages": [{"name": "a", "configs": ["a.yaml"]}]}))
    with RunLock(tmp_path / "out"):
        with pytest.raises(ConfigError, match=rf"another pipeline run is using this folder \(pid "
                                              rf"{os.getpid()} on host {socket.gethostname()}, started"):
            run(pipeline)
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(tmp_path / "out") as lock:  # a stale lock is taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_two_runs_preparing_the_same_cache_both_read_it(tiny_raw, tmp_path, monkeypatch):
    source = RawClipSource(str(tiny_raw), modalities=["audio"], frames=4, frame_size=16)
    results, errors = [], []
    both = threading.Barrier(2)
    real_open = RawClipSource.open

    def open_together(self, workdir):
        # Without a lock both runs would be preparing at once from here on.
        try:
            both.wait(timeout=3)
        except threading.BrokenBarrierError:
            pass
        return real_open(self, workdir)

    monkeypatch.setattr(RawClipSource, "open", open_together)

    def prepare_it():
        try:
            results.append(prepare(source, tmp_path, chunk_size=8))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=prepare_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert [len(r.splits["train"]) for r in results] == [len(results[0].splits["train"])] * 2
    assert results[0].path == results[1].path == tmp_path / cache_key(source, "mask")


def test_a_full_disk_while_preparing_names_the_cache_and_leaves_no_empty_folder(tiny_raw, tmp_path, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    source = RawClipSource(str(tiny_raw), modalities=["audio"], frames=4, frame_size=16)
    folder = tmp_path / cache_key(source, "mask")
    with pytest.raises(OSError, match=rf"preparing the cache {folder} failed: No space left on device"):
        prepare(source, tmp_path, chunk_size=64)
    assert not folder.exists()


# 5. Every configuration checked before any work.

def test_a_bad_value_in_stage_two_is_rejected_before_stage_one_trains(tiny_raw, tiny_cache, tmp_path):
    pipeline = write_pipeline(tmp_path, tiny_raw, tiny_cache, with_video=False)
    spec = yaml.safe_load(pipeline.read_text())
    spec["stages"][1]["args"] = ["--model.init_args.modality=smell"]
    pipeline.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"stage 'audio' .*model.init_args.modality must be one of "
                                          r"\['text', 'audio', 'video'\], got 'smell'"):
        run(pipeline)
    assert not (tmp_path / "out" / "text").exists(), "stage 1 must not start"
    spec["stages"][1]["args"] = ["--model.init_args.encoder.init_args.no_such_option=3"]
    pipeline.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"stage 'audio' .*no_such_option"):
        run(pipeline)
    assert not (tmp_path / "out" / "text").exists()


def test_a_negative_learning_rate_is_rejected_naming_the_key(tiny_raw, tmp_path):
    with pytest.raises(ValueError, match=r"param_groups.encoder.lr must be >= 0, got -0.01"):
        build_param_groups({"encoder": torch.nn.Linear(2, 2)}, {"encoder": {"lr": -0.01}})
    with pytest.raises(ValueError, match=r"param_groups.encoder.lr must be >= 0, got '-1e-3'"):
        build_param_groups({"encoder": torch.nn.Linear(2, 2)}, {"encoder": {"lr": "-1e-3"}})
    stage = ["-c", str(CONF.parent.parent / "pipelines" / "quickstart" / "1_text.yaml")]
    cases = [("--model.init_args.param_groups={'encoder': {'lr': -0.01}}",
              r"model.init_args.param_groups.encoder.lr must be >= 0, got -0.01"),
             ("--model.init_args.optimizer.init_args.lr=-0.003",
              r"model.init_args.optimizer.init_args.lr must be >= 0, got -0.003")]
    for override, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_cli([*data_args(tiny_raw, tmp_path), *stage, override], run=False)
        assert not (tmp_path / "cache").exists(), "the data must not be prepared first"


# 7. Short errors that name the culprit.

def bad_label_copy(tiny_raw: Path, folder: Path, edit) -> Path:
    shutil.copytree(tiny_raw, folder, ignore=shutil.ignore_patterns("*.mp4", "*.wav"))
    edit(folder / "label.csv")
    return folder


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_label_file_not_in_utf8_is_named_with_its_row(tiny_raw, tmp_path, encoding):
    def recode(path):
        lines = path.read_text().splitlines()
        lines[3] = lines[3].replace(",", ",é", 1) if encoding == "latin-1" else lines[3]
        path.write_bytes("\n".join(lines).encode(encoding))

    root = bad_label_copy(tiny_raw, tmp_path / "raw", recode)
    row = 4 if encoding == "latin-1" else 1
    with pytest.raises(ConfigError, match=rf"{root / 'label.csv'}, row {row}: not UTF-8 .*save the file as UTF-8"):
        read_label_table(root / "label.csv")


@pytest.mark.parametrize("value", ["abc", ""])
def test_a_label_that_is_not_a_number_is_shown_as_written(tiny_raw, tmp_path, value):
    def spoil(path):
        table = path.read_text().splitlines()
        header = table[0].split(",")
        cells = table[2].split(",")
        cells[header.index("label")] = value
        table[2] = ",".join(cells)
        path.write_text("\n".join(table) + "\n")

    root = bad_label_copy(tiny_raw, tmp_path / "raw", spoil)
    with pytest.raises(ConfigError, match=rf"label.csv, row 3 \(.*\): label {value!r} is not a number"):
        read_label_table(root / "label.csv")


def test_a_data_error_is_one_line_unless_debugging(tiny_raw, tmp_path, capsys, monkeypatch):
    def spoil(path):
        path.write_bytes(path.read_text().replace("\n", "\né", 1).encode("latin-1"))

    monkeypatch.delenv("MMSENT_DEBUG", raising=False)
    root = bad_label_copy(tiny_raw, tmp_path / "raw", spoil)
    command = ["fit", *data_args(root, tmp_path),
               "-c", str(CONF.parent.parent / "pipelines" / "quickstart" / "2_audio.yaml")]
    with pytest.raises(SystemExit) as stop:
        main(command)
    assert stop.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"mmsent: error: {root / 'label.csv'}, row 2: not UTF-8 (byte b'\\xe9' at column 1); "
                     "save the file as UTF-8",
                     "(the full traceback: run again with --debug or MMSENT_DEBUG=1)"]
    cache = tmp_path / "cache"
    assert not [p for p in cache.iterdir() if p.is_dir()], "no empty cache folder is left behind"
    with pytest.raises(ConfigError, match="not UTF-8"):
        main(command + ["--debug"])
    monkeypatch.setenv("MMSENT_DEBUG", "1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        main(command)
