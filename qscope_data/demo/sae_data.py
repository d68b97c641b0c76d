"""The demo SAE's training text: which public sets, which rows, under which licence — read from ../shared/data.

Only sets whose licence allows a shipped derivative (the SAE file ships inside the package) are used; the
non-commercial do_not_answer is not. The SAE is trained once by `make demo-sae` (a machine with ../shared/data);
`qscope demo` on a fresh machine loads the shipped file and needs none of this text.

- general multilingual text (most of it): Universal Dependencies sentences in 14 languages (`ud_text`, CC BY-SA 4.0;
  PUD CC BY-SA 3.0; Italian-MarkIT CC BY 4.0) and Wikipedia paragraphs in zh/ja/ar (CMRC 2018, JSQuAD: CC BY-SA
  4.0; ARCD: MIT, text CC BY-SA), cut into sentence groups of ≤ `CHUNK_CHARS` characters;
- harmful requests: AdvBench behaviours and strings (MIT);
- toxic and clean social-media text, the first rows of each file only (`TOXIC_ROWS`): ParaDetox (CC0), GermEval
  2018 (CC BY 4.0), COLD (Apache-2.0), MLMA en/fr/ar (MIT), ToLD-Br (CC BY-SA 4.0), Russian distorted toxicity
  (MIT), BEEP! Korean hate speech (CC BY-SA 4.0). Evaluations must not score these rows: `training_text_hashes()`
  tells a benchmark which texts the SAE saw (benchmarks/toxicity_real.py drops them);
- the packaged demo corpus (this project's own text, Apache-2.0).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

CHUNK_CHARS = 220
TOXIC_ROWS = 1200
UD_LANGS = ("en", "zh", "de", "fr", "es", "ru", "ja", "ar", "pt", "it", "ko", "hi", "tr", "vi")
WIKI = (("cmrc2018", "zh"), ("jsquad", "ja"), ("arcd", "ar"))
LICENCES = {
    "ud_text": "CC BY-SA 4.0 (PUD CC BY-SA 3.0, Italian-MarkIT CC BY 4.0)", "cmrc2018": "CC BY-SA 4.0",
    "jsquad": "CC BY-SA 4.0", "arcd": "MIT (text CC BY-SA)", "advbench": "MIT", "paradetox": "CC0 1.0",
    "germeval2018": "CC BY 4.0", "cold": "Apache-2.0", "mlma_hate_speech": "MIT", "told_br": "CC BY-SA 4.0",
    "russian_distorted_toxicity": "MIT", "korean_hate_speech": "CC BY-SA 4.0", "qscope-demo": "Apache-2.0",
}
_SENTENCE_END = re.compile(r"(?<=[。！？!?.])\s*")


def _jsonl(path: Path, field: str = "text") -> Iterator[str]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = json.loads(line).get(field)
                if isinstance(text, str) and text.strip():
                    yield text.strip()


def chunks(paragraph: str, limit: int = CHUNK_CHARS) -> Iterator[str]:
    """Whole sentences grouped into pieces of at most `limit` characters (a longer sentence stands alone)."""
    piece = ""
    for sentence in (s for s in _SENTENCE_END.split(paragraph) if s.strip()):
        if piece and len(piece) + len(sentence) > limit:
            yield piece.strip()
            piece = ""
        piece += sentence if not piece or re.match(r"[\u3000-\u9fff]", sentence) else " " + sentence
    if piece.strip():
        yield piece.strip()


def _tsv_column(path: Path, column: int, *, header: bool, rows: int) -> Iterator[str]:
    csv.field_size_limit(1 << 24)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if header:
            next(reader, None)
        for i, row in enumerate(reader):
            if i >= rows:
                break
            if len(row) > column and row[column].strip():
                yield row[column].strip()


def _csv_field(path: Path, field: str, rows: int) -> Iterator[str]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if i >= rows:
                break
            text = (row.get(field) or "").strip()
            if text:
                yield text


def iter_sources(shared: Path) -> Iterator[tuple[str, str]]:
    """(source, text) for every training text, in a fixed order."""
    from qscope_data.demo.corpus import SFT, TEXTS

    for lang in UD_LANGS:
        for text in _jsonl(shared / "ud_text" / f"{lang}.jsonl"):
            yield "ud_text", text
    for name, _lang in WIKI:
        for paragraph in _jsonl(shared / name / "contexts.jsonl"):
            for piece in chunks(paragraph):
                yield name, piece
    for text in _csv_field(shared / "advbench" / "harmful_behaviors.csv", "goal", 10**6):
        yield "advbench", text
    for text in _csv_field(shared / "advbench" / "harmful_strings.csv", "target", 10**6):
        yield "advbench", text
    for column in (0, 1):
        for text in _tsv_column(shared / "paradetox" / "paradetox.tsv", column, header=True, rows=TOXIC_ROWS // 2):
            yield "paradetox", text
    for text in _tsv_column(shared / "germeval2018" / "germeval2018.training.txt", 0, header=False, rows=TOXIC_ROWS):
        yield "germeval2018", text
    yield from (("cold", t) for t in _csv_field(shared / "cold" / "dev.csv", "TEXT", TOXIC_ROWS))
    for lang in ("en", "fr", "ar"):
        yield from (("mlma_hate_speech", t) for t in _csv_field(shared / "mlma_hate_speech" / f"{lang}_dataset.csv",
                                                                 "tweet", TOXIC_ROWS // 2))
    yield from (("told_br", t) for t in _csv_field(shared / "told_br" / "ToLD-BR.csv", "text", TOXIC_ROWS))
    yield from (("russian_distorted_toxicity", t) for t in _tsv_column(
        shared / "russian_distorted_toxicity" / "russian_distorted_toxicity.tsv", 2, header=True, rows=TOXIC_ROWS))
    yield from (("korean_hate_speech", t) for t in _tsv_column(
        shared / "korean_hate_speech" / "train.tsv", 0, header=True, rows=TOXIC_ROWS))
    for path in (TEXTS, SFT):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                text = rec.get("text") or "\n".join(m["content"] for m in rec.get("messages", []))
                yield "qscope-demo", text


def training_texts(shared: Path, seed: int = 0) -> list[tuple[str, str]]:
    """Every (source, text), deduplicated by text and shuffled with `seed` (so any prefix is a fair sample)."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for source, text in iter_sources(shared):
        if text not in seen:
            seen.add(text)
            out.append((source, text))
    random.Random(seed).shuffle(out)
    return out


def text_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def training_text_hashes(shared: Path) -> set[str]:
    """Hashes of every text the demo SAE was trained on (evaluations drop these rows)."""
    return {text_hash(t) for _, t in iter_sources(shared)}


def data_fingerprint(shared: Path) -> str:
    """sha256 over the training texts in order: recorded beside the shipped SAE."""
    digest = hashlib.sha256()
    for source, text in training_texts(shared):
        digest.update(f"{source}\t{text}\n".encode())
    return digest.hexdigest()
