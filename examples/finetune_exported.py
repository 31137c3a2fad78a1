"""Fine-tune an exported model on a new labelled folder through the mmsent CLI.

Stage 5 of the quickstart (all encoders trainable, plain SGD) starts from the model
folder, which a stage takes wherever it takes a checkpoint; any extra arguments go to
``mmsent fit`` (e.g. ``--trainer.max_epochs=3``).

    python examples/finetune_exported.py models/quickstart path/to/new/folder runs/finetuned
"""

import argparse
import subprocess
import sys
from pathlib import Path

from mmsent import SentimentModel

CONFIGS = Path(__file__).resolve().parent.parent / "pipelines" / "quickstart"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the model folder (mmsent export)")
    parser.add_argument("folder", help="the new labelled folder (label.csv with train/valid/test + Raw/)")
    parser.add_argument("out", help="where the run goes")
    args, extra = parser.parse_known_args()
    pre = SentimentModel.from_pretrained(args.model).config["preprocessing"]
    command = [sys.executable, "-m", "mmsent", "fit",
               "-c", str(CONFIGS / "base.yaml"), "-c", str(CONFIGS / "4_fusion.yaml"),
               "-c", str(CONFIGS / "5_finetune.yaml"),
               "--data.source.class_path=mmsent.data.RawClipSource",
               f"--data.source.init_args.root={args.folder}",
               f"--data.source.init_args.frames={pre['video']['frames']}",
               f"--data.source.init_args.frame_size={pre['video']['frame_size']}",
               f"--data.source.init_args.tokenizer={pre['text']['tokenizer']}",
               f"--data.source.init_args.max_text_length={pre['text']['max_length']}",
               f"--data.source.init_args.sample_rate={pre['audio']['sample_rate']}",
               f"--data.source.init_args.n_mels={pre['audio']['n_mels']}",
               f"--data.source.init_args.max_audio_frames={pre['audio']['max_frames']}",
               f"--data.cache_dir={Path(args.out) / 'cache'}",
               f"--trainer.default_root_dir={args.out}",
               f"--checkpoint.dirpath={Path(args.out) / 'checkpoints'}",
               f"--model.init_args.init_checkpoint={args.model}", *extra]
    print(" ".join(command))
    raise SystemExit(subprocess.call(command))


if __name__ == "__main__":
    main()
