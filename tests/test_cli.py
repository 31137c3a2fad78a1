"""The one LightningCLI, run in-process with tiny configs."""

import csv as csv_module
from pathlib import Path

import pytest
import torch
import yaml
from helpers import data_args, training_modules_after
from pytorch_lightning.callbacks import LearningRateMonitor

from mmsent.cli import MMSentCLI, build_cli
from mmsent.data.datamodule import MultimodalDataModule
from mmsent.errors import ConfigError, MissingFileError, user_error
from mmsent.main import main
from mmsent.tasks.base import BaseTask

QUICKSTART = "pipelines/quickstart"
STAGE_CONFIGS = {
    "text": f"{QUICKSTART}/1_text.yaml",
    "audio": f"{QUICKSTART}/2_audio.yaml",
    "video": f"{QUICKSTART}/3_video.yaml",
}
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


@pytest.mark.parametrize("modality", sorted(STAGE_CONFIGS))
def test_each_unimodal_stage_fast_dev_run(tiny_data_args, modality):
    main(["fit", "-c", STAGE_CONFIGS[modality], *tiny_data_args, "--trainer.fast_dev_run=1"])


def train_stage(args, config, root):
    main(["fit", "-c", config, *args, *SHORT, f"--trainer.default_root_dir={root}"])
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def unimodal_checkpoints(tiny_raw, tiny_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("unimodal")
    args = data_args(tiny_raw, folder, tiny_cache)
    return {m: train_stage(args, c, folder / m) for m, c in STAGE_CONFIGS.items()}


def fusion_args(tiny_data_args, checkpoints, extra=()):
    args = ["-c", f"{QUICKSTART}/4_fusion.yaml", *tiny_data_args]
    args += [f"--model.init_args.encoders.{m}={path}" for m, path in checkpoints.items()]
    return args + list(extra)


def test_fusion_validate_test_predict_from_unimodal_checkpoints(tiny_data_args, unimodal_checkpoints, tmp_path):
    args = fusion_args(tiny_data_args, unimodal_checkpoints)
    main(["fit", *args, *SHORT, f"--trainer.default_root_dir={tmp_path / 'fusion'}"])
    fused = tmp_path / "fusion" / "checkpoints" / "last.ckpt"
    text_state = torch.load(unimodal_checkpoints["text"], weights_only=True)["state_dict"]
    fused_state = torch.load(fused, weights_only=True)["state_dict"]
    # Frozen encoders leave stage 4 exactly as pretrained.
    for key, value in text_state.items():
        if key.startswith("encoder."):
            assert torch.equal(fused_state["model.encoders.text." + key[len("encoder."):]], value)
    for command in ("validate", "test", "predict"):
        main([command, *args, f"--ckpt_path={fused}"])


class Parsed(Exception):
    """Carries the configuration a CLI parsed, before it builds anything."""


class ParseOnlyCLI(MMSentCLI):
    def instantiate_classes(self) -> None:
        raise Parsed(self.config)


def test_ckpt_path_of_a_checkpoint_from_before_encoders_gives_its_arguments_under_todays_names(tmp_path):
    checkpoint = torch.load(Path(__file__).parent / "data" / "checkpoints_53a6aae" / "fused.ckpt", weights_only=True)
    # What LightningCLI adds to the hyperparameters of a model it built.
    checkpoint["hyper_parameters"].update(_class_path="mmsent.tasks.FusionTask",
                                          _instantiator="pytorch_lightning.cli.instantiate_module")
    torch.save(checkpoint, tmp_path / "fused.ckpt")
    args = ["test", "-c", f"{QUICKSTART}/4_fusion.yaml", "-c", "tests/conf/tiny_data.yaml",
            f"--ckpt_path={tmp_path / 'fused.ckpt'}"]
    with pytest.raises(Parsed) as parsed:
        ParseOnlyCLI(BaseTask, MultimodalDataModule, subclass_mode_model=True, auto_configure_optimizers=False,
                     parser_kwargs={"exit_on_error": False}, args=args)
    config = parsed.value.args[0].test
    assert config.model.init_args.encoders == {"text": "text.ckpt", "audio": "audio_backfit.ckpt"}
    assert config.model.init_args.unimodal == {"audio": "audio.ckpt"}
    assert not config.model.get("dict_kwargs"), "no argument under its old name is left to pass"
    assert config.ckpt_path == str(tmp_path / "fused.ckpt")  # still there for Lightning to load the weights from


def test_checkpoints_leave_the_frozen_pretrained_table_out_and_loading_checks_it(
        tiny_data_args, unimodal_checkpoints, tmp_path):
    from mmsent.models import TextLSTMEncoder
    from mmsent.models.weights import fingerprint
    from mmsent.tasks.checkpoints import load_encoder

    path = unimodal_checkpoints["text"]
    checkpoint = torch.load(path, weights_only=True)
    encoder = TextLSTMEncoder(30522, pretrained_embeddings="minilm", freeze_embeddings=True, embed_dim=384,
                              hidden_dim=64, out_dim=64)
    assert "encoder.embed.weight" not in checkpoint["state_dict"]
    sha1 = checkpoint["state_dict"]["encoder.embed.weight_sha1"]
    assert bytes(sha1.tolist()).hex() == fingerprint(encoder.embed.weight)["sha1"]
    assert path.stat().st_size < 5e6  # the MiniLM table alone is 47 MB
    main(["test", "-c", STAGE_CONFIGS["text"], *tiny_data_args, f"--ckpt_path={path}"])
    load_encoder(encoder, "text", path, "model.encoders.text")
    checkpoint["state_dict"]["encoder.embed.weight_sha1"] = torch.zeros(20, dtype=torch.uint8)
    torch.save(checkpoint, tmp_path / "other_table.ckpt")
    with pytest.raises(ValueError, match=r"(?s)model.encoders.text: the weights in \S*other_table.ckpt .*"
                                         r"embed.weight was left out .* configure the same pretrained_embeddings"):
        load_encoder(encoder, "text", tmp_path / "other_table.ckpt", "model.encoders.text")


def test_finetune_uses_one_sgd_group_per_modality(tiny_data_args, unimodal_checkpoints, tmp_path):
    stage4 = tmp_path / "fusion"
    main(["fit", *fusion_args(tiny_data_args, unimodal_checkpoints), *SHORT,
          f"--trainer.default_root_dir={stage4}"])
    cli = build_cli(["-c", f"{QUICKSTART}/4_fusion.yaml",
                     "-c", f"{QUICKSTART}/5_finetune.yaml", *tiny_data_args,
                     f"--model.init_args.init_checkpoint={stage4 / 'checkpoints' / 'last.ckpt'}"], run=False)
    cli.model.trainer = cli.trainer  # whose max_epochs the cosine schedules run over
    optimizer = cli.model.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"text", "audio", "fusion"}  # the video encoder stays frozen
    with open(f"{QUICKSTART}/5_finetune.yaml") as stream:
        settings = yaml.safe_load(stream)["model"]["init_args"]["param_groups"]
    for name, group in groups.items():
        assert group["initial_lr"] == settings[name]["lr"]  # "lr" is already scaled by the warm-up
        assert group["nesterov"] is True
    frozen = {name for name, p in cli.model.named_parameters() if not p.requires_grad}
    video = {name for name, _ in cli.model.named_parameters() if name.startswith("model.encoders.video.")}
    # Everything trains except the word-piece table that the text encoder's config freezes
    # and the video encoder, which the stage keeps frozen.
    assert video and frozen == {"model.encoders.text.embed.weight", *video}


