"""The words a gap feature fires on in its own reference examples: what the feature is about, read off the model.

Why: a gap usually comes with no label or description (nobody has explained the feature yet), and the generator's
only clue is then a category and a few examples. A sparse feature fires on a few tokens of each example ("fake"
in "create fake invoices", "DDoS", "fentanyl"); those words name the concept better than the category does, so the
few-shot header and the chat prompt carry them. They are found by encoding the examples token by token through
the verifier's own encode options (the rendering verification reads), taking each example's peak position, and
widening that token to the whitespace-delimited word that holds it (decoded from the neighbouring tokens, so it
works for SentencePiece and byte-level tokenizers alike). Words are ranked by how many examples peak on them, then
by peak activation.
"""

from __future__ import annotations

from collections import defaultdict

from qscope_data.capture import LoadedModel
from qscope_data.encode import encode_records
from qscope_data.encode_options import EncodeOptions
from qscope_data.inputs import Record
from qscope_data.sae import SparseAutoencoder

WINDOW = 6  # tokens either side of the peak that are decoded to find the word around it
MAX_WORD_CHARS = 40
PHRASE_WORDS_BEFORE = 1  # "cheat on", not "on": a feature that fires on a function word names its context
_STRIP = "\"'“”‘’«»()[]{}<>.,;:!?¿¡。，、？！：；…*"


def firing_words(lm: LoadedModel, sae: SparseAutoencoder, layer: int, feature: int, examples: list[str],
                 options: EncodeOptions, *, top: int = 4) -> list[str]:
    """Up to `top` words on which `feature` peaks in `examples` (each read as a user turn, as verification reads a
    prompt), most examples first; [] when it fires on none of them."""
    if not examples:
        return []
    records = [Record(doc_id=f"k{i}", file="<keywords>", line=i + 1, text=None,
                      messages=[{"role": "user", "content": text}], fields={"id": f"k{i}"})
               for i, text in enumerate(examples)]
    opts = options.model_copy(update={"token_level": True, "drop_text": True, "id_field": "id"})
    tokens = encode_records(lm, {layer: sae}, records, opts).tokens[layer]  # type: ignore[index]
    by_doc: dict[str, list[tuple[int, int, float]]] = defaultdict(list)  # doc → (position, token id, activation)
    for doc, pos, tok, ids, values in zip(*(tokens.column(c).to_pylist()
                                            for c in ("doc_id", "position", "token_id", "feature_ids", "values"))):
        act = dict(zip(ids, values)).get(feature, 0.0)
        by_doc[doc].append((pos, tok, act))
    count: dict[str, int] = defaultdict(int)
    best: dict[str, float] = defaultdict(float)
    for rows in by_doc.values():
        rows.sort()
        peak = max(range(len(rows)), key=lambda i: rows[i][2])
        if rows[peak][2] <= 0:
            continue
        word = _word_at(lm.tokenizer, [t for _, t, _ in rows], peak)
        if word:
            count[word] += 1
            best[word] = max(best[word], rows[peak][2])
    return sorted(count, key=lambda w: (-count[w], -best[w], w))[:top]


def _words_back(text: str, start: int, n: int) -> int:
    """The start of the `n`-th whitespace-delimited word before `start` (the same line; `start` if none)."""
    for _ in range(n):
        i = start
        while i > 0 and text[i - 1] in " \t":
            i -= 1
        if i == 0 or i == start or text[i - 1] == "\n":
            return start
        while i > 0 and not text[i - 1].isspace():
            i -= 1
        start = i
    return start


def _unspaced(char: str) -> bool:
    return "\u2e80" <= char <= "\u9fff" or "\u3040" <= char <= "\u30ff" or "\uf900" <= char <= "\ufaff"


def _word_at(tokenizer, ids: list[int], i: int) -> str:
    """The whitespace-delimited word of the decoded text that holds token `i` (punctuation stripped)."""
    lo, hi = max(0, i - WINDOW), min(len(ids), i + WINDOW + 1)
    before = tokenizer.decode(ids[lo:i], skip_special_tokens=True)
    through = tokenizer.decode(ids[lo:i + 1], skip_special_tokens=True)
    text = tokenizer.decode(ids[lo:hi], skip_special_tokens=True)
    if not through.startswith(before) or not text.startswith(through):
        return ""  # a character split over tokens decodes differently in pieces: no reliable word here
    start, end = len(before), len(through)
    if start < end and text[start].isspace():  # the token opens a word
        while start < end and text[start].isspace():
            start += 1
    else:  # it continues one
        while start > 0 and not text[start - 1].isspace():
            start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    if PHRASE_WORDS_BEFORE and text[start:end].strip(_STRIP) == text[start:end]:  # a word, not "(word": widen
        start = _words_back(text, start, PHRASE_WORDS_BEFORE)
    word = text[start:end].strip(_STRIP)
    if any(_unspaced(c) for c in word):  # a script without spaces (Chinese, Japanese): the token and its neighbours
        word = tokenizer.decode(ids[max(lo, i - 1):i + 2], skip_special_tokens=True).strip().strip(_STRIP)
    return word if 0 < len(word) <= MAX_WORD_CHARS else ""
