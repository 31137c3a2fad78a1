"""A model folder or run folder is data: loading it runs no code it names, its weights
load strictly, an export replaces its folder whole, and a path is never a Hub id."""

import errno
import json
import re
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import mmsent
from mmsent import SentimentModel
from mmsent.errors import ConfigError, MissingFileError
from mmsent.hub.export import export
from mmsent.io import atomic_write, save_json, write_folder
from mmsent.main import main
from mmsent.models import AcousticMLPEncoder, ConcatFusion
from mmsent.models.config import HubMixin, build_module
from mmsent.pretrained import resolve_model_path
from mmsent.tasks import FusionTask
from mmsent.tasks.checkpoints import load_fused, read_checkpoint


def tiny_config() -> dict:
    """A two-modality model folder's config, small enough to build in milliseconds."""
    return {"format_version": 1,
            "encoders": {"text": {"class_path": "mmsent.models.text.TextLSTMEncoder",
                                  "init_args": {"input_dim": 30, "embed_dim": 8, "hidden_dim": 8, "out_dim": 6}},
                         "audio": {"class_path": "mmsent.models.audio.AcousticMLPEncoder",
                                   "init_args": {"input_dim": 5, "hidden_dims": [8], "out_dim": 6}}},
            "fusion": {"class_path": "mmsent.models.fusion.ConcatFusion",
                       "init_args": {"input_dims": {"text": 6, "audio": 6}, "hidden_dim": 8, "out_dim": 4}},
            "head": {"class_path": "mmsent.models.fusion.RegressionHead", "init_args": {"in_dim": 4}},
            "active_modalities": ["text", "audio"],
            "preprocessing": {"text": {"tokenizer_file": None}}}


def tiny_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"text": torch.randint(1, 30, (3, 4), generator=generator), "text_mask": torch.ones(3, 4, dtype=torch.bool),
            "audio": torch.randn(3, 7, 5, generator=generator), "audio_mask": torch.ones(3, 7, dtype=torch.bool),
            "text_present": torch.ones(3), "audio_present": torch.ones(3)}


def write_tiny_model(folder: Path) -> SentimentModel:
    torch.manual_seed(0)
    model = SentimentModel(tiny_config())
    model.save_pretrained(folder)
    return model


def set_class_path(folder: Path, key: str, value: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    target = config["encoders"][key] if key in ("text", "audio") else config[key]
    target["class_path"] = value
    (folder / "config.json").write_text(json.dumps(config))


def failure(exit_: SystemExit, capsys) -> str:
    """The message of a command that must have failed: its exit status is checked."""
    assert exit_.code not in (0, None), "the command exited 0"
    return (exit_.code if isinstance(exit_.code, str) else "") + capsys.readouterr().err


# --- loading runs no code --------------------------------------------------------------------------


def test_a_class_path_outside_the_registry_is_refused_before_any_import(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    write_tiny_model(folder)
    set_class_path(folder, "audio", "venv.__main__.X")
    # Were venv.__main__ imported, it would create an environment at each argument and exit.
    monkeypatch.setattr(sys, "argv", ["mmsent", str(tmp_path / "env")])
    sys.modules.pop("venv.__main__", None)
    with pytest.raises(ConfigError) as error:
        SentimentModel.from_pretrained(folder)
    message = str(error.value)
    assert str(folder / "config.json") in message and "encoders.audio.class_path" in message
    assert "'venv.__main__.X'" in message and "mmsent.register" in message
    assert "venv.__main__" not in sys.modules
    assert not (tmp_path / "env").exists()


def test_the_cli_refuses_a_venv_class_path_and_creates_no_environment(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    write_tiny_model(folder)
    set_class_path(folder, "fusion", "venv.__main__.X")
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(sys, "argv", ["mmsent", str(tmp_path / "env")])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMSENT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["score", str(folder), str(tmp_path / "data")])
    assert "config.json: fusion.class_path: 'venv.__main__.X' is not a registered mmsent module" in \
        failure(exit_.value, capsys)
    assert not list(tmp_path.rglob("pyvenv.cfg"))


def test_a_payload_shipped_in_the_model_folder_never_runs(tmp_path, monkeypatch):
    folder = tmp_path / "tiny"
    write_tiny_model(folder)
    marker = tmp_path / "ran.txt"
    (folder / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nimport torch\nEvil = torch.nn.Linear\n")
    set_class_path(folder, "head", "tiny.payload.Evil")
    # Loaded from the folder's parent, as `python -c` there would: the parent is importable.
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="head.class_path: 'tiny.payload.Evil' is not a registered mmsent module"):
        SentimentModel.from_pretrained("tiny")
    assert not marker.exists()


class UserEncoder(torch.nn.Module, HubMixin):
    """An encoder from outside mmsent, as a user's own project defines one."""

    def __init__(self, input_dim: int, out_dim: int = 6) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.linear = torch.nn.Linear(input_dim, out_dim)

    def forward(self, x, mask):
        return self.linear(x.mean(1))


def test_a_registered_user_class_and_old_mmsent_class_paths_load(tmp_path):
    record = {"class_path": f"{__name__}.UserEncoder", "init_args": {"input_dim": 5}}
    with pytest.raises(ConfigError, match="not a registered mmsent module"):
        build_module(record, what="checkpoint encoder_config")
    mmsent.register(UserEncoder)
    assert isinstance(build_module(record), UserEncoder)
    config = tiny_config()
    config["encoders"]["audio"] = {"class_path": f"{__name__}.UserEncoder", "init_args": {"input_dim": 5}}
    torch.manual_seed(0)
    SentimentModel(config).save_pretrained(tmp_path / "user")
    assert isinstance(SentimentModel.from_pretrained(tmp_path / "user").encoders["audio"], UserEncoder)
    # The class paths mmsent has always recorded, and the public ones, still build.
    assert isinstance(build_module({"class_path": "mmsent.models.AcousticMLPEncoder", "init_args": {"input_dim": 5}}),
                      AcousticMLPEncoder)


def test_export_never_imports_or_calls_the_data_source_a_run_folder_names(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MMSENT_DEBUG", raising=False)
    write_tiny_model(tmp_path / "model")
    run = tmp_path / "run"
    checkpoint = tmp_path / "model"  # a model folder reads as the fused checkpoint it came from
    run.joinpath("fusion").mkdir(parents=True)
    marker = tmp_path / "ran.txt"
    config = run / "fusion" / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": {"class_path": "subprocess.Popen",
                                                         "init_args": {"args": f"touch {marker}", "shell": True}}}}))
    (run / "manifest.json").write_text(json.dumps({"stages": {"fusion": {
        "status": "done", "best_checkpoint": str(checkpoint), "config": str(config)}}}))
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(run), "--to", str(tmp_path / "exported")])
    time.sleep(0.5)  # a shell started in the background would have touched the marker by now
    assert "data.source.class_path 'subprocess.Popen' is not one of mmsent's raw-clip sources" in \
        failure(exit_.value, capsys)
    assert not marker.exists() and not (tmp_path / "exported").exists()


