"""Text: a small review grammar whose sentences have a compositional score.

The score of a sentence depends on word order: intensifiers scale the next polar
word, negation flips and attenuates it, and the clause after "but" dominates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

ADJECTIVES: dict[str, float] = {
    "excellent": 0.8, "amazing": 0.8, "brilliant": 0.75, "fantastic": 0.75,
    "wonderful": 0.7, "great": 0.65, "beautiful": 0.6, "enjoyable": 0.5, "good": 0.45,
    "interesting": 0.4, "charming": 0.4, "nice": 0.35, "solid": 0.3, "decent": 0.2,
    "fine": 0.15, "okay": 0.08,
    "awful": -0.8, "terrible": -0.8, "horrible": -0.75, "dreadful": -0.7,
    "painful": -0.65, "bad": -0.5, "annoying": -0.5, "boring": -0.45, "dull": -0.4,
    "weak": -0.35, "confusing": -0.3, "bland": -0.25, "predictable": -0.22,
    "mediocre": -0.2, "forgettable": -0.18, "slow": -0.15}
"""dict[str, float]: Polar adjectives and their polarity."""

# Past tense for plain clauses, base form after a negated auxiliary ("didn't like").
_SENTIMENT_VERBS: dict[str, tuple[str, float]] = {
    "loved": ("love", 0.75), "enjoyed": ("enjoy", 0.5), "liked": ("like", 0.4),
    "hated": ("hate", -0.75), "disliked": ("dislike", -0.4)}
VERBS: dict[str, float] = {
    form: value for past, (base, value) in _SENTIMENT_VERBS.items() for form in (past, base)}
"""dict[str, float]: Polar verbs (both forms) and their polarity."""

POLAR_WORDS: dict[str, float] = {**ADJECTIVES, **VERBS}
"""dict[str, float]: Every word that carries sentiment on its own."""

INTENSIFIERS: dict[str, float] = {
    "extremely": 1.5, "incredibly": 1.5, "absolutely": 1.5,
    "really": 1.3, "very": 1.3, "truly": 1.3,
    "quite": 1.15, "pretty": 1.1, "rather": 0.85, "fairly": 0.8, "somewhat": 0.6,
    "slightly": 0.5, "mildly": 0.5}
"""dict[str, float]: Words that scale the next polar word."""

_AMPLIFIERS = tuple(word for word, scale in INTENSIFIERS.items() if scale > 1.0)
_VERB_INTENSIFIERS = ("absolutely", "really", "truly", "quite")

NEGATORS: frozenset[str] = frozenset(
    {"not", "never", "wasn't", "isn't", "weren't", "aren't", "didn't"})
"""frozenset[str]: Words that flip and attenuate the next polar word."""

NEGATION_FACTOR = -0.5
"""float: "not good" is mildly negative and "not awful" mildly positive."""

CONTRAST_WEIGHTS: tuple[float, float] = (0.25, 0.75)
"""tuple[float, float]: Weights of the conceded clause and the dominant clause."""

CONJUNCTION_WEIGHTS: tuple[float, float] = (0.5, 0.5)

_SINGULAR_SUBJECTS = (
    "the movie", "the film", "the story", "the plot", "the acting", "the script",
    "the dialogue", "the ending", "the soundtrack", "the music", "the direction",
    "the cinematography", "her performance", "his performance", "the main character",
    "the lead actor", "the villain", "the pacing", "the humor", "the editing")
_PLURAL_SUBJECTS = ("the characters", "the jokes", "the visuals", "the action scenes",
                    "the special effects", "the songs")
_COPULAS = {False: {"plain": ("was", "is", "seemed", "felt"),
                    "negated": ("was not", "wasn't", "was never", "is not", "isn't",
                                "didn't seem", "never seemed", "did not feel")},
            True: {"plain": ("were", "are", "seemed", "felt"),
                   "negated": ("were not", "weren't", "were never", "are not", "aren't",
                               "didn't seem", "never seemed", "did not feel")}}
_SPEAKERS = ("i", "we")
_PREFIXES = ("honestly", "overall", "well", "um", "i think", "i guess", "i mean", "to be honest",
             "in my opinion", "basically", "actually", "you know")
_SUFFIXES = ("overall", "to be honest", "i guess", "you know", "for me", "in the end")
# Single clause, "X but Y", "although X, Y", "X and Y".
_STRUCTURES = ("single", "but", "although", "and")
_STRUCTURE_PROBS = (0.4, 0.25, 0.15, 0.2)
_SENTENCE_CANDIDATES = 16

_TOKEN_PATTERN = re.compile(r"[a-z']+|,")


def tokenize(text: str) -> list[str]:
    """Returns the lower-case words of the sentence ``text``, commas kept as their own token."""
    return _TOKEN_PATTERN.findall(text.lower())


def _score_clause(tokens: Sequence[str]) -> float:
    """Scores one clause: each polar word, scaled by the intensifiers and negation before it."""
    score, scale, negated = 0.0, 1.0, False
    for token in tokens:
        if token in NEGATORS:
            negated = not negated
        elif token in INTENSIFIERS:
            scale *= INTENSIFIERS[token]
        elif token in POLAR_WORDS:
            value = POLAR_WORDS[token] * scale
            score += NEGATION_FACTOR * value if negated else value
            scale, negated = 1.0, False
    return min(1.0, max(-1.0, score))


def _split_at(tokens: list[str], word: str) -> tuple[list[str], list[str]] | None:
    """Splits at the first ``word``, or returns None when it is absent."""
    if word not in tokens:
        return None
    index = tokens.index(word)
    return tokens[:index], tokens[index + 1:]


def score_sentence(tokens: Sequence[str] | str) -> float:
    """Returns the compositional sentiment, in ``[-1, 1]``, of a review sentence given as
    ``tokens`` from :func:`tokenize` or as its text.

    "although X, Y" and "X but Y" weight X and Y by :data:`CONTRAST_WEIGHTS`; "X and Y"
    averages them; a clause sums its polar words, scaled by intensifiers and negation.
    """
    tokens = tokenize(tokens) if isinstance(tokens, str) else list(tokens)
    first, second = CONTRAST_WEIGHTS
    if "although" in tokens:
        start = tokens.index("although")
        end = tokens.index(",", start) if "," in tokens[start:] else len(tokens)
        conceded, dominant = tokens[start + 1:end], tokens[:start] + tokens[end + 1:]
        return first * score_sentence(conceded) + second * score_sentence(dominant)
    if parts := _split_at(tokens, "but"):
        return first * score_sentence(parts[0]) + second * score_sentence(parts[1])
    if parts := _split_at(tokens, "and"):
        left, right = CONJUNCTION_WEIGHTS
        return left * score_sentence(parts[0]) + right * score_sentence(parts[1])
    return _score_clause(tokens)


def _pick(rng: np.random.Generator, options: Sequence) -> object:
    """Draws one element uniformly."""
    return options[rng.integers(len(options))]


def _polar_word(rng: np.random.Generator, sign: int) -> str:
    """Draws an adjective whose polarity has the given sign (0: either)."""
    words = [word for word, value in ADJECTIVES.items() if sign == 0 or value * sign > 0]
    return _pick(rng, words)


def _clause(rng: np.random.Generator, sign: int = 0) -> str:
    """Draws one adjectival or verbal clause; ``sign`` constrains the clause score's sign."""
    negated = rng.random() < 0.25
    verbal = rng.random() < 0.25
    # "not very good" and "really liked" are natural, "not slightly good" and "fairly liked" not.
    if verbal:
        choices = ("really",) if negated else _VERB_INTENSIFIERS
    else:
        choices = _AMPLIFIERS if negated else tuple(INTENSIFIERS)
    intensifier = f"{_pick(rng, choices)} " if rng.random() < 0.5 else ""
    if verbal:
        verbs = [past for past, (_, value) in _SENTIMENT_VERBS.items()
                 if sign == 0 or value * sign * (-1 if negated else 1) > 0]
        past = _pick(rng, verbs)
        base = _SENTIMENT_VERBS[past][0]
        verb = f"didn't {intensifier}{base}" if negated else f"{intensifier}{past}"
        subject = _pick(rng, _SINGULAR_SUBJECTS + _PLURAL_SUBJECTS)
        return f"{_pick(rng, _SPEAKERS)} {verb} {subject}"
    plural = rng.random() < 0.25
    subject = _pick(rng, _PLURAL_SUBJECTS if plural else _SINGULAR_SUBJECTS)
    copula = _pick(rng, _COPULAS[plural]["negated" if negated else "plain"])
    adjective = _polar_word(rng, -sign if negated else sign)
    return f"{subject} {copula} {intensifier}{adjective}"


