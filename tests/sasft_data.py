"""Multilingual text and curate-shaped SFT shards for the SASFT tests (built here, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TEXTS: dict[str, list[str]] = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "How do I bake bread? Mix flour, water, salt and yeast, then knead and bake.",
        "Write a poem about the sea and the sky at night.",
        "What is 12 plus 30? The answer is 42.",
        "You are a helpful assistant. Please answer the question carefully.",
        "The weather is nice today and we will walk in the park.",
    ],
    "de": [
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Wie backe ich Brot? Mehl, Wasser, Salz und Hefe mischen, dann kneten.",
        "Das Wetter ist heute schön und wir gehen in den Park.",
        "Was ist zwölf plus dreißig? Die Antwort ist zweiundvierzig.",
        "Schreibe ein Gedicht über das Meer und den Himmel in der Nacht.",
        "Ich kann dir dabei nicht helfen, aber hier sind Informationen.",
    ],
    "ru": [
        "Быстрая коричневая лиса прыгает через ленивую собаку.",
        "Как испечь хлеб? Смешайте муку, воду, соль и дрожжи.",
        "Сегодня хорошая погода, и мы пойдём гулять в парк.",
        "Сколько будет двенадцать плюс тридцать? Ответ сорок два.",
        "Напиши стихотворение о море и ночном небе.",
        "Привет, мир! Пожалуйста, ответь на этот вопрос.",
    ],
    "zh": [
        "敏捷的棕色狐狸跳过了懒狗。",
        "你好，世界！请回答这个问题。",
        "怎么烤面包？把面粉、水、盐和酵母混合，然后揉面。",
        "今天天气很好，我们去公园散步。",
        "十二加三十等于多少？答案是四十二。",
        "写一首关于大海和夜空的诗。",
    ],
}

QUESTIONS = {"en": "Please answer in English.", "de": "Bitte antworte auf Deutsch.", "ru": "Ответь по-русски.",
             "zh": "请用中文回答。"}


def text_records(langs: tuple[str, ...] = ("en", "de", "ru", "zh")) -> list[dict]:
    return [{"id": f"{lang}-{i}", "text": t, "lang": lang} for lang in langs for i, t in enumerate(TEXTS[lang])]


def conversations(langs: tuple[str, ...] = ("en", "ru", "zh"), repeat: int = 1) -> list[dict]:
    """Rows shaped like `qscope curate`'s `messages` format: messages (user question + assistant answer in the
    language), doc_id, source, lang, category, rules, flags, n_tokens, synthetic."""
    rows = []
    for r in range(repeat):
        for lang in langs:
            for i, answer in enumerate(TEXTS[lang]):
                rows.append({
                    "messages": [{"role": "user", "content": QUESTIONS[lang]}, {"role": "assistant", "content": answer}],
                    "doc_id": f"{lang}-{i}-{r}", "source": "input:multi.jsonl", "lang": lang, "category": "general",
                    "rules": [], "flags": [], "n_tokens": 20 + i, "synthetic": None,
                })
    return rows


def write_curate_shards(folder: Path, rows: list[dict], *, n_shards: int = 2, quarantined: list[dict] = ()) -> Path:
    """A folder laid out as `qscope curate` writes it: data/train-*.parquet shards, quarantine/ shards,
    removed.parquet, manifest.json and a README.md card — only data/ is training data."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        part = rows[s::n_shards]
        pq.write_table(pa.Table.from_pylist(part), folder / "data" / f"train-{s:05d}-of-{n_shards:05d}.parquet")
    if quarantined:
        (folder / "quarantine").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(list(quarantined)), folder / "quarantine" / "train-00000-of-00001.parquet")
    removed = [{"doc_id": "gone-1", "source": "input:multi.jsonl", "lang": "en", "category": "general",
                "reason": "rule:toxic", "detail": "", "rules": ["toxic"], "file": "multi.jsonl", "line": 99}]
    pq.write_table(pa.Table.from_pylist(removed), folder / "removed.parquet")
    (folder / "manifest.json").write_text(json.dumps({"shards": n_shards, "rows": len(rows)}, indent=2))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: data/train-*.parquet\n---\n")
    return folder
