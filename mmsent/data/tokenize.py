"""Text tokenizers: word level (trained on the training split) or any Hugging Face one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmsent.pretrained import resolve_model_path

PAD, UNK = "[PAD]", "[UNK]"


class TextTokenizer:
    """Turns transcripts into token ids, and saves itself beside the cache.

    Args:
        name (str): ``"word"`` (a vocabulary learned from the training texts),
            ``"minilm"`` (the offline MiniLM), or a Hugging Face model id or local path.
        max_length (int): Longest token sequence kept.
    """

    def __init__(self, name: str = "word", max_length: int = 64) -> None:
        self.name = name
        self.max_length = max_length
        self._word = None
        self._hf = None

    def fit(self, train_texts: list[str], save_dir: Path) -> None:
        """Learns the vocabulary from ``train_texts`` (word level; training transcripts only, so
        no test word leaks) and writes ``tokenizer.json`` to ``save_dir`` for reuse, or loads
        the pretrained tokenizer."""
        if self.name == "word":
            self._word = train_word_tokenizer(train_texts)
            save_dir.mkdir(parents=True, exist_ok=True)
            self._word.save(str(save_dir / "tokenizer.json"))
        else:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(resolve_model_path(self.name))

    def load(self, path: Path) -> None:
        """Loads the word-level vocabulary that :meth:`fit` saved to ``path`` (``tokenizer.json``),
        instead of learning it."""
        from tokenizers import Tokenizer

        self._word = Tokenizer.from_file(str(path))

    def fingerprint(self) -> str:
        """str: A SHA-1 of the fitted vocabulary, to recognize the same tokenizer."""
        vocab = self._word.get_vocab() if self._word is not None else self._hf.get_vocab()
        return hashlib.sha1(json.dumps(sorted(vocab.items())).encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        """int: The number of token ids."""
        if self._word is not None:
            return self._word.get_vocab_size()
        return len(self._hf)

    @property
    def pad_token_id(self) -> int:
        """int: The id of the padding token."""
        if self._word is not None:
            return self._word.token_to_id(PAD)
        return self._hf.pad_token_id or 0

    def encode(self, text: str) -> list[int]:
        """Returns the token ids of the transcript ``text``, truncated to ``max_length``; a
        pretrained tokenizer adds its special tokens."""
        if self._word is not None:
            return self._word.encode(text).ids[: self.max_length]
        return self._hf(text, truncation=True, max_length=self.max_length)["input_ids"]


def train_word_tokenizer(texts: list[str], min_frequency: int = 1):
    """Returns a lower-cased word-level tokenizer trained on ``texts`` with the ``tokenizers``
    library, ``[PAD]`` at id 0; words seen fewer than ``min_frequency`` times map to ``[UNK]``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK], min_frequency=min_frequency)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer
