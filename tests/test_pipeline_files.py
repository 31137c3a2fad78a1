"""The shipped pipeline files and ``extends``: every file and each stage's config stack
checked as ``mmsent pipeline run`` checks them before its first stage, and a pipeline
that extends another resolving to exactly the stages its whole file listed."""

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from helpers import CONF, REPO

from mmsent.errors import ConfigError, MissingFileError
from mmsent.pipeline import Pipeline, load_pipeline
from mmsent.pipeline.runner import check_stages

PIPELINES = REPO / "pipelines"
# The pipelines now written with ``extends``, as whole files before that.
FLAT = CONF / "flat_pipelines"


def write(path: Path, spec: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def resolved(pipeline: Pipeline) -> dict:
    """Everything the runner reads of a pipeline, config files by their real path."""
    stages = [{**asdict(stage), "configs": [config.resolve() for config in stage.configs]}
              for stage in pipeline.stages]
    return {"name": pipeline.name, "output_dir": pipeline.output_dir, "args": pipeline.args,
            "wandb": asdict(pipeline.wandb), "stages": stages}


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_pipeline_and_its_stage_configs_check(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the configs' relative data and run folders would go
    pipeline = load_pipeline(path)
    check_stages(pipeline, pipeline.stages, [])
    assert not list(tmp_path.iterdir()), "checking a pipeline prepares no data and starts no run"


def test_the_check_names_a_mistyped_key_in_a_stage_config(tmp_path):
    config = (PIPELINES / "quickstart" / "4_fusion.yaml").read_text()
    assert "  max_epochs:" in config
    write(tmp_path / "4_fusion.yaml", config.replace("  max_epochs:", "  max_epoch:", 1))
    path = write(tmp_path / "typo.yaml", {
        "extends": str(PIPELINES / "quickstart.yaml"),
        "stages": [{"name": "fusion", "configs": [str(PIPELINES / "quickstart" / "base.yaml"),
                                                  "4_fusion.yaml"]}]})
    pipeline = load_pipeline(path)
    with pytest.raises(ConfigError, match=r"stage 'fusion' \(.*4_fusion.yaml\): .*max_epoch"):
        check_stages(pipeline, pipeline.stages, [])


@pytest.mark.parametrize("name", sorted(p.name for p in FLAT.glob("*.yaml")))
def test_a_pipeline_written_with_extends_resolves_as_its_whole_file_did(name, tmp_path):
    new = PIPELINES / name
    assert "extends:" in new.read_text(), f"{new} should build on another pipeline"
    # The whole file beside the config folders it names, as it lay in pipelines/.
    for folder in PIPELINES.iterdir():
        if folder.is_dir():
            (tmp_path / folder.name).symlink_to(folder)
    old = write(tmp_path / name, (FLAT / name).read_text())
    assert resolved(load_pipeline(new)) == resolved(load_pipeline(old))


def test_extends_merges_stages_by_name_and_replaces_top_level_keys(tmp_path):
    for config in ["a.yaml", "b.yaml", "sub/a2.yaml"]:
        write(tmp_path / config, "trainer: {max_epochs: 1}\n")
    write(tmp_path / "base.yaml", {
        "name": "base", "output_dir": "runs/base", "args": ["--seed_everything=1"],
        "wandb": {"project": "p", "tags": ["base"]},
        "stages": [{"name": "one", "configs": ["a.yaml"], "args": ["--x=1"]},
                   {"name": "two", "configs": ["a.yaml", "b.yaml"],
                    "checkpoints": {"model.init_args.init_checkpoint": "one"}},
                   {"name": "three", "configs": ["b.yaml"]}]})
    child = write(tmp_path / "sub" / "child.yaml", {
        "extends": "../base.yaml", "args": ["--seed_everything=2"],
        "stages": [{"name": "first_new"},
                   {"name": "one", "configs": ["a2.yaml"]},
                   {"name": "one_b", "checkpoints": {"model.init_args.init_checkpoint": "one"}},
                   {"name": "one_c"},
                   {"name": "two", "checkpoints": {}}]})
    pipeline = load_pipeline(child)
    assert (pipeline.name, pipeline.output_dir) == ("child", Path("runs") / "child"), "never inherited"
    assert pipeline.args == ["--seed_everything=2"]
    assert (pipeline.wandb.enabled, pipeline.wandb.project, pipeline.wandb.tags) == (True, "p", ["base"])
    assert [s.name for s in pipeline.stages] == ["one", "one_b", "one_c", "two", "three", "first_new"]
    one, two = pipeline.stage("one"), pipeline.stage("two")
    assert one.configs == [tmp_path / "sub" / "a2.yaml"], "paths relative to the file that writes them"
    assert one.args == ["--x=1"], "fields the child leaves out are the parent's"
    assert two.configs == [tmp_path / "a.yaml", tmp_path / "b.yaml"] and two.checkpoints == {}
    assert pipeline.stage("one_b").checkpoints == {"model.init_args.init_checkpoint": "one"}
    # A chain: the grandchild keeps what the child changed and turns W&B off.
    grandchild = load_pipeline(write(tmp_path / "sub" / "grandchild.yaml", {
        "extends": "child.yaml", "name": "g", "wandb": None,
        "stages": [{"name": "three", "args": ["--y=2"]}]}))
    assert (grandchild.name, grandchild.output_dir, grandchild.wandb.enabled) == ("g", Path("runs") / "grandchild", False)
    assert grandchild.stage("one").configs == one.configs and grandchild.args == pipeline.args
    assert [s.name for s in grandchild.stages] == [s.name for s in pipeline.stages]
    assert grandchild.stage("three").args == ["--y=2"]


def test_extends_errors_name_the_files(tmp_path):
    write(tmp_path / "a.yaml", "trainer: {max_epochs: 1}\n")
    base = {"stages": [{"name": "one", "configs": ["a.yaml"]}]}
    write(tmp_path / "base.yaml", base)
    bad, loop, nowhere = (re.escape(str(tmp_path / name)) for name in ["bad.yaml", "loop.yaml", "nowhere.yaml"])
    cases = [
        ({"extends": "nowhere.yaml"}, rf"{bad}: extends {nowhere}, which does not exist"),
        ({"extends": "bad.yaml"}, rf"{bad}: extends comes back .*: {bad} -> {bad}$"),
        ({"extends": "loop.yaml"}, rf"{loop}: extends comes back .*: {bad} -> {loop} -> {bad}$"),
        ({"extends": "base.yaml", "stages": [{"name": "one", "config": ["a.yaml"]}]},
         rf"{bad}: stages\[0\]: .*'config'"),
        ({"extends": "base.yaml", "stages": [{"name": "one", "configs": ["b.yaml"]}]},
         rf"{bad}: stages\[0\]: config file {re.escape(str(tmp_path / 'b.yaml'))} does not exist"),
        ({"extends": "base.yaml", "stages": [{"name": "one"}, {"name": "one"}]},
         rf"{bad}: stages\[1\]: duplicate stage name 'one'"),
        ({"extends": "base.yaml", "stages": [{"name": "two", "checkpoints": {"k": "three"}}, {"name": "three"}]},
         r"bad.yaml: stages\[0\]: checkpoints.k takes stage 'three', which does not run before 'two'"),
        ({"extends": "base.yaml", "wandb": {"mode": "sometimes"}}, r"bad.yaml: wandb: .*mode"),
        ({"extends": ["base.yaml"]}, r"bad.yaml: .*extends"),
    ]
    write(tmp_path / "loop.yaml", {"extends": "bad.yaml", "stages": []})
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_pipeline(write(tmp_path / "bad.yaml", spec))
    with pytest.raises(MissingFileError, match=r"pipeline file .*absent.yaml does not exist"):
        load_pipeline(tmp_path / "absent.yaml")


def test_early_stopping_is_stated_once_and_kept_by_the_fused_stages():
    from mmsent.cli import check_config

    def callbacks(*configs: str) -> list[tuple[str, dict]]:
        parsed = check_config([arg for config in configs for arg in ("-c", str(PIPELINES / "mosi" / config))])
        return [(c.class_path.rsplit(".", 1)[1], dict(c.init_args)) for c in parsed.trainer.callbacks]

    base = callbacks("base.yaml", "1_text.yaml")
    assert [name for name, _ in base] == ["EarlyStopping"]
    assert callbacks("base.yaml", "3_fusion.yaml") == base
    assert callbacks("base.yaml", "3_fusion.yaml", "4_finetune.yaml") == base
    assert base[0][1]["patience"] == 8 and base[0][1]["monitor"] == "val/MAE"
