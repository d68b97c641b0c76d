"""The demo corpus shipped inside the package: labelled short texts and a small chat-format SFT set to curate.

Written for the project (see make_corpus.py, which generates both files from templates with a fixed seed) — no
copied datasets, so the package can ship it and `qscope demo` needs nothing but pip.

texts.jsonl — one record per line: id, text, lang (en de fr es zh), label (toxic | clean: is the *language*
abusive), category (benign | harassment | weapons | cyber | drugs | fraud | self_harm | privacy: what the text is
about or asks for), source ("qscope-demo"), split (train | test, stratified by lang × label × category; the demo mines
rules on train and scores test). Harmful requests are label clean unless phrased abusively; "harmful" means
category not in {benign, harassment}. The demo backbone (MiniLM) is English-only, so non-English toxicity is harder
to read from it — realistic, and English is the largest part.

sft.jsonl — chat conversations: id, messages (system?/user/assistant…, ending in an assistant turn), lang, label,
category, kind (qa | multi_turn | near_duplicate | toxic | harmful_compliance | refusal), duplicate_of (the id a
near-duplicate copies, else null), source. Curation should drop the toxic and harmful_compliance ones and the
near-duplicates, and keep refusals.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from qscope_data.errors import DataError

CORPUS_DIR = Path(__file__).parent / "corpus"
TEXTS = CORPUS_DIR / "texts.jsonl"
SFT = CORPUS_DIR / "sft.jsonl"
LANGS = ("en", "de", "fr", "es", "zh")
LABELS = ("toxic", "clean")
HARM_CATEGORIES = ("weapons", "cyber", "drugs", "fraud", "self_harm", "privacy")
CATEGORIES = ("benign", "harassment", *HARM_CATEGORIES)
SFT_KINDS = ("qa", "multi_turn", "near_duplicate", "toxic", "harmful_compliance", "refusal")


def _read(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from exc
    return rows


def load_texts(*, split: str | None = None, lang: str | None = None) -> list[dict]:
    """The labelled texts, optionally one split (train | test) and/or one language."""
    rows = _read(TEXTS)
    return [r for r in rows if (split is None or r["split"] == split) and (lang is None or r["lang"] == lang)]


def load_sft() -> list[dict]:
    """The chat-format SFT set."""
    return _read(SFT)


def describe() -> dict:
    """Counts a summary or README can print."""
    texts, sft = load_texts(), load_sft()
    return {
        "texts": {
            "path": str(TEXTS), "n": len(texts),
            "by_lang": dict(Counter(r["lang"] for r in texts)),
            "by_label": dict(Counter(r["label"] for r in texts)),
            "by_category": dict(Counter(r["category"] for r in texts)),
            "by_split": dict(Counter(r["split"] for r in texts)),
        },
        "sft": {
            "path": str(SFT), "n": len(sft),
            "by_lang": dict(Counter(r["lang"] for r in sft)),
            "by_kind": dict(Counter(r["kind"] for r in sft)),
        },
    }