def _with_filler(rng: np.random.Generator, sentence: str) -> str:
    """Adds neutral filler words before or after a sentence, or neither."""
    draw = rng.random()
    if draw < 0.25:
        return f"{_pick(rng, _PREFIXES)} {sentence}"
    if draw < 0.4:
        return f"{sentence} {_pick(rng, _SUFFIXES)}"
    return sentence


def _sentence_candidate(rng: np.random.Generator, structure: str) -> str:
    """Draws one sentence of the given structure."""
    if structure == "single":
        return _with_filler(rng, _clause(rng))
    sign = 1 if rng.random() < 0.5 else -1
    if structure == "and":
        return _with_filler(rng, f"{_clause(rng, sign)} and {_clause(rng, sign)}")
    conceded, dominant = _clause(rng, -sign), _clause(rng, sign)
    if structure == "but":
        return _with_filler(rng, f"{conceded} but {dominant}")
    return f"although {conceded}, {dominant}"


def make_sentence(target: float, rng: np.random.Generator) -> tuple[str, float]:
    """Returns a review sentence whose score is close to ``target`` (in ``[-1, 1]``), drawn
    from ``rng``, and its :func:`score_sentence`.

    Of several sentences of one drawn structure, the one scoring closest is kept.
    """
    structure = _STRUCTURES[rng.choice(len(_STRUCTURES), p=_STRUCTURE_PROBS)]
    candidates = [_sentence_candidate(rng, structure) for _ in range(_SENTENCE_CANDIDATES)]
    scores = [score_sentence(text) for text in candidates]
    best = int(np.argmin([abs(score - target) for score in scores]))
    return candidates[best], scores[best]