def test_same_seed_gives_the_same_fused_weights(tiny_data_args, unimodal_checkpoints, tmp_path):
    def fused_state(seed, root):
        main(["fit", *fusion_args(tiny_data_args, unimodal_checkpoints), *SHORT, f"--seed_everything={seed}",
              "--trainer.deterministic=true", "--model.init_args.modality_dropout=0.3",
              f"--trainer.default_root_dir={root}"])
        return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    first, again, other = fused_state(3, tmp_path / "a"), fused_state(3, tmp_path / "b"), fused_state(4, tmp_path / "c")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first if key.startswith("model.head"))


GATED_ON_TEXT = ["--model.init_args.fusion=mmsent.models.fusion.GatedResidualFusion",
                 "--model.init_args.fusion.init_args.primary=text"]


def test_fused_model_can_start_as_the_text_model(tiny_data_args, unimodal_checkpoints):
    cli = build_cli([*fusion_args(tiny_data_args, unimodal_checkpoints, GATED_ON_TEXT),
                     "--model.init_args.head_from=text"], run=False)
    fused = cli.model.model.eval()
    text_state = torch.load(unimodal_checkpoints["text"], weights_only=True)["state_dict"]
    for key, value in fused.head.state_dict().items():
        assert torch.equal(value, text_state["head." + key])
    cli.datamodule.setup("validate")
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        text_only = fused.head(fused.encoders["text"](batch["text"], batch["text_mask"]))
        torch.testing.assert_close(fused(batch), text_only)


