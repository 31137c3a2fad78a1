"""Filling a masked modality with a CycleGAN's translation vs leaving it out, fused model.

Per seed: the quickstart unimodal stages and the frozen-encoder fusion stage (stage 4,
without the selection) are trained with a few epochs each; then, on the fusion
model's embeddings of the training set, one :class:`EmbeddingCycleGAN` per pair of
modalities (unpaired: cycle loss only; and paired: ``paired_weight`` too). At test
time one modality is masked for every clip and the fused model scores the clips with
it (a) zeroed by the presence mask (what the model does for a missing modality, and
what modality dropout trains it for), (b) replaced by the training mean embedding,
(c) filled by :func:`fill_missing` from the two other modalities with the unpaired
CycleGANs, (d) the same with the paired ones. Test MAE per masked modality, over seeds.

    OMP_NUM_THREADS=1 python benchmarks/toolkit/cycle_fill.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import machine, mean_std, save
from benchmarks.quickstart_stages import collect_embeddings, fit, fusion_args, unimodal_checkpoints
from mmsent.models.generative import EmbeddingCycleGAN, fill_missing

ROOT = "runs/bench_cycle"


def train_translator(train: dict, source: str, target: str, paired_weight: float, steps: int,
                     seed: int) -> EmbeddingCycleGAN:
    """A CycleGAN between two modalities on the training embeddings of clips with both."""
    torch.manual_seed(seed)
    both = train[f"{source}_present"] & train[f"{target}_present"]
    a, b = train[source][both], train[target][both]
    model = EmbeddingCycleGAN(a.shape[1], b.shape[1], source, target, hidden_dims=[128, 128],
                              paired_weight=paired_weight)
    model.observe(a, b)
    parts = model.parts()
    opt_g = torch.optim.Adam(parts["generator"].parameters(), 1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(parts["discriminator"].parameters(), 2e-3, betas=(0.5, 0.999))
    for _ in range(steps):
        index = torch.randint(len(a), (64,))
        other = index if paired_weight else torch.randint(len(b), (64,))
        for optimizer, loss in ((opt_d, model.discriminator_loss), (opt_g, model.generator_loss)):
            optimizer.zero_grad()
            loss(a[index], b[other])["loss"].backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def masked_errors(fused, test: dict, train: dict, translators: dict[str, list]) -> dict[str, float]:
    """Test MAE with each modality masked, per way of handling it."""
    modalities = list(fused.encoders)
    embeddings = {m: test[m] for m in modalities}
    present = {m: test[f"{m}_present"] for m in modalities}
    label = test["label"]

    def mae(emb, pres) -> float:
        return float((fused.predict_from_embeddings(emb, pres) - label).abs().mean())

    results = {"none_masked": mae(embeddings, present)}
    for masked in modalities:
        gone = {**present, masked: torch.zeros_like(present[masked])}
        results[f"{masked}/zeroed"] = mae(embeddings, gone)
        mean = train[masked][train[f"{masked}_present"]].mean(0)
        results[f"{masked}/train_mean"] = mae({**embeddings, masked: mean.expand_as(embeddings[masked])},
                                              {**gone, masked: torch.ones_like(gone[masked])})
        for kind, models in translators.items():
            results[f"{masked}/{kind}"] = mae(*fill_missing(embeddings, gone, models))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each unimodal stage and fusion")
    parser.add_argument("--steps", type=int, default=1500, help="CycleGAN training steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = {"epochs": args.epochs, "steps": args.steps, "seeds": args.seeds, "machine": machine(),
               "date": datetime.date.today().isoformat(), "runs": []}
    for seed in args.seeds:
        checkpoints = unimodal_checkpoints(seed, args.epochs, ROOT)
        cli, _, _ = fit(fusion_args(checkpoints, seed, args.epochs, ROOT))
        fused = cli.model.model
        data = cli.datamodule
        train = collect_embeddings(fused, data.split_dataloader("train"))
        test = collect_embeddings(fused, data.split_dataloader("test"))
        translators = {
            kind: [train_translator(train, s, t, weight, args.steps, seed)
                   for s, t in itertools.combinations(fused.encoders, 2)]
            for kind, weight in (("cycle", 0.0), ("cycle_paired", 5.0))
        }
        result = masked_errors(fused, test, train, translators)
        payload["runs"].append({"seed": seed, **result})
        save("cycle_fill", payload)
        print(json.dumps({"seed": seed, **result}), flush=True)
    keys = [k for k in payload["runs"][0] if k != "seed"]
    print("| masked / handling | test MAE |")
    for key in keys:
        print(f"| {key} | {mean_std([r[key] for r in payload['runs']])} |")


if __name__ == "__main__":
    main()
