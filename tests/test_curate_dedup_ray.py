"""Near-duplicate detection on Ray Data gives exactly the in-process decisions (real Ray, real shared data)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate_corpus import case, run  # noqa: F401 (case: fixture)
from qscope_data.curate.dedup import DedupDoc, find_duplicates

ray = pytest.importorskip("ray")


def edited(text: str, rng: random.Random, edits: int) -> str:
    toks = text.split()
    for _ in range(edits):
        j = rng.randrange(len(toks))
        toks[j] = toks[j] + "!"
    return " ".join(toks)


def shared_corpus(seed_tasks: Path) -> list[DedupDoc]:
    """175 self-instruct tasks plus exact copies, one- and three-edit copies, copies of copies (chains) and a
    conversation: every decision kind the contract has."""
    rows = [json.loads(line) for line in seed_tasks.read_text().splitlines()]
    texts = {r["id"]: f"{r['instruction']}\n{r['instances'][0]['input']}\n{r['instances'][0]['output']}" for r in rows}
    docs = [DedupDoc(i, t) for i, t in texts.items()]
    rng = random.Random(0)
    long_ids = [i for i, t in texts.items() if len(t.split()) >= 60]
    for n, i in enumerate(long_ids[:24]):
        once = edited(texts[i], rng, 1)
        docs.append(DedupDoc(f"{i}-edit1", once))
        if n % 3 == 0:
            docs.append(DedupDoc(f"{i}-exact", "  " + texts[i].replace(" ", "  ")))  # whitespace only: exact
        if n % 4 == 0:
            docs.append(DedupDoc(f"{i}-edit1-again", edited(once, rng, 2)))  # a copy of the copy: chain
            docs.append(DedupDoc(f"{i}-edit5", edited(texts[i], rng, 5)))
    docs.insert(40, DedupDoc("chat", messages=[{"role": "user", "content": texts[long_ids[0]]}]))
    docs.append(DedupDoc("empty", ""))
    rng.shuffle(docs)  # copies before originals too: "first" is positional
    return docs


def test_ray_dedup_equals_in_process(local_ray, shared_data):
    from qscope_data.curate.dedup_ray import find_duplicates_ray

    docs = shared_corpus(shared_data / "self_instruct_seed/seed_tasks.jsonl")
    local = find_duplicates(docs)
    assert sum(d.kind == "duplicate" for d in local.values()) >= 8
    assert sum(d.kind == "near_duplicate" for d in local.values()) >= 24
    assert find_duplicates_ray(docs) == local
    assert find_duplicates_ray(docs, threshold=0.6) == find_duplicates(docs, threshold=0.6)


def test_curate_cli_with_ray_executor_removes_the_same_rows(local_ray, case, tmp_path):
    run(case, tmp_path / "local")
    run(case, tmp_path / "ray", "--executor", "ray")
    local, on_ray = (pq.read_table(tmp_path / name / "removed.parquet").to_pylist() for name in ("local", "ray"))
    assert on_ray == local and any(r["reason"].startswith("near_duplicate_of:") for r in local)
