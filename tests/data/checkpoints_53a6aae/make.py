"""Tiny checkpoints as mmsent 53a6aae writes them, for tests/test_checkpoints.py (run with that
tree on PYTHONPATH: `python make.py tests/data/checkpoints_53a6aae`)."""
import os
import sys
from functools import partial

import torch

from mmsent.models import AcousticMLPEncoder, TextLSTMEncoder
from mmsent.models.fusion import GatedResidualFusion
from mmsent.tasks import FusionTask, UnimodalTask

INPUT_DIMS = {"text": 6, "audio": 5}
TEXT = partial(TextLSTMEncoder, input_kind="vectors", embed_dim=4, hidden_dim=4, out_dim=4)
AUDIO = partial(AcousticMLPEncoder, hidden_dims=[4], out_dim=4)
MONITORED = {"ModelCheckpoint{'monitor': 'val/MAE', 'mode': 'min'}": {"monitor": "val/MAE"}}


def save(task, name, score=None):
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
    if score is not None:
        checkpoint["callbacks"] = {k: {**v, "best_model_score": torch.tensor(score)} for k, v in MONITORED.items()}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, name)
    return name


os.chdir(sys.argv[1])
torch.manual_seed(0)
text = save(UnimodalTask("text", TEXT, head_hidden=3, input_dims=INPUT_DIMS), "text.ckpt", 0.9)
audio = save(UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS), "audio.ckpt", 1.1)
backfit = UnimodalTask("audio", AUDIO, input_dims=INPUT_DIMS, fixed_text_checkpoint=text)
save(backfit, "audio_backfit.ckpt", 1.0)
fused = FusionTask(text_checkpoint=text, audio_checkpoint=audio, audio_encoder_checkpoint="audio_backfit.ckpt",
                   head_from="best", fusion=GatedResidualFusion, input_dims=INPUT_DIMS)
with torch.no_grad():
    for p in fused.model.fusion.parameters():
        p.add_(0.1 * torch.randn_like(p))  # the gates away from zero, so every part counts
save(fused, "fused.ckpt")
generator = torch.Generator().manual_seed(1)
batch = {"text": torch.randn(3, 7, 6, generator=generator), "audio": torch.randn(3, 9, 5, generator=generator),
         "text_mask": torch.ones(3, 7, dtype=torch.bool), "audio_mask": torch.ones(3, 9, dtype=torch.bool),
         "text_present": torch.tensor([True, True, False]), "audio_present": torch.tensor([True, False, True])}
batch["text_mask"][0, 5:] = False
fused.eval()
backfit.eval()
with torch.no_grad():
    torch.save({"batch": batch, "fused": fused(batch), "audio_backfit": backfit(batch)}, "expected.pt")
