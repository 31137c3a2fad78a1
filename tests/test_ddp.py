"""Two CPU processes (DDP over gloo) train and score the fused stages as one process would."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import yaml
from helpers import CONF, REPO
from test_cli import QUICKSTART, STAGE_CONFIGS, train_stage
from test_pipeline import manifest, write_pipeline
from torch.utils.data import DistributedSampler

from mmsent.cli import build_cli
from mmsent.errors import ConfigError
from mmsent.pipeline import load_pipeline, ranks, run, runner
from mmsent.pipeline.figures import read_predictions
from mmsent.pipeline.manifest import Manifest
from mmsent.pipeline.runner import stage_arguments

DDP = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
# Clips moved from the evaluation splits to training, so validation (7 clips) and test
# (5) split unevenly over two processes and training (36) in two whole batches.
MOVED_TO_TRAIN = {("vid0013", "4"), ("vid0008", "3")}
BATCH = 18


@pytest.fixture(scope="module")
def uneven_raw(tiny_raw, tmp_path_factory) -> Path:
    """The tiny dataset with odd-sized validation and test splits."""
    root = tmp_path_factory.mktemp("uneven") / "raw"
    shutil.copytree(tiny_raw, root)
    with (tiny_raw / "label.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        if (row["video_id"], row["clip_id"]) in MOVED_TO_TRAIN:
            row["mode"] = "train"
    with (root / "label.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def source_args(raw_root: Path, cache: Path, root: Path) -> list[str]:
    source = {"class_path": "ddp_probe.CountingSource",
              "init_args": {"root": str(raw_root), "frames": 8, "frame_size": 32, "tokenizer": "minilm"}}
    return ["-c", str(CONF / "tiny_data.yaml"), f"--data.source={json.dumps(source)}",
            f"--data.cache_dir={cache}", f"--trainer.default_root_dir={root}", "--data.batch_size=4"]


@pytest.fixture()
def probe_env(tmp_path, monkeypatch) -> Path:
    """Runs in the repository with the probe importable here and in child processes."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(REPO / "tests"),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    probe = tmp_path / "unimodal-probe"
    probe.mkdir()
    monkeypatch.setenv("MMSENT_PROBE_DIR", str(probe))
    return tmp_path


