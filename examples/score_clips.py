"""Load an exported model and score a few clips of a folder in the raw layout.

    python examples/score_clips.py models/quickstart data/generated/quickstart --clips 5
"""

import argparse
from pathlib import Path

import pandas as pd

from mmsent import SentimentModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the model folder (mmsent export)")
    parser.add_argument("folder", help="a folder with label.csv and Raw/<video_id>/<clip_id>.mp4")
    parser.add_argument("--clips", type=int, default=5)
    args = parser.parse_args()
    model = SentimentModel.from_pretrained(args.model)
    rows = pd.read_csv(Path(args.folder) / "label.csv", dtype={"video_id": str, "clip_id": str}).head(args.clips)
    videos = [str(Path(args.folder) / "Raw" / r.video_id / f"{r.clip_id}.mp4") for r in rows.itertuples()]
    results = model.predict(video=videos, text=rows["text"].tolist())
    for row, result in zip(rows.itertuples(), results, strict=True):
        own = ", ".join(f"{m} {result[f'score_{m}']:+.2f}" for m in model.modalities if result.get(f"score_{m}") is not None)
        print(f"{row.text[:50]!r:54} score {result['score']:+.2f} ({result['label_7']:+d}, {result['label_2']}); "
              f"alone: {own}; label {row.label:+.2f}")


if __name__ == "__main__":
    main()
