"""Exact and near-duplicate detection: lightly edited copies are caught, the first is kept, distinct texts survive."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from qscope_data.curate.dedup import DedupDoc, find_duplicates, jaccard, shingle_hashes, words
from qscope_data.curate.shards import plan_shards

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

BASE = ("Knead the dough for ten minutes until it is smooth and elastic, then cover the bowl with a damp cloth and "
        "leave it somewhere warm for about an hour so the yeast can work; when it has doubled in size, knock it back, "
        "shape it into a loaf, put it in a greased tin and let it rise again before baking it in a hot oven for "
        "thirty minutes until the crust is golden and the loaf sounds hollow when tapped underneath.")


def test_exact_duplicates_ignore_whitespace_but_not_roles():
    a = DedupDoc("a", BASE)
    b = DedupDoc("b", "  " + BASE.replace(" ", "   ") + "\n")
    msg = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": BASE}]
    flipped = [{"role": "assistant", "content": "hi"}, {"role": "user", "content": BASE}]
    dups = find_duplicates([a, b, DedupDoc("m1", messages=msg), DedupDoc("m2", messages=msg),
                            DedupDoc("m3", messages=flipped)], near=False)
    assert {k: (v.kind, v.of) for k, v in dups.items()} == {"b": ("duplicate", "a"), "m2": ("duplicate", "m1")}


def test_near_duplicate_of_lightly_edited_copy_keeps_first():
    edited = BASE.replace("ten minutes", "10 minutes")
    assert jaccard(shingle_hashes(BASE), shingle_hashes(edited)) >= 0.8
    other = "A completely different text about sailing across the northern sea in winter storms. " * 3
    dups = find_duplicates([DedupDoc("first", BASE), DedupDoc("other", other), DedupDoc("copy", edited)])
    assert set(dups) == {"copy"}
    assert dups["copy"].kind == "near_duplicate" and dups["copy"].of == "first" and dups["copy"].similarity >= 0.8
    # below the threshold: a heavier edit is kept
    heavy = " ".join(w.upper() if i % 4 == 0 else w for i, w in enumerate(BASE.split()))
    heavy = heavy.replace("dough", "mixture").replace("loaf", "bread").replace("oven", "stove")
    assert jaccard(shingle_hashes(BASE), shingle_hashes(heavy)) < 0.8
    assert find_duplicates([DedupDoc("first", BASE), DedupDoc("heavy", heavy)]) == {}


def test_near_threshold_is_configurable_and_deterministic():
    edits = [BASE.replace("ten", str(n)) for n in range(11, 16)]
    docs = [DedupDoc(f"d{i}", t) for i, t in enumerate([BASE, *edits])]
    first = find_duplicates(docs)
    assert {k: d.of for k, d in first.items()} == {f"d{i}": "d0" for i in range(1, 6)}  # each edit is near d0, the first
    assert find_duplicates(docs) == first
    assert find_duplicates(docs, threshold=1.0) == {}


def test_cjk_text_is_shingled_by_character():
    assert words("你好世界 hello") == ["你", "好", "世", "界", "hello"]
    zh = "敏捷的棕色狐狸跳过了懒狗。你好，世界！请回答这个问题。我们今天学习数据清洗和去重的方法。"
    dups = find_duplicates([DedupDoc("zh", zh), DedupDoc("zh2", zh.replace("今天", "明天"))], threshold=0.7)
    assert dups["zh2"].of == "zh"


@pytest.mark.skipif(not (SHARED_DATA / "self_instruct_seed").exists(), reason="../shared/data/self_instruct_seed absent")
def test_real_instructions_no_false_positives_and_edits_caught():
    """175 human-written self-instruct tasks: none is a near duplicate of another; lightly edited copies are."""
    rows = [json.loads(line) for line in (SHARED_DATA / "self_instruct_seed/seed_tasks.jsonl").read_text().splitlines()]
    texts = [f"{r['instruction']}\n{r['instances'][0]['input']}\n{r['instances'][0]['output']}" for r in rows]
    docs = [DedupDoc(r["id"], t) for r, t in zip(rows, texts)]
    assert find_duplicates(docs) == {}
    rng = random.Random(0)
    long_ones = [i for i, t in enumerate(texts) if len(t.split()) >= 80][:10]
    copies = []
    for i in long_ones:
        toks = texts[i].split()
        j = rng.randrange(len(toks))
        toks[j] = toks[j] + "!"  # one punctuation edit, plus a changed case elsewhere
        toks[0] = toks[0].upper()
        copies.append(DedupDoc(f"copy_of_{rows[i]['id']}", " ".join(toks)))
    dups = find_duplicates(docs + copies)
    assert {k: v.of for k, v in dups.items()} == {c.doc_id: c.doc_id.removeprefix("copy_of_") for c in copies}


def test_plan_shards_by_rows_and_bytes():
    assert plan_shards([10] * 5, max_rows=2, max_bytes=None) == [(0, 2), (2, 4), (4, 5)]
    assert plan_shards([10, 10, 10, 50, 10], max_rows=100, max_bytes=25) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert plan_shards([], max_rows=3, max_bytes=None) == [(0, 0)]