def test_a_stage_whose_config_exits_on_import_fails_the_pipeline(tmp_path, monkeypatch, capsys):
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    stage = tmp_path / "stage.yaml"
    stage.write_text(yaml.safe_dump({"model": {"class_path": "exits_on_import.Task"}}))
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "exits", "output_dir": str(tmp_path / "out"),
                                        "stages": [{"name": "bad", "configs": [str(stage)]}]}))
    monkeypatch.delenv("MMSENT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "run", str(pipeline), "--no-wandb"])
    error = failure(exit_.value, capsys)
    assert "stage 'bad'" in error and "exited (status 0) before the stage finished" in error


# --- strict weights --------------------------------------------------------------------------------


def tamper_weights(path: Path, change) -> None:
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize(("change", "named"), [
    (lambda s: s.pop("model.encoders.audio.net.0.weight"), "missing model.encoders.audio.net.0.weight"),
    (lambda s: s.update(extra=torch.zeros(2)), "unexpected extra"),
    (lambda s: s.update({"model.head.net.0.bias": torch.zeros(2)}), "of another shape: model.head.net.0.bias [2]"),
    (lambda s: s["model.fusion.net.0.weight"].__setitem__((0, 0), float("nan")),
     "not finite (NaN or infinite values) in model.fusion.net.0.weight"),
])
def test_weights_that_do_not_fit_exactly_are_refused_naming_the_tensor(tmp_path, change, named):
    write_tiny_model(tmp_path)
    tamper_weights(tmp_path / "model.safetensors", change)
    with pytest.raises(ConfigError, match=str(tmp_path / "model.safetensors")) as error:
        SentimentModel.from_pretrained(tmp_path)
    assert named in str(error.value)


def test_an_encoder_folder_missing_a_tensor_is_refused(tmp_path):
    encoder = AcousticMLPEncoder(5, hidden_dims=[8], out_dim=6)
    encoder.save_pretrained(tmp_path)
    tamper_weights(tmp_path / "model.safetensors", lambda s: s.pop("net.4.bias"))
    with pytest.raises(ConfigError, match="missing net.4.bias"):
        AcousticMLPEncoder.from_pretrained(tmp_path)


def test_a_config_json_changed_after_saving_is_refused(tmp_path):
    write_tiny_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["active_modalities"] = ["text"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="differs from the one these weights were saved with at active_modalities"):
        SentimentModel.from_pretrained(tmp_path)


def test_a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor(tmp_path):
    write_tiny_model(tmp_path / "model")
    checkpoint = read_checkpoint(tmp_path / "model", "model")
    checkpoint["state_dict"]["model.head.net.0.weight"][0, 0] = float("inf")
    path = tmp_path / "fused.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ConfigError, match=r"model.init_checkpoint: .*fused.ckpt: weights not finite .* "
                                          r"in model.head.net.0.weight"):
        load_fused(SentimentModel(tiny_config()).model, path, "model.init_checkpoint")


