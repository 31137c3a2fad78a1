"""Faults and bad input: atomic checkpoints, exact resume, safe loading, locks,
configs checked before any work, failed stages recorded, short errors."""

import argparse
import errno
import json
import multiprocessing
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import yaml
from helpers import CONF, data_args
from test_pipeline import manifest, write_pipeline

import mmsent.data.cache as data_cache
from mmsent.callbacks.random_state import RandomState
from mmsent.cli import build_cli
from mmsent.data import RawClipSource
from mmsent.data.cache import cache_key, prepare
from mmsent.data.labels import read_label_table
from mmsent.errors import ConfigError
from mmsent.main import main
from mmsent.optim import build_param_groups
from mmsent.pipeline import report, run
from mmsent.pipeline.lock import LOCK_FILE, RunLock
from mmsent.pipeline.runner import resume_checkpoint
from mmsent.tasks import FusionTask
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


def test_last_checkpoint_holds_the_last_epoch_even_without_a_new_best(tiny_data_args, tmp_path):
    audio = str(CONF.parent.parent / "pipelines" / "quickstart" / "2_audio.yaml")
    cli = build_cli([*tiny_data_args, "-c", audio, "--trainer.max_epochs=3", "--trainer.limit_train_batches=1",
                     "--checkpoint.monitor=epoch"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    callback = cli.trainer.checkpoint_callback
    assert torch.load(callback.best_model_path, weights_only=True)["epoch"] == 0, "only epoch 0 is the best"
    last = torch.load(callback.last_model_path, weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 3
    assert any(key.startswith("ModelCheckpoint{") for key in last["callbacks"]), "the state key stays Lightning's"


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
    said = capsys.readouterr().err
    assert f"{folder / 'last.ckpt'} is unreadable, truncated or corrupt" in said
    assert "the newest readable checkpoint" in said
    assert resume_checkpoint(pipeline, stage, {"status": "done"}) is None


# 2 and 6. Killed in the fusion stage and resumed: the same figures; the failure is recorded.

class Crash(RuntimeError):
    """Raised inside the fusion stage to kill it after an epoch's checkpoint."""


def killable_pipeline(folder: Path, tiny_raw: Path, tiny_cache: Path) -> Path:
    """Text, audio, then a three-epoch fusion stage whose selection judges (and the
    pipeline hands on) the last epoch, not the best one, which may come before the
    kill: the report then depends on every random draw of the stage's training and on
    the selection's starting weights, which the resumed stage builds anew."""
    folder.mkdir()
    path = write_pipeline(folder, tiny_raw, tiny_cache, fusion_epochs=3, with_video=False)
    spec = yaml.safe_load(path.read_text())
    spec["stages"] = spec["stages"][:3]
    spec["stages"][2]["args"].append("--checkpoint.monitor=null")
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_stage_killed_and_resumed_ends_with_the_figures_of_one_never_killed(
        tiny_raw, tiny_cache, tmp_path, monkeypatch):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        killable_pipeline(folder, tiny_raw, tiny_cache)
    # The report's figures are tested with the pipeline; drawing them would double this test's time.
    monkeypatch.setattr(report, "plot", lambda *args: None)
    monkeypatch.setattr(report, "write_figures", lambda *args: [])
    batches = []  # (run, epoch, the clips of a training batch): the sampler's order
    monkeypatch.setattr(FusionTask, "on_train_batch_start", lambda self, batch, index: batches.append(
        (Path(self.trainer.default_root_dir).parent.parent.name, self.current_epoch, tuple(batch["id"]))),
        raising=False)
    run(whole / "pipeline.yaml")
    assert "start_gain" in manifest(whole)["stages"]["fusion"]["selection"], "the trained weights were judged"
    # The same unimodal stages, handed over as finished, so only the fusion stage runs again.
    shutil.copytree(whole / "out", killed / "out", dirs_exist_ok=True)
    shutil.rmtree(killed / "out" / "fusion")
    record = manifest(killed)
    del record["stages"]["fusion"]
    (killed / "out" / "manifest.json").write_text(json.dumps(record))

    def crash_in_epoch_one(self):
        if self.current_epoch == 1:
            raise Crash("killed in epoch 1 of the fusion stage")

    with monkeypatch.context() as patch:
        patch.setattr(FusionTask, "on_train_epoch_start", crash_in_epoch_one, raising=False)
        with pytest.raises(Crash):
            run(killed / "pipeline.yaml")
    failed = manifest(killed)["stages"]["fusion"]
    assert failed["status"] == "failed"
    assert failed["error"] == "Crash: killed in epoch 1 of the fusion stage"
    assert failed["resume_command"] == f"mmsent pipeline run {killed / 'pipeline.yaml'}"

    run(killed / "pipeline.yaml")
    resumed = manifest(killed)["stages"]["fusion"]
    assert resumed["resumed_from"] == str(killed / "out" / "fusion" / "checkpoints" / "last.ckpt")
    assert "error" not in resumed
    order = {name: [(epoch, ids) for run_name, epoch, ids in batches if run_name == name]
             for name in ("whole", "killed")}
    assert [epoch for epoch, _ in order["killed"]] == [epoch for epoch, _ in order["whole"]], \
        "the resumed fit starts at the epoch after its last checkpoint"
    for (epoch, expected), (_, got) in zip(order["whole"], order["killed"], strict=True):
        assert got == expected, f"epoch {epoch}: the resumed fit shuffles otherwise"
    trained = [torch.load(folder / "out" / "fusion" / "checkpoints" / "last.ckpt", weights_only=True)
               for folder in (whole, killed)]
    assert trained[0]["epoch"] == trained[1]["epoch"] == 2
    for key, tensor in trained[0]["state_dict"].items():
        assert torch.equal(tensor, trained[1]["state_dict"][key]), f"trained weights differ: {key}"
    assert resumed["metrics"] == manifest(whole)["stages"]["fusion"]["metrics"]
    expected = json.loads((whole / "out" / "report.json").read_text())
    got = json.loads((killed / "out" / "report.json").read_text())
    for row_expected, row_got in zip(expected["stages"], got["stages"], strict=True):
        assert {k: v for k, v in row_got.items() if "time" not in k} == \
            {k: v for k, v in row_expected.items() if "time" not in k}, row_got["stage"]


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
    refused = (rf"another pipeline run is using this folder \(pid {os.getpid()} "
               rf"on host {socket.gethostname()}, started")
    with RunLock(tmp_path / "out"), pytest.raises(ConfigError, match=refused):
        run(pipeline)
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(tmp_path / "out") as lock:  # a stale lock is taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_a_run_killed_holding_the_lock_is_named_while_alive_and_taken_over_once_dead(tmp_path):
    fork = multiprocessing.get_context("fork")
    holding, never = fork.Event(), fork.Event()

    def hold() -> None:
        with RunLock(tmp_path / "out"):
            holding.set()
            never.wait(60)

    child = fork.Process(target=hold)
    child.start()
    assert holding.wait(30)
    with pytest.raises(ConfigError, match=rf"pid {child.pid} on host {socket.gethostname()}, started "):
        RunLock(tmp_path / "out").acquire()
    child.kill()  # SIGKILL: no release, the file stays behind
    child.join()
    assert (tmp_path / "out" / LOCK_FILE).exists()
    with RunLock(tmp_path / "out") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "out" / LOCK_FILE).exists()


def prepare_in_a_process(role: str, raw: Path, cache_dir: Path, events: dict, results) -> None:
    """One of two processes preparing the same new cache (forked, so it imports nothing).

    The first holds the cache half-prepared until the second has reached the cache's
    lock or, with no lock, started preparing the same folder itself. The second starts
    only once the first is preparing.
    """
    try:
        def arrive(what: str) -> None:
            events[what].set()
            if role == "second":
                events["second arrived"].set()

        real_open = RawClipSource.open

        def open_and_tell(self, workdir):
            arrive(f"{role} preparing")
            if role == "first" and not events["second arrived"].wait(timeout=60):
                raise TimeoutError("the second process never reached the lock")
            return real_open(self, workdir)

        class TellingLock(data_cache.FileLock):
            """The real file lock, telling the first process that this one waits at it."""

            def acquire(self, *args, **kwargs):
                arrive(f"{role} at the lock")
                return super().acquire(*args, **kwargs)

        RawClipSource.open = open_and_tell
        data_cache.FileLock = TellingLock
        if role == "second" and not events["first preparing"].wait(timeout=60):
            raise TimeoutError("the first process never started preparing")
        source = RawClipSource(str(raw), modalities=["audio"], frames=4, frame_size=16)
        prepared = data_cache.prepare(source, cache_dir, chunk_size=8)
        results.put((role, str(prepared.path), len(prepared.splits["train"]), prepared.spec.input_dims))
    except BaseException as error:  # noqa: BLE001 - reported by the test
        results.put((role, "failed", f"{type(error).__name__}: {error}", None))


def test_two_processes_preparing_the_same_cache_prepare_it_once_and_both_read_it(tiny_raw, tmp_path):
    context = multiprocessing.get_context("fork")
    events = {name: context.Event() for name in ("first preparing", "second preparing", "first at the lock",
                                                 "second at the lock", "second arrived")}
    results = context.Queue()
    processes = [context.Process(target=prepare_in_a_process,
                                 args=(role, tiny_raw, tmp_path, events, results))
                 for role in ("first", "second")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    outcomes = {}
    for _ in processes:
        try:
            role, *outcome = results.get(timeout=10)
        except queue.Empty:
            break
        outcomes[role] = outcome
    assert set(outcomes) == {"first", "second"}, f"exit codes {[p.exitcode for p in processes]}"
    assert {role: outcome[1] for role, outcome in outcomes.items() if outcome[0] == "failed"} == {}
    assert outcomes["first"] == outcomes["second"], "both read the same finished cache"
    assert Path(outcomes["first"][0]).parent == tmp_path and outcomes["first"][1] > 0
    assert not events["second preparing"].is_set(), "the second process prepared the cache too"
    assert events["second at the lock"].is_set(), "the second process waited at the lock"


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
    with pytest.raises(ConfigError, match=r"stage 'audio' .*Parser key \"modality\": Expected a "
                                          r"typing.Literal\['text', 'audio', 'video'\]. Got value: smell"):
        run(pipeline)
    assert not (tmp_path / "out" / "text").exists(), "stage 1 must not start"
    spec["stages"][1]["args"] = ["--model.init_args.encoder.init_args.no_such_option=3"]
    pipeline.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"stage 'audio' .*no_such_option"):
        run(pipeline)
    assert not (tmp_path / "out" / "text").exists()
    assert not (tmp_path / "out" / "manifest.json").exists(), "a refused run writes no manifest"


def test_a_rerun_refused_for_a_bad_value_keeps_the_stages_it_would_have_redone(tiny_raw, tiny_cache, tmp_path):
    pipeline = write_pipeline(tmp_path, tiny_raw, tiny_cache, with_video=False)
    spec = yaml.safe_load(pipeline.read_text())
    spec["stages"][1]["args"] = ["--model.init_args.modality=smell"]
    pipeline.write_text(yaml.safe_dump(spec))
    finished = tmp_path / "out" / "text" / "checkpoints" / "best.ckpt"
    finished.parent.mkdir(parents=True)
    finished.write_bytes(b"weights")
    record = {"stages": {"text": {"status": "done", "best_checkpoint": str(finished)}}}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"stage 'audio' .*Parser key \"modality\".*Got value: smell"):
        run(pipeline, start="text")
    assert finished.read_bytes() == b"weights", "--from must not delete a stage before the configs pass"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == record


def test_a_negative_learning_rate_is_rejected_naming_the_key(tiny_raw, tmp_path, capsys):
    refused = r'param_groups: Parser key "encoder.lr".*FiniteNonNegativeFloat.*Given value: '
    with pytest.raises(ValueError, match=refused + "-0.01"):
        build_param_groups({"encoder": torch.nn.Linear(2, 2)}, {"encoder": {"lr": -0.01}})
    with pytest.raises(ValueError, match=refused + "-1e-3"):
        build_param_groups({"encoder": torch.nn.Linear(2, 2)}, {"encoder": {"lr": "-1e-3"}})
    stage = ["-c", str(CONF.parent.parent / "pipelines" / "quickstart" / "1_text.yaml")]
    cases = [("--model.init_args.param_groups={'encoder': {'lr': -0.01}}",
              r'Parser key "param_groups".*Parser key "lr".*FiniteNonNegativeFloat.*Given value: -0.01'),
             ("--model.init_args.optimizer.init_args.lr=-0.003",
              r"model.init_args.optimizer.init_args.lr must be >= 0, got -0.003")]
    for override, message in cases:
        with pytest.raises((ConfigError, SystemExit, argparse.ArgumentError)) as raised:
            build_cli([*data_args(tiny_raw, tmp_path), *stage, override], run=False)
        shown = capsys.readouterr().err if isinstance(raised.value, SystemExit) else str(raised.value)
        assert re.search(message, " ".join(shown.split())), shown
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
    assert lines == [(f"mmsent: error: {root / 'label.csv'}, row 2: not UTF-8 (byte b'\\xe9' at column 1); "
                      "save the file as UTF-8"),
                     "(the full traceback: run again with --debug or MMSENT_DEBUG=1)"]
    cache = tmp_path / "cache"
    assert not [p for p in cache.iterdir() if p.is_dir()], "no empty cache folder is left behind"
    with pytest.raises(ConfigError, match="not UTF-8"):
        main(command + ["--debug"])
    monkeypatch.setenv("MMSENT_DEBUG", "1")
    with pytest.raises(ConfigError, match="not UTF-8"):
        main(command)