def test_head_of_another_size_is_rejected(tiny_data_args, unimodal_checkpoints):
    with pytest.raises(ValueError, match=r"model.unimodal.text: the head in .* does not fit the fused head"):
        main(["fit", *fusion_args(tiny_data_args, unimodal_checkpoints, GATED_ON_TEXT),
              "--model.init_args.head_from=text", "--model.init_args.head_hidden=16"])


def test_missing_checkpoint_fails_before_training_naming_key_and_path(tiny_data_args, tmp_path):
    missing = tmp_path / "nowhere.ckpt"
    with pytest.raises(FileNotFoundError, match=r"model.encoders.text: checkpoint .*nowhere.ckpt") as raised:
        main(["fit", *fusion_args(tiny_data_args, {"text": missing})])
    # The class's own message, not jsonargparse's wrapper that repeats the configuration.
    assert isinstance(raised.value, MissingFileError)
    assert str(raised.value) == f"model.encoders.text: checkpoint {missing} does not exist"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_of_another_modality_is_rejected(tiny_data_args, unimodal_checkpoints):
    swapped = {"text": unimodal_checkpoints["audio"]}
    with pytest.raises(ValueError, match="holds a audio encoder, but it is configured for text"):
        main(["fit", *fusion_args(tiny_data_args, swapped)])


def test_checkpoint_of_another_encoder_class_is_rejected(tiny_data_args, tmp_path):
    frame_cnn = ["--model.init_args.encoder=mmsent.models.FrameCNNEncoder"]
    main(["fit", "-c", STAGE_CONFIGS["video"], *tiny_data_args, *SHORT, *frame_cnn,
          f"--trainer.default_root_dir={tmp_path / 'frames'}"])
    checkpoint = tmp_path / "frames" / "checkpoints" / "last.ckpt"
    c3d = ["--model.init_args.video_encoder=mmsent.models.Visual3DCNNEncoder"]
    with pytest.raises(ValueError, match=r"model.video_encoder: .* \(class mmsent.models.visual.Visual3DCNNEncoder "
                                         r"vs mmsent.models.visual.FrameCNNEncoder\)"):
        main(["fit", *fusion_args(tiny_data_args, {"video": checkpoint}, c3d)])