def run_ddp(subcommand: str, args: list[str], probe: Path) -> None:
    """Runs ``mmsent <subcommand>`` with two processes; the probe records what each one did."""
    probe.mkdir()
    env = {**os.environ, "MMSENT_PROBE_DIR": str(probe), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mmsent", subcommand, *args, *DDP,
                           "--trainer.callbacks+=ddp_probe.RankRecorder"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "sync_dist=True" not in done.stderr, "an epoch value is logged without being gathered"


def read_ranks(probe: Path, pattern: str) -> list[dict]:
    return [json.loads((probe / pattern.format(rank=rank)).read_text()) for rank in (0, 1)]


def train_ids(probe: Path, epoch: int) -> dict[int, list[str]]:
    return {rank: (probe / f"train-rank{rank}-epoch{epoch}.txt").read_text().split() for rank in (0, 1)}


def assert_same_metrics(gathered: dict, single: dict, prefix: str) -> None:
    names = sorted(name for name in single if name.startswith(prefix))
    assert names and sorted(name for name in gathered if name.startswith(prefix)) == names
    differing = {name: (gathered[name], single[name]) for name in names
                 if gathered[name] != pytest.approx(single[name], abs=1e-6)}
    assert not differing, f"gathered over two processes vs one process: {differing}"


def check_one_fit(probe: Path, every_train_id: list[str], epochs: int) -> list[dict]:
    """The checks every multi-process fit passes; returns each rank's fit record."""
    for epoch in range(epochs):
        ids = train_ids(probe, epoch)
        assert len(ids[0]) == len(ids[1]) == len(every_train_id) // 2
        assert sorted(ids[0] + ids[1]) == sorted(every_train_id), f"epoch {epoch}: not every clip exactly once"
    ranks = read_ranks(probe, "fit-rank{rank}.json")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[1]["saves"] == [], "only rank 0 writes files"
    assert ranks[0]["selection"] is not None and ranks[1]["selection"] is None, "rank 0 selects, once"
    assert ranks[0]["weights"] == ranks[1]["weights"], "every rank must end the fit with the same weights"
    for epoch in range(epochs):
        rank0, rank1 = read_ranks(probe, f"val-rank{{rank}}-epoch{epoch}.json")
        assert rank0 == rank1, "every rank logs the metrics of the whole split"
    return ranks


def test_shares_cover_each_split_once(uneven_raw, probe_env):
    """Each process's loaders, as Lightning keeps them: training shares of equal size,
    each clip once, and still a batch when a share is smaller than one; evaluation
    shares uneven, each row once."""
    args = [*source_args(uneven_raw, probe_env / "cache", probe_env / "run"), "-c", STAGE_CONFIGS["audio"],
            "--data.batch_size=32"]
    data = build_cli(args, run=False).datamodule
    ids = {}
    for rank in (0, 1):
        data.trainer = SimpleNamespace(world_size=2, global_rank=rank, lightning_module=None)
        loaders = {"train": data.train_dataloader(), "valid": data.val_dataloader(), "test": data.test_dataloader()}
        for loader in loaders.values():
            assert isinstance(loader.sampler, DistributedSampler), "Lightning would replace the sampler"
        loaders["train"].sampler.set_epoch(3)
        ids[rank] = {name: [clip for batch in loader for clip in batch["id"]] for name, loader in loaders.items()}
    assert len(ids[0]["train"]) == len(ids[1]["train"]) == BATCH
    for name in ("train", "valid", "test"):
        assert sorted(ids[0][name] + ids[1][name]) == sorted(data.split(name)["id"]), name
    assert [len(ids[rank]["valid"]) for rank in (0, 1)] == [4, 3]


def fused_on_two_processes(raw: Path, tmp_path: Path, modalities: tuple[str, ...], extra: list[str]):
    """Trains the unimodal stages in this process, then fits the fused stage on two.

    Returns:
        tuple: The fused stage's arguments (without DDP), its probe folder, and a
        one-process CLI of the same configuration.
    """
    unimodal = {m: train_stage(source_args(raw, tmp_path / "cache", tmp_path / m), STAGE_CONFIGS[m], tmp_path / m)
                for m in modalities}
    # A cache of its own, so the two-process run prepares the data itself.
    args = [*source_args(raw, tmp_path / "ddp-cache", tmp_path / "fusion"), "-c", f"{QUICKSTART}/4_fusion.yaml",
            *[f"--model.init_args.encoders.{m}={path}" for m, path in unimodal.items()],
            f"--data.batch_size={BATCH}", *extra]
    probe = tmp_path / "fusion-probe"
    run_ddp("fit", args, probe)
    decoders = (probe / "loads.txt").read_text().split()
    assert len(set(decoders)) == 1 and len(decoders) == 48, "the data must be prepared once, by one process"
    return args, probe, build_cli(args, run=False)


def test_ddp_fusion_matches_one_process(uneven_raw, probe_env):
    """Fusion over text and audio, one epoch: prepared once, each training clip once,
    only rank 0 writes, one selection, and the validation metrics gathered over uneven
    shards equal one process's on the same checkpoint."""
    _, probe, single = fused_on_two_processes(uneven_raw, probe_env, ("text", "audio"),
                                              ["--trainer.max_epochs=1", "--trainer.num_sanity_val_steps=0"])
    split_sizes = {name: len(single.datamodule.split(name)) for name in ("train", "valid", "test")}
    assert split_sizes == {"train": 2 * BATCH, "valid": 7, "test": 5}
    ranks = check_one_fit(probe, list(single.datamodule.split("train")["id"]), epochs=1)
    assert sorted(Path(path).name for path in ranks[0]["saves"]) == [
        "best-epoch000.ckpt", "last.ckpt", "selected.ckpt"]
    (gathered,) = read_ranks(probe, "val-rank{rank}-epoch0.json")[:1]
    checkpoint = probe_env / "fusion" / "checkpoints" / "best-epoch000.ckpt"
    (alone,) = single.trainer.validate(single.model, datamodule=single.datamodule, ckpt_path=str(checkpoint),
                                       verbose=False)
    assert_same_metrics(gathered, alone, "val/")


@pytest.mark.slow  # 5-8 minutes on the shared 2-core machine: three launches of two processes
def test_ddp_every_modality_test_split_and_finetune(uneven_raw, probe_env):
    """Every modality, two epochs of fusion, the test split on two processes, then
    fine-tuning on two processes."""
    tmp_path = probe_env
    args, probe, single = fused_on_two_processes(uneven_raw, tmp_path, tuple(STAGE_CONFIGS),
                                                 ["--trainer.max_epochs=2", "--checkpoint.save_top_k=-1"])
    every_train_id = list(single.datamodule.split("train")["id"])
    check_one_fit(probe, every_train_id, epochs=2)
    assert train_ids(probe, 0) != train_ids(probe, 1), "each epoch must shuffle anew"
    # Every epoch is kept (save_top_k=-1), so the second epoch's metrics meet its own checkpoint.
    (gathered,) = read_ranks(probe, "val-rank{rank}-epoch1.json")[:1]
    (alone,) = single.trainer.validate(single.model, datamodule=single.datamodule, verbose=False,
                                       ckpt_path=str(tmp_path / "fusion" / "checkpoints" / "best-epoch001.ckpt"))
    assert_same_metrics(gathered, alone, "val/")

    selected = str(tmp_path / "fusion" / "checkpoints" / "selected.ckpt")
    test_probe = tmp_path / "test-probe"
    run_ddp("test", [*args, f"--ckpt_path={selected}"], test_probe)
    rank0, rank1 = read_ranks(test_probe, "test-rank{rank}.json")
    assert rank0 == rank1
    (alone,) = single.trainer.test(single.model, datamodule=single.datamodule, ckpt_path=selected, verbose=False)
    assert_same_metrics(rank0, alone, "test/")

    finetune_args = [*source_args(uneven_raw, tmp_path / "ddp-cache", tmp_path / "finetune"),
                     "-c", f"{QUICKSTART}/4_fusion.yaml", "-c", f"{QUICKSTART}/5_finetune.yaml",
                     f"--model.init_args.init_checkpoint={selected}", "--trainer.max_epochs=1",
                     f"--data.batch_size={BATCH}"]
    finetune_probe = tmp_path / "finetune-probe"
    run_ddp("fit", finetune_args, finetune_probe)
    check_one_fit(finetune_probe, every_train_id, epochs=1)
    last = tmp_path / "finetune" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0


def test_pipeline_runs_its_fused_stage_on_two_processes(uneven_raw, tiny_cache, probe_env):
    """`mmsent pipeline run`: the unimodal stages in one process, the fused stage on two
    (Lightning starts the second by running the command again); the main process alone
    writes, the figures are those of one process on the handed-on checkpoint, and the
    test predictions hold every clip once."""
    spec = yaml.safe_load(write_pipeline(probe_env, uneven_raw, tiny_cache, with_video=False).read_text())
    spec["stages"] = spec["stages"][:3]
    spec["stages"][2]["args"] += [*DDP, "--trainer.callbacks+=ddp_probe.RankRecorder",
                                  f"--data.batch_size={BATCH}"]
    path = probe_env / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    probe = probe_env / "unimodal-probe"
    done = subprocess.run([sys.executable, "-m", "mmsent", "pipeline", "run", str(path), "--no-wandb"],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("report written to") == 1 and done.stderr.count("=== stage fusion") == 1

    out = probe_env / "out"
    record = manifest(probe_env)
    assert {name: stage["status"] for name, stage in record["stages"].items()} == dict.fromkeys(
        ["text", "audio", "fusion"], "done")
    ranks = read_ranks(probe, "fit-rank{rank}.json")
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[1]["saves"] == []
    files = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {f for f in files if "/" not in f} == {
        "audio", "fusion", "text", "manifest.json", "report.json", "report.md", "report.png", "predictions.csv",
        "confusion.png", "contributions.png", "scatter.png"}, "no lock left, nothing written twice"
    assert {f for f in files if f.startswith("fusion/")} == {
        f.replace("text/", "fusion/", 1) for f in files if f.startswith("text/")} | {
        "fusion/checkpoints/selected.ckpt"}, "the files of a one-process stage, no more"

    fused = record["stages"]["fusion"]
    assert Path(fused["best_checkpoint"]).is_file()
    args = [*stage_arguments(load_pipeline(path), load_pipeline(path).stage("fusion"), Manifest(out / "manifest.json"),
                             []), "--trainer.strategy=auto", "--trainer.devices=1"]
    single = build_cli(args, run=False)
    for split, score in (("val", single.trainer.validate), ("test", single.trainer.test)):
        (alone,) = score(single.model, datamodule=single.datamodule, ckpt_path=fused["best_checkpoint"],
                         verbose=False)
        assert_same_metrics({f"{split}/{k}": v for k, v in fused["metrics"][split].items()}, alone, f"{split}/")
    predicted = read_predictions(fused["predictions"])["id"].tolist()
    assert predicted == [str(clip) for clip in single.datamodule.split("test")["id"]], "every test clip once, in order"

    # Rerun from a one-process stage (which the second process, started later, must not
    # rerun), then the fused stage, then a one-process stage failing in the main process
    # while the other waits for the next multi-process stage: both end, none hangs.
    spec["stages"].append({"name": "failing", "configs": spec["stages"][2]["configs"],
                           "args": ["--model.init_args.video_encoder=null", "--data.cache_dir=/dev/null/cache"]})
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "mmsent", "pipeline", "run", str(path), "--no-wandb",
                           "--from", "audio"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1 and "/dev/null/cache" in done.stderr, done.stderr[-4000:]
    stages = manifest(probe_env)["stages"]
    assert [stages[name]["status"] for name in ("audio", "fusion", "failing")] == ["done", "done", "failed"]
    assert not (out / "run.lock").exists()


def test_pipeline_under_torchrun_refuses_a_single_process_stage(tiny_raw, tiny_cache, tmp_path, monkeypatch):
    """Under torchrun every process runs every stage: a single-process stage is refused
    before any stage starts, naming it and what to set."""
    monkeypatch.setattr(pl.Trainer, "fit", lambda *args, **kwargs: pytest.fail("a stage started"))
    for key, value in {"TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                       "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    path = write_pipeline(tmp_path, tiny_raw, tiny_cache)
    with pytest.raises(ConfigError, match=r"stage 'text': its trainer runs 1 process\(es\) \(trainer.devices=1, "
                                          r"trainer.num_nodes=1\), but torchrun .* on 2 processes.*trainer.devices"):
        run(path, use_wandb=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(ConfigError, match="stage 'text': its trainer runs 3 process"):
        run(path, extra=["--trainer.devices=3"], use_wandb=False)


LIGHTNING_CHILD = {"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}
TORCHRUN_RANK1 = {"TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                  "GROUP_RANK": "0", "LOCAL_WORLD_SIZE": "2"}


@pytest.mark.parametrize(("launch", "start", "expected"), [
    (LIGHTNING_CHILD, None, "recorded"), (TORCHRUN_RANK1, None, "last"), (TORCHRUN_RANK1, "fusion", None)])
def test_a_second_process_joins_the_stage_the_main_one_runs(tiny_raw, tiny_cache, tmp_path, monkeypatch, launch,
                                                            start, expected):
    """A process other than the main one: no lock, no writes; it starts with the first
    unfinished stage and resumes it from the checkpoint the main process does (recorded
    by it once Lightning started this process; found on disk under torchrun; none for a
    stage rerun with --from, which the main process forgets)."""
    path = write_pipeline(tmp_path, tiny_raw, tiny_cache)
    out = tmp_path / "out"
    (out / "fusion" / "checkpoints").mkdir(parents=True)
    last = out / "fusion" / "checkpoints" / "last.ckpt"
    torch.save({"loops": {}, "state_dict": {}}, last)
    stages = {}
    for name in ("text", "audio", "video"):
        (out / f"{name}.ckpt").write_bytes(b"")
        stages[name] = {"status": "done", "best_checkpoint": str(out / f"{name}.ckpt")}
    stages["fusion"] = {"status": "running", "resumed_from": "recorded.ckpt"}
    (out / "manifest.json").write_text(json.dumps({"stages": stages}))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    joined = []
    monkeypatch.setattr(runner, "build_cli", lambda args, run: SimpleNamespace(trainer=SimpleNamespace(world_size=2)))
    monkeypatch.setattr(runner, "fit_and_evaluate", lambda cli, stage, resume, folder: joined.append((stage.name, resume)))
    run(path, start=start, extra=DDP, use_wandb=False)
    resumed = {"recorded": "recorded.ckpt", "last": str(last), None: None}[expected]
    assert joined == [("fusion", resumed)], "the next stage comes from the main process, which has none here"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, "it writes nothing"


SLURM_JOB = {"SLURM_JOB_NAME": "train", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}


@pytest.mark.parametrize(("env", "main", "launched"), [
    ({}, True, 1), (LIGHTNING_CHILD, False, 1), (TORCHRUN_RANK1, False, 2),
    ({**TORCHRUN_RANK1, "RANK": "0", "LOCAL_RANK": "0"}, True, 2), (SLURM_JOB, False, 2),
    ({**SLURM_JOB, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", **LIGHTNING_CHILD}, False, 1)])
def test_each_process_knows_its_part_from_the_environment(monkeypatch, env, main, launched):
    """Main process or not, and how many processes a launcher started, under no launcher,
    Lightning's, torchrun, srun, and Lightning's inside a one-task SLURM job."""
    for key in {*LIGHTNING_CHILD, *TORCHRUN_RANK1, *SLURM_JOB}:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert (ranks.is_main_process(), ranks.launched_processes()) == (main, launched)
