"""Seconds per training step of a whole transformer text encoder on CPU.

For each model, thread count and sequence length: one AdamW step (forward, mean
pooling, backward, update) of the whole transformer on a batch of random word-piece
ids, the first step left out as warm-up, median over the rest. This is the cost that
decides whether a language model can be fine-tuned whole on a CPU (the text stage of
``pipelines/mosi_finetuned_text.yaml`` and ``pipelines/mosi_mpnet_whole.yaml`` takes
one such step per batch of 8 clips). The models are resolved offline
(:func:`mmsent.pretrained.resolve_model_path`); MPNet needs its part wheels.

    python benchmarks/speed/transformer_step.py --models minilm all-mpnet-base-v2 --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

# Run as a file, a script sees only its own folder; the repository root makes `benchmarks` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.common import machine, save


def step_seconds(name: str, threads: int, batch: int, length: int, steps: int) -> list[float]:
    """Times AdamW steps of one whole pretrained transformer.

    Args:
        name (str): ``"minilm"``, a split model's name or a Hugging Face id or path.
        threads (int): torch's intra-op threads.
        batch (int): Clips per batch.
        length (int): Word pieces per clip.
        steps (int): Steps timed after the warm-up step.

    Returns:
        list[float]: Seconds per timed step.
    """
    from transformers import AutoModel

    from mmsent.pretrained import resolve_model_path

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(resolve_model_path(name)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 20000, (batch, length))
    mask = torch.ones_like(ids)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        model(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return times[1:]


def main(args: list[str] | None = None) -> None:
    """Runs the benchmark.

    Args:
        args (list[str] | None): Command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "all-mpnet-base-v2"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 20])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parsed = parser.parse_args(args)
    results = []
    for name in parsed.models:
        for threads in parsed.threads:
            for length in parsed.lengths:
                times = step_seconds(name, threads, parsed.batch, length, parsed.steps)
                results.append({"model": name, "threads": threads, "batch": parsed.batch, "length": length,
                                "step_s": times, "median_step_s": statistics.median(times)})
                print(f"{name}, {threads} thread(s), {parsed.batch} x {length}: "
                      f"{statistics.median(times):.2f} s per step", flush=True)
    command = "python benchmarks/speed/transformer_step.py " + " ".join(sys.argv[1:] if args is None else args)
    path = save("transformer_step", {"command": command, "machine": machine(),
                                     "date": datetime.now(UTC).isoformat(timespec="minutes"), "results": results})
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
