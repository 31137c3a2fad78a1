"""Does generative augmentation help the fusion head when training data is scarce?

For each fraction of the training split and each seed, the unimodal encoders are
pretrained once on that subset through the CLI (the pipeline's stage configs), the
frozen encoders embed every split once, and then, in embedding space:

* ``vae`` / ``gan``: a generator is trained on the training embeddings as its stage
  config says (model, optimizer, epochs, batch size), keeping the epoch with the
  lowest validation Fréchet distance, as the pipeline does;
* the fusion head of the fusion stage config is trained from the same initial
  weights for each method (``none``, ``vae``, ``gan``) for a fixed number of steps,
  with ``FusionTask.generated_loss`` mixing in generated samples at the augmented
  fusion config's ratio, keeping the step with the lowest validation MAE.

Test MAE and Non0_acc_2 are reported as mean and standard deviation over seeds.
Results are cached per (fraction, seed), so an interrupted run resumes.

    python benchmarks/toolkit/augmentation.py --dataset generated
    python benchmarks/toolkit/augmentation.py --dataset mosi --fractions 0.1 0.2496 0.5 1.0

(CMU-MOSI is read from the folder in ``MMSENT_MOSI_DIR``. MOSI's 25 % would be 321
clips, whose last training batch of one clip the acoustic
encoder's batch norm rejects; 0.2496 gives 320.)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import REPO, fit_and_test, machine, mean_std, save
from mmsent.metrics import regression_metrics
from mmsent.models.generative import (
    GENERATORS,
    RidgeProbe,
    concat_embeddings,
    frechet_distance,
    sample_quality,
)

PIPELINES = REPO / "pipelines"
DATASETS = {
    "generated": {
        "folder": PIPELINES / "quickstart",
        "stages": {"text": "1_text.yaml", "audio": "2_audio.yaml", "video": "3_video.yaml"},
        "fusion": ["4_fusion.yaml"],
        "augmented": "4_fusion_augmented.yaml",
        "generators": {"vae": "4a_vae.yaml", "gan": "4a_gan.yaml"},
        "modalities": ["text", "audio"],
    },
    "mosi": {
        "folder": PIPELINES / "mosi",
        "stages": {"text": "1_text.yaml", "audio": "2_audio.yaml"},
        "fusion": ["3_fusion.yaml"],
        "augmented": "3_fusion_augmented.yaml",
        "generators": {"vae": "3a_vae.yaml", "gan": "3a_gan.yaml"},
        "modalities": ["text", "audio"],
    },
}
METHODS = ("none", "vae", "gan")


def data_overrides(spec: dict, modalities: list[str], fraction: float, seed: int) -> list[str]:
    """CLI arguments selecting the training subset (and, on generated data, the modalities)."""
    args = [f"--data.train_fraction={fraction}", f"--data.subset_seed={seed}", f"--seed_everything={seed}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    if spec["folder"].name == "quickstart":
        args.append(f"--data.source.init_args.modalities=[{','.join(modalities)}]")
    return args


def pretrain(spec: dict, modalities: list[str], fraction: float, seed: int, steps: int, folder: Path) -> dict:
    """Pretrains one encoder per modality on the subset; returns their test metrics."""
    results = {}
    for modality in modalities:
        args = ["-c", str(spec["folder"] / "base.yaml"), "-c", str(spec["folder"] / spec["stages"][modality]),
                *data_overrides(spec, modalities, fraction, seed),
                "--trainer.max_epochs=-1", f"--trainer.max_steps={steps}",
                f"--trainer.default_root_dir={folder / modality}"]
        results[modality] = fit_and_test(args)
    return results


def fusion_cli(spec: dict, modalities: list[str], fraction: float, seed: int, checkpoints: dict):
    """The fusion stage's task (encoders loaded, head untrained) and data."""
    from mmsent.cli import build_cli

    args = ["-c", str(spec["folder"] / "base.yaml")]
    for config in spec["fusion"]:
        args += ["-c", str(spec["folder"] / config)]
    args += data_overrides(spec, modalities, fraction, seed)
    for modality in spec["stages"]:
        if modality in modalities:
            args.append(f"--model.init_args.encoders.{modality}={checkpoints[modality]}")
        else:
            args.append(f"--model.init_args.{modality}_encoder=null")
    return build_cli(args, run=False)


@torch.no_grad()
def embed_splits(task, datamodule) -> dict:
    """Every split's embeddings, presence flags and labels, encoded once."""
    task.eval()
    datamodule.prepare_data()
    splits = {}
    for name in ("train", "valid", "test"):
        parts = [(task.model.encode(b), {m: b[f"{m}_present"] for m in task.model.encoders}, b["label"])
                 for b in datamodule.split_dataloader(name)]
        splits[name] = {
            "embeddings": {m: torch.cat([p[0][m] for p in parts]) for m in task.model.encoders},
            "present": {m: torch.cat([p[1][m] for p in parts]).bool() for m in task.model.encoders},
            "label": torch.cat([p[2] for p in parts]),
        }
    return splits


