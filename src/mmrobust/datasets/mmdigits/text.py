"""Text modality of MM-Digits: a noisy number word in one of ten languages.

Every sample writes its digit as a lower-case number word ("sept", "neljä", "dziewięć" ...) in a
language drawn per sample, then corrupts it character by character: each character is, with
probability :data:`CHAR_NOISE_RATE`, substituted, deleted, swapped with its neighbour, masked
with ``_`` or preceded by an inserted character. The result is tokenised one character per token
over a fixed vocabulary (``<pad>`` = 0, ``<unk>`` = 1, then the sorted characters), truncated or
padded to :data:`TEXT_LENGTH` tokens.
"""

from __future__ import annotations

import numpy as np

#: Number words 0..9 per language (ISO 639-1 code -> ten lower-case words).
NUMBER_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "de": ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"),
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "it": ("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"),
    "pt": ("zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"),
    "nl": ("nul", "een", "twee", "drie", "vier", "vijf", "zes", "zeven", "acht", "negen"),
    "sv": ("noll", "ett", "två", "tre", "fyra", "fem", "sex", "sju", "åtta", "nio"),
    "pl": ("zero", "jeden", "dwa", "trzy", "cztery", "pięć", "sześć", "siedem", "osiem", "dziewięć"),
    "fi": ("nolla", "yksi", "kaksi", "kolme", "neljä", "viisi", "kuusi", "seitsemän", "kahdeksan", "yhdeksän"),
}
#: Languages in a fixed order (the order of :data:`NUMBER_WORDS`).
LANGUAGES: tuple[str, ...] = tuple(NUMBER_WORDS)
#: Probability that a given character of the word is hit by one noise operation.
CHAR_NOISE_RATE: float = 0.40
#: Relative weights of the noise operations applied to a hit character.
NOISE_OPS: dict[str, float] = {
    "substitute": 0.30,
    "delete": 0.20,
    "insert": 0.15,
    "swap": 0.15,
    "mask": 0.20,
}
#: Character that masks an unreadable character.
MASK_CHAR: str = "_"
#: Tokens per sample (longer strings are truncated, shorter ones padded with ``PAD_ID``).
TEXT_LENGTH: int = 16
PAD_TOKEN: str = "<pad>"
UNK_TOKEN: str = "<unk>"
PAD_ID: int = 0
UNK_ID: int = 1

#: Characters that substitutions and insertions draw from: every letter of every number word.
NOISE_ALPHABET: tuple[str, ...] = tuple(sorted({ch for words in NUMBER_WORDS.values() for w in words for ch in w}))


def build_vocab() -> list[str]:
    """The fixed token vocabulary; the index of an entry is its token id.

    Returns:
        ``["<pad>", "<unk>", *sorted characters]`` over every character that the number words
        and the noise can produce (``_`` included).
    """
    chars = sorted(set(NOISE_ALPHABET) | {MASK_CHAR})
    return [PAD_TOKEN, UNK_TOKEN, *chars]


def encode(text: str, vocab: list[str], length: int = TEXT_LENGTH) -> np.ndarray:
    """Tokenise a string one character per token.

    Args:
        text: The string.
        vocab: Vocabulary from :func:`build_vocab`.
        length: Output length (truncate, or pad with ``PAD_ID``).

    Returns:
        Token ids, shape ``(length,)``, int64; unknown characters map to ``UNK_ID``.
    """
    index = {tok: i for i, tok in enumerate(vocab)}
    ids = np.full(length, PAD_ID, dtype=np.int64)
    for i, ch in enumerate(text[:length]):
        ids[i] = index.get(ch, UNK_ID)
    return ids


def corrupt(word: str, rng: np.random.Generator, rate: float = CHAR_NOISE_RATE) -> str:
    """Apply character-level noise to a word.

    Args:
        word: The clean word.
        rng: Generator for the noise.
        rate: Probability that each character is hit by one noise operation.

    Returns:
        The corrupted string (possibly empty).
    """
    ops = list(NOISE_OPS)
    weights = np.asarray([NOISE_OPS[o] for o in ops], dtype=np.float64)
    weights = weights / weights.sum()
    chars = list(word)
    out: list[str] = []
    i = 0
    while i < len(chars):
        ch = chars[i]
        if rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        op = ops[int(rng.choice(len(ops), p=weights))]
        if op == "substitute":
            out.append(NOISE_ALPHABET[int(rng.integers(len(NOISE_ALPHABET)))])
        elif op == "insert":
            out.append(NOISE_ALPHABET[int(rng.integers(len(NOISE_ALPHABET)))])
            out.append(ch)
        elif op == "swap" and i + 1 < len(chars):
            out.extend((chars[i + 1], ch))
            i += 1
        elif op == "mask":
            out.append(MASK_CHAR)
        elif op == "swap":  # last character: nothing to swap with, keep it
            out.append(ch)
        # "delete": append nothing
        i += 1
    return "".join(out)


def make_texts(labels: np.ndarray, rng: np.random.Generator, vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one noisy number word per label.

    Args:
        labels: Digit of every sample, shape ``(n,)``.
        rng: Generator for the languages and the noise.
        vocab: Vocabulary from :func:`build_vocab`.

    Returns:
        ``(tokens, language_ids)``: tokens of shape ``(n, TEXT_LENGTH)`` int64 and the index
        into :data:`LANGUAGES` of each sample's language, shape ``(n,)`` int64.
    """
    n = len(labels)
    langs = rng.integers(0, len(LANGUAGES), size=n).astype(np.int64)
    tokens = np.empty((n, TEXT_LENGTH), dtype=np.int64)
    for i in range(n):
        word = NUMBER_WORDS[LANGUAGES[int(langs[i])]][int(labels[i])]
        tokens[i] = encode(corrupt(word, rng), vocab)
    return tokens, langs
