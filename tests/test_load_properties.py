"""Properties of loading a tampered model folder (hypothesis): whatever is changed in
``config.json`` or in the header of ``model.safetensors``, loading either gives the
same predictions as the untouched folder or fails with one of mmsent's errors, and
never runs code the folder names."""

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_safe_load import tiny_batch, write_tiny_model

from mmsent import SentimentModel
from mmsent.errors import MMSentError

PLANTED = "planted_payload"
EXAMPLES = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
dangerous_class_paths = st.sampled_from([
    "venv.__main__.X", "subprocess.Popen", "os.system", "builtins.exec", "builtins.eval",
    f"{PLANTED}.Payload", f"tiny.{PLANTED}.Payload", "torch.nn.Linear", "mmsent.hub.model.SentimentModel",
    "mmsent.models.fusion.TensorFusion", "mmsent.models.audio.AcousticMLPEncoder",
    "mmsent.models.text.TextLSTMEncoder", "", ".", "a..b", "__import__"]) | st.text(max_size=40)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny model folder, its predictions, and a module that leaves a marker if imported."""
    root = tmp_path_factory.mktemp("planted")
    folder = root / "tiny"
    model = write_tiny_model(folder)
    marker = root / "ran.txt"
    payload = f"open({str(marker)!r}, 'w').write('ran')\nimport torch\nPayload = torch.nn.Linear\n"
    (root / f"{PLANTED}.py").write_text(payload)
    (folder / f"{PLANTED}.py").write_text(payload)
    with torch.no_grad():
        expected = model.eval()(tiny_batch())
    return {"root": root, "folder": folder, "marker": marker, "expected": expected}


@pytest.fixture()
def importable(planted, monkeypatch):
    # The payload could be imported, were anything imported by name: its folder and the model's parent.
    monkeypatch.syspath_prepend(str(planted["root"]))
    monkeypatch.chdir(planted["root"])


def paths_in(tree, prefix=()):
    """Every key path of a JSON tree, leaves and branches."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for key, value in items:
        yield (*prefix, key)
        yield from paths_in(value, (*prefix, key))


def loads_the_same_or_fails_in_mmsents_words(planted, folder: Path) -> None:
    try:
        model = SentimentModel.from_pretrained(folder)
    except MMSentError:
        pass
    else:
        with torch.no_grad():
            assert torch.equal(model(tiny_batch()), planted["expected"]), "loaded, with changed predictions"
    assert not planted["marker"].exists(), "a module named in the folder was imported"


@st.composite
def config_mutations(draw, config):
    paths = list(paths_in(config))
    class_paths = [p for p in paths if p[-1] == "class_path"]
    kind = draw(st.sampled_from(["remove", "replace", "class_path"]))
    path = draw(st.sampled_from(class_paths if kind == "class_path" else paths))
    value = draw(dangerous_class_paths if kind == "class_path" else json_values)
    return kind, path, value


def mutate(config, kind, path, value):
    config = json.loads(json.dumps(config))
    *parents, last = path
    node = config
    for key in parents:
        node = node[key]
    if kind == "remove":
        del node[last]
    else:
        node[last] = value
    return config


def copy_of(folder: Path, into: str) -> Path:
    copy = Path(into) / "tiny"
    shutil.copytree(folder, copy)
    return copy


@EXAMPLES
@given(data=st.data())
def test_a_changed_config_json_never_loads_with_other_predictions_nor_runs_code(planted, importable, data):
    config = json.loads((planted["folder"] / "config.json").read_text())
    kind, path, value = data.draw(config_mutations(config))
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_of(planted["folder"], scratch)
        (folder / "config.json").write_text(json.dumps(mutate(config, kind, path, value)))
        loads_the_same_or_fails_in_mmsents_words(planted, folder)


@EXAMPLES
@given(data=st.data())
def test_a_config_json_changed_in_a_folder_saved_without_its_config_in_the_header_never_runs_code(
        planted, importable, data):
    """Folders exported before the weights recorded their config: the registry alone keeps
    code from running, and the strict load keeps a changed network from loading."""
    config = json.loads((planted["folder"] / "config.json").read_text())
    kind, path, value = data.draw(config_mutations(config))
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_of(planted["folder"], scratch)
        rewrite_header(folder / "model.safetensors", lambda header: header.pop("__metadata__", None))
        (folder / "config.json").write_text(json.dumps(mutate(config, kind, path, value)))
        try:
            SentimentModel.from_pretrained(folder)
        except MMSentError:
            pass
        assert not planted["marker"].exists(), "a module named in the folder was imported"


def read_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def rewrite_header(path: Path, change) -> None:
    header, body = read_header(path)
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


@st.composite
def header_mutations(draw, header):
    names = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["rename", "drop", "shape", "dtype", "offsets", "swap", "truncate", "metadata"]))
    if kind == "rename":
        return kind, name, draw(st.sampled_from(names) | st.text(min_size=1, max_size=30))
    if kind == "shape":
        return kind, name, draw(st.lists(st.integers(0, 12), max_size=4))
    if kind == "dtype":
        return kind, name, draw(st.sampled_from(["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3"]))
    if kind == "offsets":
        return kind, name, draw(st.lists(st.integers(-4, 10**6), min_size=0, max_size=3))
    if kind == "swap":
        return kind, name, draw(st.sampled_from(names))
    if kind == "truncate":
        return kind, name, draw(st.integers(0, 10**5))
    return kind, name, draw(json_values)


def apply_header_mutation(path: Path, kind, name, value) -> None:
    if kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[:value % len(raw)])
        return

    def change(header):
        entry = header[name]
        if kind == "rename":
            header[value] = header.pop(name)
        elif kind == "drop":
            del header[name]
        elif kind == "shape":
            entry["shape"] = value
        elif kind == "dtype":
            entry["dtype"] = value
        elif kind == "offsets":
            entry["data_offsets"] = value
        elif kind == "swap":
            header[name], header[value] = header[value], entry
        else:
            header["__metadata__"] = {"mmsent_config": json.dumps(value)} if isinstance(value, dict) else {}

    rewrite_header(path, change)


@EXAMPLES
@given(data=st.data())
def test_a_changed_safetensors_header_never_loads_with_other_predictions(planted, importable, data):
    header, _ = read_header(planted["folder"] / "model.safetensors")
    kind, name, value = data.draw(header_mutations(header))
    with tempfile.TemporaryDirectory() as scratch:
        folder = copy_of(planted["folder"], scratch)
        apply_header_mutation(folder / "model.safetensors", kind, name, value)
        loads_the_same_or_fails_in_mmsents_words(planted, folder)
