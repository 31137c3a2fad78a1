"""Failures named in a line or two: cut checkpoints, a full disk, a signal, values that
cannot work, a loss that is not a number, and what goes to stdout."""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import CONF, REPO, data_args

from mmsent.cli import build_cli
from mmsent.models.weights import read_weights_file
from mmsent.pipeline import report, run
from mmsent.pipeline.runner import resume_checkpoint
from mmsent.tasks import UnimodalTask

AUDIO = str(REPO / "pipelines" / "quickstart" / "2_audio.yaml")


def cli_env(**extra: str) -> dict:
    """The environment of an ``mmsent`` subprocess: this checkout's code, short errors."""
    env = {k: v for k, v in os.environ.items() if k != "MMSENT_DEBUG"}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}


def mmsent(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs the ``mmsent`` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "mmsent", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=300, check=False, **kwargs)


def assert_short_error(stderr: str, *names: str) -> str:
    """The ``mmsent: error:`` line of a short error, checked to name ``names``."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("mmsent: error:")]
    assert len(lines) == 1, stderr[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


# Checkpoints cut short.

@pytest.mark.parametrize("size", [0, 2, 100, 4096, 8_000, 30_000, "half"])
def test_a_resume_skips_a_last_checkpoint_cut_to_any_size_naming_it(tmp_path, capsys, size):
    folder = tmp_path / "out" / "audio" / "checkpoints"
    folder.mkdir(parents=True)
    whole = {"loops": {}, "epoch": 1, "state_dict": {"weight": torch.randn(100_000)}}
    torch.save({**whole, "epoch": 0}, folder / "best-epoch000.ckpt")
    torch.save(whole, folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[:len(data) // 2 if size == "half" else size])
    resumed = resume_checkpoint(SimpleNamespace(output_dir=tmp_path / "out"), SimpleNamespace(name="audio"),
                                {"status": "running"})
    assert resumed == str(folder / "best-epoch000.ckpt")
    said = capsys.readouterr()
    said = said.out + said.err
    assert f"checkpoint {folder / 'last.ckpt'} is unreadable, truncated or corrupt" in said
    assert "the newest readable checkpoint" in said


# A full disk, or a file larger than the process may write.

def mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, check=False)
    return done.returncode == 0


def audio_fit(tiny_raw: Path, tiny_cache: Path, root: Path, *more: str) -> list[str]:
    return ["fit", "-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={tiny_raw}",
            f"--data.cache_dir={tiny_cache}", "-c", AUDIO, f"--trainer.default_root_dir={root}", *more]


def prepared(tiny_raw: Path, tiny_cache: Path, tmp_path: Path) -> None:
    # The shared cache, prepared here so that the limited process writes checkpoints only.
    build_cli([*data_args(tiny_raw, tmp_path, tiny_cache), "-c", AUDIO], run=False).datamodule.prepare_data()


def test_a_full_disk_during_a_checkpoint_names_the_file_and_the_free_space(tiny_raw, tiny_cache, tmp_path):
    disk = tmp_path / "disk"
    # One checkpoint of the audio stage is 317 kB: two fit, the third does not.
    if not mount_tmpfs(disk, "800k"):
        pytest.skip("mounting a small tmpfs needs root and a kernel that allows it here")
    try:
        prepared(tiny_raw, tiny_cache, tmp_path)
        done = mmsent(*audio_fit(tiny_raw, tiny_cache, disk / "run", "--trainer.max_epochs=4"))
        assert done.returncode == 1, done.stderr[-3000:]
        line = assert_short_error(done.stderr, str(disk / "run" / "checkpoints"), "No space left on device",
                                  f"free on {disk}")
        assert "kB free" in line
        last = disk / "run" / "checkpoints" / "last.ckpt"
        assert read_weights_file(last, "last")["epoch"] == 0, "the previous checkpoint is intact"
        assert not list(last.parent.glob(".*.tmp")), "no temporary file is left"
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        cli = build_cli(audio_fit(tiny_raw, tiny_cache, disk / "run", "--trainer.max_epochs=2")[1:], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last))
        assert read_weights_file(last, "last")["epoch"] == 1, "the fit resumed from it"
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_file_size_limit_during_a_checkpoint_names_the_file_and_the_limit(tiny_raw, tiny_cache, tmp_path):
    prepared(tiny_raw, tiny_cache, tmp_path)

    def limited():
        # Without SIG_IGN the kernel kills the process at the limit; with it, write() fails with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    root = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "mmsent", *audio_fit(tiny_raw, tiny_cache, root)],
                          capture_output=True, text=True, env=cli_env(), timeout=300, check=False,
                          preexec_fn=limited)
    assert done.returncode == 1, done.stderr[-3000:]
    assert_short_error(done.stderr, str(root / "checkpoints" / "best-epoch000.ckpt"), "File too large",
                       "files are limited to 200.0 kB (ulimit -f)", "free on /")
    assert not list((root / "checkpoints").iterdir()), "no half-written checkpoint is left"


# Ctrl+C.

def test_sigint_in_a_stage_is_recorded_as_an_interruption_and_the_stage_resumes(
        tiny_raw, tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "plot", lambda *args: None)
    monkeypatch.setattr(report, "write_figures", lambda *args: [])
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(tmp_path / "out"),
        "args": ["-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={tiny_raw}",
                 f"--data.cache_dir={tiny_cache}", "--trainer.max_epochs=2"],
        "stages": [{"name": "audio", "configs": [AUDIO]}]}))

    def ctrl_c_in_epoch_one(self):
        if self.current_epoch == 1:
            raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(UnimodalTask, "on_train_epoch_start", ctrl_c_in_epoch_one, raising=False)
            with pytest.raises(SystemExit, match=r"stage 'audio' interrupted \(SIGINT\)"):
                run(pipeline)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl+C from then on
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]["audio"]
    assert record["status"] == "failed"
    assert record["error"].startswith("SystemExit: stage 'audio' interrupted (SIGINT); run the same command")
    run(pipeline)
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]["audio"]
    assert record["status"] == "done"
    assert record["resumed_from"] == str(tmp_path / "out" / "audio" / "checkpoints" / "last.ckpt")


# Values that cannot work, refused before any data is prepared: by their types as the
# command line parses (jsonargparse's message, naming the key), or, for the optimizer's
# own options (torch's class, untyped), by mmsent's check of the parsed values.

TEXT = str(REPO / "pipelines" / "quickstart" / "1_text.yaml")
REFUSED = [
    ("--model.init_args.optimizer.init_args.lr=1e400",
     r"model.init_args.optimizer.init_args.lr must be a finite number, got inf"),
    ("--model.init_args.param_groups={'encoder': {'lr': 1e400}}",
     r'Parser key "param_groups".*Parser key "lr".*FiniteNonNegativeFloat.*Given value: inf'),
    ("--model.init_args.param_groups={'encoder': {'lr': .nan}}",
     r'Parser key "param_groups".*Parser key "lr".*FiniteNonNegativeFloat.*Given value: nan'),
    ("--model.init_args.optimizer.init_args.weight_decay=-0.01",
     r"model.init_args.optimizer.init_args.weight_decay must be >= 0, got -0.01: a negative weight decay"),
    ("--model.init_args.param_groups={'encoder': {'lr': 0.1, 'weight_decay': -1}}",
     r'Parser key "weight_decay".*FiniteNonNegativeFloat.*Given value: -1'),
    ("--model.init_args.param_groups={'encoder': {'lr': 0.1, 'schedule': {'name': 'cosine', 'epochs': 0}}}",
     r'Parser key "schedule".*Parser key "epochs".*PositiveInt.*Given value: 0'),
    ("--model.init_args.param_groups={'encoder': {'lr': 0.1, 'schedule': {'name': 'cosine', 'epochs': -3}}}",
     r'Parser key "schedule".*Parser key "epochs".*PositiveInt.*Given value: -3'),
    ("--model.init_args.param_groups={'encoder': {'lr': 0.1, 'schedule': {'name': 'step', 'step_size': 0}}}",
     r'Parser key "schedule".*Parser key "step_size".*PositiveInt.*Given value: 0'),
    ("--data.batch_size=0", r'Parser key "data.batch_size": Not of type PositiveInt: 0 does not conform to restriction v>0'),
    ("--data.batch_size=-4", r'Parser key "data.batch_size": Not of type PositiveInt: -4 does not conform'),
    ("--model.init_args.modality=speech", r'Parser key "modality": Expected a typing.Literal\[.text., .audio., .video.\]'),
    ("--model.init_args.loss=l3", r'Parser key "loss": Expected a typing.Literal\[.l1., .mse., .huber.\]'),
]


@pytest.mark.parametrize(("override", "message"), REFUSED, ids=[o.split("=")[0][2:] for o, _ in REFUSED])
def test_a_value_that_cannot_work_is_refused_naming_the_key_before_any_data(tiny_raw, tmp_path, capsys,
                                                                              override, message):
    from mmsent.errors import ConfigError

    with pytest.raises((ConfigError, SystemExit, argparse.ArgumentError)) as raised:
        build_cli([*data_args(tiny_raw, tmp_path), "-c", TEXT, override], run=False)
    shown = capsys.readouterr().err if isinstance(raised.value, SystemExit) else str(raised.value)
    assert re.search(message, " ".join(shown.split())), shown
    assert not (tmp_path / "cache").exists(), "the data must not be prepared first"


def test_the_parameter_groups_refuse_the_same_values_without_the_command_line():
    from mmsent.optim import build_param_groups

    parts = {"encoder": torch.nn.Linear(2, 2)}
    for settings, message in [({"lr": float("inf")}, r'param_groups: Parser key "encoder.lr".*Given value: inf'),
                              ({"lr": "1e400"}, r'param_groups: Parser key "encoder.lr".*FiniteNonNegativeFloat'),
                              ({"weight_decay": -0.5}, r'param_groups: Parser key "encoder.weight_decay"'),
                              ({"schedule": {"name": "cosine", "epochs": 0}},
                               r'param_groups: Parser key "encoder.schedule".*Parser key "epochs".*Given value: 0')]:
        with pytest.raises(ValueError, match=message):
            build_param_groups(parts, {"encoder": settings})


def test_a_label_table_with_a_header_only_is_refused_naming_it(tiny_raw, tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    header = (tiny_raw / "label.csv").read_text().splitlines()[0]
    (root / "label.csv").write_text(header + "\n")
    done = mmsent(*audio_fit(root, tmp_path / "cache", tmp_path / "run"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert_short_error(done.stderr, f"{root / 'label.csv'}: no clip: the table has a header but no row")


# A loss that is not a number.

def short_audio_fit(tiny_data_args: list[str], *more: str):
    return build_cli([*tiny_data_args, "-c", AUDIO, "--trainer.max_epochs=3", "--trainer.limit_train_batches=3",
                      *more], run=False)


def test_a_diverging_fit_stops_at_the_first_non_finite_loss_naming_the_step(tiny_data_args, tmp_path):
    from mmsent.errors import NonFiniteError

    # Finite, so check_values lets it through; its first step sends the head's weights to 1e30.
    cli = short_audio_fit(tiny_data_args, "--model.init_args.optimizer.init_args.lr=1e30")
    with pytest.raises(NonFiniteError, match=r"training stopped in epoch 0 after 1 optimizer step: the loss is nan; "
                                             r"the weights are finite, the largest 1e\+30 in parameter group "):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert not list((tmp_path / "run").rglob("*.ckpt")), "no checkpoint of the diverged weights"


def test_weights_made_non_finite_are_named_by_their_parameter_group(tiny_data_args, monkeypatch):
    from mmsent.errors import NonFiniteError

    def spoil_after_two_steps(self, outputs, batch, batch_idx):
        if self.global_step == 2:
            with torch.no_grad():
                next(self.encoder.parameters()).fill_(float("inf"))

    monkeypatch.setattr(UnimodalTask, "on_train_batch_end", spoil_after_two_steps, raising=False)
    cli = short_audio_fit(tiny_data_args, "--model.init_args.param_groups={'audio': {'lr': 0.001}}")
    with pytest.raises(NonFiniteError, match=r"training stopped in epoch 0 after 2 optimizer steps: the loss is "
                                             r"(nan|inf) because the weights of parameter group\(s\) 'audio' "
                                             r"\(lr 0.001\) are no longer finite"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_an_epoch_whose_validation_error_is_not_a_number_is_never_the_best(tiny_data_args, tmp_path, monkeypatch):
    def nan_scores(self, batch, batch_idx):
        self._evaluate(batch, "val", preds=torch.full_like(batch["label"], float("nan")))

    monkeypatch.setattr(UnimodalTask, "validation_step", nan_scores)
    cli = short_audio_fit(tiny_data_args, "--trainer.max_epochs=1")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.checkpoint_callback.best_model_path == ""
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["last.ckpt"]


# Files mmsent wrote, then cut or altered: named, with the entry at fault.

def short_error_of(capsys, args: list[str], monkeypatch) -> str:
    from mmsent.main import main

    monkeypatch.delenv("MMSENT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 1
    return assert_short_error(capsys.readouterr().err)


def one_stage_pipeline(folder: Path, tiny_raw: Path, tiny_cache: Path) -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "output_dir": str(folder / "out"),
        "args": ["-c", str(CONF / "tiny_data.yaml"), f"--data.source.init_args.root={tiny_raw}",
                 f"--data.cache_dir={tiny_cache}", "--trainer.max_epochs=1"],
        "stages": [{"name": "audio", "configs": [AUDIO]}]}))
    return path


@pytest.mark.parametrize(("content", "message"), [
    ('{"stages": {"audio": {"status": "do', r"not a readable manifest \(Unterminated string"),
    ("[1, 2]", r"not a manifest \(no 'stages' mapping\)"),
    ('{"stages": {"audio": "done"}}', r"stages.audio is a str, not a stage's record"),
], ids=["cut", "a list", "a stage not a mapping"])
def test_a_manifest_cut_or_altered_is_named(tiny_raw, tiny_cache, tmp_path, capsys, monkeypatch, content, message):
    pipeline = one_stage_pipeline(tmp_path, tiny_raw, tiny_cache)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(content)
    line = short_error_of(capsys, ["pipeline", "run", str(pipeline)], monkeypatch)
    assert line.startswith(f"mmsent: error: {tmp_path / 'out' / 'manifest.json'}: ")
    assert __import__("re").search(message, line), line
    assert "move it away to run every stage again" in line


def test_a_pipeline_file_cut_short_is_named_with_its_line(tiny_raw, tiny_cache, tmp_path, capsys, monkeypatch):
    pipeline = one_stage_pipeline(tmp_path, tiny_raw, tiny_cache)
    text = yaml.safe_dump(yaml.safe_load(pipeline.read_text()), default_flow_style=True)
    pipeline.write_text(text[:text.index("--data.cache_dir") + 5])
    line = short_error_of(capsys, ["pipeline", "run", str(pipeline)], monkeypatch)
    assert line.startswith(f"mmsent: error: {pipeline}, line "), line
    assert "not valid YAML" in line


def test_a_checkpoint_lacking_what_mmsent_reads_from_it_names_the_entry(tmp_path):
    from mmsent.errors import ConfigError
    from mmsent.tasks.checkpoints import load_generator, read_checkpoint

    bare = tmp_path / "bare.ckpt"
    torch.save({"epoch": 0}, bare)
    with pytest.raises(ConfigError, match=rf"model.init_checkpoint: checkpoint {bare} has no entry state_dict"):
        read_checkpoint(bare, "model.init_checkpoint")
    altered = tmp_path / "altered.ckpt"
    torch.save({"state_dict": {}, "mmsent": ["not", "metadata"]}, altered)
    with pytest.raises(ConfigError, match=rf"checkpoint {altered}: entry mmsent is a list, not a dict"):
        read_checkpoint(altered, "model.init_checkpoint")
    generator = tmp_path / "generator.ckpt"
    torch.save({"state_dict": {}, "mmsent": {"task": "generative", "generator_class": "ConditionalVAE"}}, generator)
    with pytest.raises(ConfigError, match=rf"model.generator_checkpoint: checkpoint {generator} has no entry "
                                          r"mmsent.layout: it was not written by mmsent, or was altered since"):
        load_generator(generator, "model.generator_checkpoint", torch.nn.ModuleDict())


def test_a_full_disk_under_another_writer_is_named_with_the_free_space(tmp_path, capsys, monkeypatch):
    import errno

    import mmsent.main

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "logs" / "metrics.csv"))

    monkeypatch.setattr(mmsent.main, "dispatch", full)
    line = short_error_of(capsys, ["fit"], monkeypatch)
    assert line.startswith(f"mmsent: error: writing {tmp_path / 'logs' / 'metrics.csv'} failed: "
                           f"No space left on device (")
    assert " free on /" in line
    monkeypatch.setenv("MMSENT_DEBUG", "1")
    with pytest.raises(OSError, match="No space left on device"):
        mmsent.main.main(["fit"])


# stdout holds a command's data; progress and notices go to stderr.

def test_fit_prints_nothing_to_stdout_and_test_prints_its_metrics_as_json(tiny_raw, tiny_cache, tmp_path, capsys):
    from mmsent.main import main

    shown = ["--trainer.enable_progress_bar=true", "--trainer.enable_model_summary=true"]
    main(audio_fit(tiny_raw, tiny_cache, tmp_path / "run", "--trainer.max_epochs=1", *shown))
    printed = capsys.readouterr()
    assert printed.out == "", "the progress bar and the model summary are notices"
    assert "Epoch 0/0" in printed.err and "Trainable params" in printed.err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    main(["test", *audio_fit(tiny_raw, tiny_cache, tmp_path / "run", f"--ckpt_path={last}", *shown)[1:]])
    printed = capsys.readouterr()
    metrics = json.loads(printed.out)
    assert metrics["test/MAE"] > 0 and "test/Corr" in metrics
    assert "Test metric" in printed.err, "Lightning's table stays on the terminal, on stderr"


def test_a_pipeline_prints_its_report_alone_to_stdout(tiny_raw, tiny_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report, "plot", lambda *args: None)
    monkeypatch.setattr(report, "write_figures", lambda *args: [])
    run(one_stage_pipeline(tmp_path, tiny_raw, tiny_cache))
    printed = capsys.readouterr()
    assert printed.out.startswith("| stage |"), printed.out[:500]
    assert "===" not in printed.out and "report written to" not in printed.out
    assert "=== stage audio: mmsent fit" in printed.err
    assert f"report written to {tmp_path / 'out' / 'report.md'}" in printed.err


def test_an_export_says_where_it_wrote_on_stderr(tmp_path, capsys, monkeypatch):
    import mmsent.hub.export
    from mmsent.main import main

    monkeypatch.setattr(mmsent.hub.export, "export", lambda run_dir, to, stage, overwrite: Path(to))
    main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "model")])
    printed = capsys.readouterr()
    assert printed.out == ""
    assert f"exported to {tmp_path / 'model'}" in printed.err
