"""Tiny weight files as mmsent c6799cc writes them, a frozen MiniLM table left out with its
record beside the tensors, for tests/test_hub.py (run with that tree on PYTHONPATH:
`python make.py tests/data/weights_c6799cc`)."""
import os
import sys
from functools import partial

import torch

from mmsent.hub.model import SentimentModel
from mmsent.models import TextLSTMEncoder
from mmsent.models.weights import weights_digest
from mmsent.tasks import UnimodalTask

TEXT = {"input_dim": 30522, "pretrained_embeddings": "minilm", "freeze_embeddings": True, "embed_dim": 384,
        "hidden_dim": 2, "out_dim": 2}

os.chdir(sys.argv[1])
torch.manual_seed(0)
model = SentimentModel({
    "format_version": 1, "encoders": {"text": {"class_path": "mmsent.models.TextLSTMEncoder", "init_args": TEXT}},
    "fusion": {"class_path": "mmsent.models.ConcatFusion", "init_args": {"input_dims": {"text": 2}, "hidden_dim": 4, "out_dim": 4}},
    "head": {"class_path": "mmsent.models.RegressionHead", "init_args": {"in_dim": 4, "hidden_dim": 0}},
    "active_modalities": ["text"], "preprocessing": {}})
model.save_pretrained("model")
os.remove("model/README.md")
task = UnimodalTask("text", partial(TextLSTMEncoder, **{k: v for k, v in TEXT.items() if k != "input_dim"}),
                    head_hidden=0, input_dims={"text": 30522})
checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}
task.on_save_checkpoint(checkpoint)
torch.save(checkpoint, "text.ckpt")
generator = torch.Generator().manual_seed(1)
batch = {"text": torch.randint(1, 30522, (3, 6), generator=generator), "text_mask": torch.ones(3, 6, dtype=torch.bool),
         "text_present": torch.ones(3, dtype=torch.bool)}
batch["text_mask"][0, 4:] = False
task.eval()
with torch.no_grad():
    torch.save({"batch": batch, "model": model(batch), "text": task(batch),
                "digests": {"model": weights_digest(model.model.encoders["text"]),
                            "text": weights_digest(task.encoder)}}, "expected.pt")
