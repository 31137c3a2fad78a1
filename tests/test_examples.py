"""The examples in examples/ run as written, on a tiny exported model."""

import os
import subprocess
import sys

from helpers import REPO
from test_hub import model_dir, pipeline_run  # noqa: F401  (module fixtures)

EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], check=False,
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_acoustic_encoder_trains_in_a_plain_loop(model_dir):  # noqa: F811
    out = run_example("reuse_acoustic_encoder.py", model_dir, "--steps", "5",
                      "--batch-size", "4")
    assert "held-out accuracy" in out


def test_exported_model_scores_clips(model_dir, tiny_raw):  # noqa: F811
    out = run_example("score_clips.py", model_dir, tiny_raw, "--clips", "3")
    assert out.count(" score ") == 3


def test_exported_model_fine_tunes_through_the_cli(model_dir, tiny_raw, tmp_path):  # noqa: F811
    run_example("finetune_exported.py", model_dir, tiny_raw, tmp_path, "--trainer.max_epochs=1",
                "--trainer.logger=false", "--trainer.enable_progress_bar=false")
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