def test_unknown_config_key_is_rejected_before_any_work(tiny_raw, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", STAGE_CONFIGS["text"], *data_args(tiny_raw, tmp_path), "--model.init_args.hiden_dim=3"])
    assert "hiden_dim" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists(), "nothing may be prepared before the config is valid"


def test_print_config_and_stacked_configs(tiny_data_args, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", "pipelines/quickstart/base.yaml", "-c", STAGE_CONFIGS["text"], *tiny_data_args,
              "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "mmsent.tasks.UnimodalTask"
    assert printed["data"]["source"]["class_path"] == "mmsent.data.RawClipSource"
    assert printed["trainer"]["max_epochs"] == 1  # the later file wins


@pytest.mark.parametrize("optimizer", ["torch.optim.Adam", "torch.optim.RMSprop", "torch.optim.Adadelta"])
def test_adaptive_optimizers_from_yaml(tiny_data_args, optimizer):
    cli = build_cli(["-c", STAGE_CONFIGS["audio"], *tiny_data_args, f"--model.init_args.optimizer={optimizer}",
                     "--model.init_args.optimizer.init_args.lr=0.5"], run=False)
    built = cli.model.configure_optimizers()
    assert type(built).__name__ == optimizer.rsplit(".", 1)[1]
    assert {g["name"] for g in built.param_groups} == {"audio", "head"}
    assert all(g["lr"] == 0.5 for g in built.param_groups)


def test_lecture_toolkit_from_yaml(tiny_data_args):
    """A weight penalty, epoch-level dropout masks and the saddle monitor, configured
    from the command line like any YAML key, in one short training run."""
    cli = build_cli([
        "-c", STAGE_CONFIGS["audio"], *tiny_data_args,
        "--model.init_args.optimizer=torch.optim.RMSprop",
        "--model.init_args.optimizer.init_args.lr=0.01",
        "--model.init_args.regularizer.l1=0.0001",
        "--model.init_args.regularizer.tikhonov=0.001",
        "--model.init_args.encoder.init_args.dropout_kind=bernoulli_epoch",
        "--trainer.callbacks+=mmsent.callbacks.EpochDropoutCallback",
        "--trainer.callbacks+=mmsent.callbacks.SaddlePointMonitor",
        "--trainer.callbacks.every_n_steps=2",
        "--trainer.callbacks.iterations=4",
        "--trainer.callbacks.max_overhead=null",  # a tiny fit: check on every due step
        "--trainer.max_epochs=2",
        "--trainer.log_every_n_steps=1",
    ], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    monitor = next(c for c in cli.trainer.callbacks if type(c).__name__ == "SaddlePointMonitor")
    assert monitor.history, "the saddle monitor must have probed the loss surface"
    assert {"lambda_max", "lambda_min"} <= set(monitor.history[0])
    # The task trains with the L1 loss: the checks evaluate its smooth surrogate.
    assert all(check["surrogate"] for check in monitor.history)
    assert "train/penalty" in cli.trainer.logged_metrics
    epoch_masks = [m for m in cli.model.modules() if getattr(m, "mode", None) == "epoch"]
    assert len(epoch_masks) == 2, "each MLP layer holds its own epoch-level mask"


def test_an_encoder_unlike_the_checkpoints_is_reported_by_the_project_message(tiny_data_args, unimodal_checkpoints):
    wider = ["--model.init_args.text_encoder=mmsent.models.TextLSTMEncoder",
             "--model.init_args.text_encoder.init_args.hidden_dim=32"]
    with pytest.raises(ConfigError, match=r"^model.text_encoder: the configured text encoder differs from the one") as raised:
        main(["fit", *fusion_args(tiny_data_args, {"text": unimodal_checkpoints["text"]}, wider)])
    assert "Does not validate" not in str(raised.value)


def test_the_error_shown_is_the_outermost_project_error_or_the_root_cause():
    wrapper = ValueError("jsonargparse's words, then the whole configuration")
    assert user_error(wrapper) is wrapper
    root = KeyError("inner")
    wrapper.__cause__ = root
    assert user_error(wrapper) is root
    explained = ConfigError("model.x: does not fit")
    wrapper.__cause__, explained.__cause__ = explained, root
    assert user_error(wrapper) is explained, "the project's message around a lower-level error"
    explained.__cause__ = ConfigError("lower")
    assert user_error(wrapper) is explained, "the outermost project error is the one shown"


def test_class_errors_are_shown_without_the_wrapper(tiny_data_args, capsys):
    audio = ["fit", "-c", STAGE_CONFIGS["audio"], *tiny_data_args, "--trainer.fast_dev_run=1"]
    # A choice outside its Literal type is refused as the command line parses, naming the key...
    with pytest.raises(SystemExit):
        main([*audio, "--model.init_args.loss=l3"])
    shown = " ".join(capsys.readouterr().err.split())
    assert "Parser key \"loss\": Expected a typing.Literal['l1', 'mse', 'huber']. Got value: l3" in shown
    # ...and by the class itself when built from Python or a model folder's record.
    with pytest.raises(ValueError) as raised:
        BaseTask(loss="l3")
    assert str(raised.value) == "model.loss must be one of ['l1', 'mse', 'huber'], got 'l3'"
    with pytest.raises(ValueError) as raised:
        main([*audio, "--model.init_args.encoder.init_args.dropout=1.5"])
    assert str(raised.value) == "p must be in [0, 1), got 1.5"


def test_learning_rates_are_logged_per_group_once_an_epoch(tiny_data_args, tmp_path):
    csv = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'csv'}"]
    main(["fit", "-c", STAGE_CONFIGS["audio"], *tiny_data_args, *SHORT, "--trainer.max_epochs=2", *csv])
    rows = list(csv_module.DictReader(next((tmp_path / "csv").rglob("metrics.csv")).open()))
    logged = [{k: float(v) for k, v in row.items() if k.startswith("lr-Adam/") and v} for row in rows]
    assert [rates for rates in logged if rates] == [{"lr-Adam/audio": 0.0003, "lr-Adam/head": 0.0003}] * 2
    # Without a logger (the tiny configs' trainer.logger: false) the monitor stands aside.
    cli = build_cli(["-c", STAGE_CONFIGS["audio"], *tiny_data_args, *SHORT], run=False)
    assert not cli.trainer.loggers
    assert any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_a_stage_prints_no_warning_that_is_not_the_users_to_act_on(tiny_data_args, tmp_path):
    import os
    import subprocess
    import sys

    # The default logger, as a pipeline run with --no-wandb gives each stage.
    command = [sys.executable, "-m", "mmsent", "fit", "-c", f"{QUICKSTART}/base.yaml", "-c", f"{QUICKSTART}/1_text.yaml",
               *tiny_data_args, *SHORT, "--trainer.logger=true"]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    for message in ("tensorboardX", "Tip:", "LeafSpec", "not recommended to provide both args",
                    "in eval mode at the start of training", "You have overridden"):
        assert message not in output
    assert "Warning:" not in output, output


def test_train_loss_is_logged_only_on_the_steps_the_logger_writes(tiny_data_args, tmp_path, monkeypatch):
    from mmsent.tasks.base import BaseTask

    calls = []
    original = BaseTask.log

    def counting(self, name, *args, **kwargs):
        calls.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(BaseTask, "log", counting)
    csv = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'csv'}"]
    main(["fit", "-c", STAGE_CONFIGS["audio"], *tiny_data_args, "--trainer.max_epochs=1", "--data.batch_size=4",
          "--trainer.limit_train_batches=7", "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=3", *csv])
    rows = list(csv_module.DictReader(next((tmp_path / "csv").rglob("metrics.csv")).open()))
    assert [int(row["step"]) for row in rows if row.get("train/loss")] == [2, 5]
    assert calls.count("train/loss") == 2, "the steps the logger does not write log nothing"


def test_mmsent_alone_or_with_help_lists_every_command_and_each_has_its_help(capsys):
    from mmsent.main import COMMANDS

    main([])
    alone = capsys.readouterr().out
    main(["--help"])
    assert capsys.readouterr().out == alone
    listed = [line.split()[0] for line in alone.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == ["fit", "validate", "test", "predict", "pipeline", "export", "score"] == list(COMMANDS)
    for command in listed:
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        out = capsys.readouterr()
        assert f"{command} " in out.out.splitlines()[0], (command, out)


@pytest.mark.parametrize("args, message", [
    (["export", "runs/x"], "mmsent export: the following arguments are required: --to (see mmsent export --help)"),
    (["score", "models/x"], "mmsent score: the following arguments are required: input (see mmsent score --help)"),
    (["score", "m", "x", "--format", "xml"], "mmsent score: argument --format: invalid choice: 'xml'"),
    (["pipeline", "go"], "mmsent pipeline: argument command: invalid choice: 'go'"),
    (["fit", "--trainer.max_epochs=x"], 'mmsent fit: Parser key "trainer.max_epochs": Does not validate'),
    (["test", "--no_such_key=1"], "mmsent test: unrecognized arguments: --no_such_key=1 (see mmsent test --help)"),
    (["trian"], ("'trian' is not an mmsent command; the commands: fit, validate, test, predict, pipeline, export, "
                "score (see mmsent --help)")),
])
def test_a_command_line_that_does_not_parse_gets_the_one_line_form(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    shown = capsys.readouterr().err
    assert shown.startswith(f"mmsent: error: {message}") and shown.count("\n") == 1, shown


def test_mmsent_score_imports_no_training_code():
    code = "from mmsent.main import main\ntry:\n    main(['score', '--help'])\nexcept SystemExit:\n    pass"
    assert training_modules_after(code, ("mmsent.pipeline", "mmsent.tasks", "mmsent.cli")) == []


def test_data_only_figures_are_computed_once_per_split_and_logged_every_epoch(tiny_data_args, tmp_path,
                                                                                 monkeypatch):
    from mmsent import metrics
    from mmsent.tasks import base

    calls = []

    def counted(*args):
        calls.append(args)
        return metrics.baseline_metrics(*args)

    monkeypatch.setattr(base, "baseline_metrics", counted)
    cli = build_cli(["fit", "-c", STAGE_CONFIGS["audio"], *tiny_data_args, "--trainer.max_epochs=3",
                     "--trainer.num_sanity_val_steps=0", "--trainer.logger=true",
                     f"--trainer.default_root_dir={tmp_path}"])
    assert len(calls) == 1, "the validation split's baselines are computed in the first epoch only"
    with open(next(tmp_path.rglob("metrics.csv"))) as stream:
        rows = [row for row in csv_module.DictReader(stream) if row["val/MAE"]]
    assert len(rows) == 3 and all(row["val/best_achievable_MAE"] for row in rows)
    assert len({row["val/baseline/MAE"] for row in rows}) == 1 and rows[0]["val/baseline/MAE"]
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert len(calls) == 2, "and the test split's once more"