def complete_rows(split: dict, dims: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The concatenated embeddings and labels of samples with every modality (as the
    generative task trains on)."""
    keep = torch.stack([split["present"][m] for m in dims], 1).all(1)
    return concat_embeddings(split["embeddings"], dims)[keep], split["label"][keep]


def stage_config(path: Path) -> dict:
    """The model, optimizer and epochs a generative stage config sets."""
    raw = yaml.safe_load(path.read_text())
    model = raw["model"]["init_args"]
    optimizer = model["optimizer"]["init_args"]
    return {"class": model["generator"]["class_path"].rsplit(".", 1)[1],
            "init_args": model["generator"].get("init_args", {}),
            "optimizer": optimizer, "groups": model.get("param_groups") or {},
            "epochs": raw["trainer"]["max_epochs"]}


def train_generator(config: dict, train: tuple, valid: tuple, batch_size: int, seed: int):
    """Trains a generator as its stage does, keeping the epoch with the lowest
    validation Fréchet distance."""
    torch.manual_seed(seed)
    x, y = train
    generator = GENERATORS[config["class"]](x.shape[1], **config["init_args"])
    parts = generator.parts() if generator.adversarial else {"generator": generator}
    settings = {name: {**config["optimizer"], **config["groups"].get(name, {})} for name in parts}
    optimizers = {name: torch.optim.Adam(part.parameters(), **settings[name]) for name, part in parts.items()}
    best, best_state = float("inf"), None
    for _ in range(config["epochs"]):
        generator.train()
        for index in torch.randperm(len(x)).split(batch_size):
            if len(index) < 2:
                continue
            generator.observe(x[index])
            if generator.adversarial:
                step(optimizers["discriminator"], generator.discriminator_loss(x[index], y[index])["loss"])
                step(optimizers["generator"], generator.generator_loss(y[index])["loss"])
            else:
                step(optimizers["generator"], generator.losses(x[index], y[index])["loss"])
        generator.eval()
        rng = torch.Generator().manual_seed(0)
        distance = frechet_distance(generator.scaler.normalize(valid[0]),
                                    generator.scaler.normalize(generator.sample(valid[1], rng)))
        if distance < best:
            best, best_state = distance, copy.deepcopy(generator.state_dict())
    generator.load_state_dict(best_state)
    return generator.eval()


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def train_head(task, generator, ratio: float, splits: dict, steps: int, batch_size: int, seed: int) -> dict:
    """Trains the fusion head for a fixed number of steps; tests the best on validation."""
    torch.manual_seed(seed)
    task = copy.deepcopy(task)
    task.generator, task.generated_ratio = generator, ratio if generator is not None else 0.0
    optimizer = task.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    train = splits["train"]
    best, best_state, done = float("inf"), None, 0
    while done < steps:
        for index in torch.randperm(len(train["label"])).split(batch_size):
            task.train()
            loss = task.loss_fn(predict(task, train, index), train["label"][index])
            if task.generated_ratio:
                loss = loss + task.generated_ratio * task.generated_loss(train["label"][index])
            step(optimizer, loss)
            done += 1
            valid_mae = evaluate(task, splits["valid"])["MAE"]
            if valid_mae < best:
                best, best_state = valid_mae, copy.deepcopy(task.model.state_dict())
            if done == steps:
                break
    task.model.load_state_dict(best_state)
    return {"val_MAE": best, **evaluate(task, splits["test"])}


def predict(task, split: dict, index: torch.Tensor | None = None) -> torch.Tensor:
    rows = slice(None) if index is None else index
    embeddings = {m: z[rows] for m, z in split["embeddings"].items()}
    present = task.model.presence({f"{m}_present": p[rows] for m, p in split["present"].items()})
    return task.model.predict_from_embeddings(embeddings, present)


@torch.no_grad()
def evaluate(task, split: dict) -> dict:
    task.eval()
    return regression_metrics(predict(task, split), split["label"])


def run_one(dataset: str, modalities: list[str], fraction: float, seed: int, options) -> dict:
    """Every method on one (fraction, seed): pretraining, generators, fusion heads."""
    spec = DATASETS[dataset]
    folder = Path(options.output) / dataset / f"f{fraction}_s{seed}"
    started = time.time()
    unimodal = pretrain(spec, modalities, fraction, seed, options.unimodal_steps, folder)
    cli = fusion_cli(spec, modalities, fraction, seed, {m: r["checkpoint"] for m, r in unimodal.items()})
    task, batch_size = cli.model, cli.datamodule.batch_size
    splits = embed_splits(task, cli.datamodule)
    dims = {m: e.out_dim for m, e in task.model.encoders.items()}
    train, valid, test = (complete_rows(splits[s], dims) for s in ("train", "valid", "test"))
    augmented = yaml.safe_load((spec["folder"] / spec["augmented"]).read_text())["model"]["init_args"]
    task.generated_scores = augmented.get("generated_scores", "train")
    result = {"fraction": fraction, "seed": seed, "train_size": len(splits["train"]["label"]),
              "unimodal": {m: {"MAE": r["MAE"], "Non0_acc_2": r["Non0_acc_2"]} for m, r in unimodal.items()}}
    probe = RidgeProbe(train[0].shape[1]).fit(*train)
    for method in options.methods:
        generator = None
        if method != "none":
            generator = train_generator(stage_config(spec["folder"] / spec["generators"][method]),
                                        train, valid, batch_size, seed)
            quality, _ = sample_quality(generator, *test, probe, torch.Generator().manual_seed(0))
            result.setdefault("quality", {})[method] = quality
        result[method] = train_head(task, generator, augmented["generated_ratio"], splits,
                                    options.fusion_steps, batch_size, seed)
    result["seconds"] = round(time.time() - started, 1)
    return result


def table(results: list[dict], methods: list[str]) -> str:
    """Markdown: per fraction and method, test MAE and Non0_acc_2 over seeds, the change
    in MAE against no augmentation on the same subset and seed, and what the generator
    produced."""
    header = ("| train fraction (clips) | method | test MAE | Δ MAE vs none, paired | "
              "test Non0_acc_2 (%) | generated: diversity / cond. diversity / fidelity MAE (real) |")
    lines = [header, "|---|---|---|---|---|---|"]
    for fraction in sorted({r["fraction"] for r in results}):
        runs = [r for r in results if r["fraction"] == fraction]
        for method in methods:
            mae = mean_std([r[method]["MAE"] for r in runs])
            delta, quality = "-", "-"
            if method != "none":
                delta = mean_std([r[method]["MAE"] - r["none"]["MAE"] for r in runs])
                better = sum(r[method]["MAE"] < r["none"]["MAE"] for r in runs)
                delta = f"{delta} ({better}/{len(runs)} lower)"
                q = [r["quality"][method] for r in runs]
                quality = (f"{mean(q, 'diversity'):.2f} / {mean(q, 'conditional_diversity'):.2f} / "
                           f"{mean(q, 'fidelity_MAE'):.2f} ({mean(q, 'real_MAE'):.2f})")
            acc = percent_mean_std([r[method]["Non0_acc_2"] for r in runs])
            lines.append(f"| {fraction:g} ({runs[0]['train_size']}) | {method} | {mae} | {delta} | {acc} | {quality} |")
    return "\n".join(lines)


def percent_mean_std(values: list[float]) -> str:
    """str: ``mean ± std`` over seeds of fractions, in percent with one decimal."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="generated")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--modalities", nargs="+", default=None,
                        help="default: text audio (video's 3D-CNN costs most of a run on CPU)")
    parser.add_argument("--unimodal-steps", type=int, default=300, help="optimizer steps per encoder")
    parser.add_argument("--fusion-steps", type=int, default=300, help="optimizer steps per fusion head")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--output", default=str(REPO / "runs" / "benchmarks" / "augmentation"))
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    modalities = options.modalities or DATASETS[options.dataset]["modalities"]
    results = []
    # Seed-major, so a run cut short still covers every fraction with the seeds it has.
    for seed in options.seeds:
        for fraction in options.fractions:
            cache = Path(options.output) / options.dataset / f"f{fraction}_s{seed}.json"
            if cache.is_file() and set(options.methods) <= set(json.loads(cache.read_text())):
                results.append(json.loads(cache.read_text()))
                continue
            result = run_one(options.dataset, modalities, fraction, seed, options)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(result, indent=2))
            print(f"fraction {fraction} seed {seed}: " + ", ".join(
                f"{m} MAE {result[m]['MAE']:.3f}" for m in options.methods) + f" ({result['seconds']} s)",
                flush=True)
            results.append(result)
    save(f"augmentation_{options.dataset}", {"machine": machine(), "options": vars(options),
                                              "modalities": modalities, "results": results})
    total = sum(r["seconds"] for r in results)
    print(f"\nmachine: {machine()}; {total / 60:.1f} min of runs\n")
    print(table(results, options.methods))


if __name__ == "__main__":
    main()