def test_a_model_folder_is_taken_wherever_a_checkpoint_is(tmp_path):
    model = write_tiny_model(tmp_path / "model")
    folder, dims = str(tmp_path / "model"), {"text": 30, "audio": 5}
    fusion = partial(ConcatFusion, hidden_dim=8, out_dim=4)
    finetuned = FusionTask(init_checkpoint=folder, fusion=fusion, freeze_encoders=False, input_dims=dims).eval()
    with torch.no_grad():
        assert torch.equal(finetuned(tiny_batch()), model(tiny_batch()))
    fused = FusionTask(encoders={"audio": folder}, input_dims=dims)
    for key, value in model.encoders["audio"].state_dict().items():
        assert torch.equal(fused.model.encoders["audio"].state_dict()[key], value)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["encoders"]["audio"]["init_args"]["out_dim"] = 7
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="differs from the one these weights were saved with at encoders.audio"):
        FusionTask(encoders={"audio": folder}, input_dims=dims)


# --- paths are paths -------------------------------------------------------------------------------


def test_a_missing_local_path_is_never_sent_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("asked the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    for name in ("./models/tiny", "~/no-such-mmsent-model", "runs/a/b", str(tmp_path / "missing")):
        started = time.monotonic()
        with pytest.raises(MissingFileError, match="not looked up on the Hugging Face Hub"):
            SentimentModel.from_pretrained(name)
        with pytest.raises(MissingFileError, match="not looked up on the Hugging Face Hub"):
            resolve_model_path(name)
        assert time.monotonic() - started < 1


def test_offline_a_hub_id_fails_at_once_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    started = time.monotonic()
    with pytest.raises(MissingFileError, match="offline"):
        SentimentModel.from_pretrained("mmsent-org/no-such-model")
    with pytest.raises(MissingFileError, match="offline"):
        resolve_model_path("mmsent-org/no-such-model")
    assert time.monotonic() - started < 5


# --- atomic export ---------------------------------------------------------------------------------


def test_export_refuses_a_folder_that_is_not_an_export_unless_told(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    with pytest.raises(ConfigError, match="not an mmsent model folder.*--overwrite"):
        export(tmp_path / "run", mine)
    assert (mine / "README.md").read_text() == "my notes"
    with pytest.raises(MissingFileError, match="manifest.json"):  # past the check, on to the run folder
        export(tmp_path / "run", mine, overwrite=True)


def test_an_export_that_fails_midway_leaves_the_previous_folder_and_nothing_beside_it(tmp_path):
    target = tmp_path / "model"
    write_folder(target, lambda folder: (folder / "config.json").write_text('{"format_version": 1}'))

    def out_of_disk(folder: Path) -> None:
        (folder / "config.json").write_text('{"format_version": 1, "new": true}')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_folder(target, out_of_disk)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (target / "config.json").read_text() == '{"format_version": 1}'


def test_a_file_write_that_fails_names_its_destination_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "notes.json"
    save_json(target, {"old": True})

    def refused(part: Path) -> None:
        part.write_text("half")
        raise PermissionError(errno.EACCES, "Permission denied", str(part))

    with pytest.raises(PermissionError, match=re.escape(f"writing {target} failed: Permission denied")):
        atomic_write(target, refused)
    with pytest.raises(FileNotFoundError, match="elsewhere.txt"):  # an error about another file stays its own
        atomic_write(target, lambda part: (tmp_path / "elsewhere.txt").read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["notes.json"]
    assert json.loads(target.read_text()) == {"old": True}


class PluginEncoder(UserEncoder):
    """An encoder a package declares as an entry point of the ``mmsent.modules`` group."""


def test_an_entry_point_class_loads_and_no_other_entry_point_is_imported(monkeypatch):
    from importlib.metadata import EntryPoint

    import mmsent.models.registry as registry_module

    points = [EntryPoint("broken", "no_such_package_of_mmsent:Thing", "mmsent.modules"),
              EntryPoint("plugin", f"{__name__}:PluginEncoder", "mmsent.modules")]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [p for p in points if p.group == group])
    built = build_module({"class_path": f"{__name__}.PluginEncoder", "init_args": {"input_dim": 5}})
    assert isinstance(built, PluginEncoder)  # and the broken entry point was never loaded


def test_a_folder_exported_before_weights_recorded_their_config_loads_as_before(tmp_path):
    model = write_tiny_model(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with torch.no_grad():
        assert torch.equal(SentimentModel.from_pretrained(tmp_path)(tiny_batch()), model.eval()(tiny_batch()))


def test_a_cut_config_of_an_encoder_folder_is_named(tmp_path):
    folder = tmp_path / "encoder"
    AcousticMLPEncoder(input_dim=4, hidden_dims=[8], out_dim=3).save_pretrained(folder)
    (folder / "config.json").write_text('{"input_dim": 4,')
    with pytest.raises(ConfigError, match=rf"{folder / 'config.json'}: not valid JSON"):
        AcousticMLPEncoder.from_pretrained(folder)
