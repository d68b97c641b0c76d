"""The shipped demo corpus: parses through the real input reader, covers ≥ 4 languages and every label/category,
has unique ids, short texts, SFT conversations ending in an assistant turn — and is exactly what the generator writes."""

from __future__ import annotations

import json
from collections import Counter

from qscope_data.demo import make_corpus
from pathlib import Path

import pytest

from qscope_data.demo.corpus import (
    CATEGORIES,
    HARM_CATEGORIES,
    SFT,
    SFT_KINDS,
    TEXTS,
    describe,
    load_sft,
    load_texts,
)
from qscope_data.inputs import Record, iter_records

TEXT_FIELDS = {"id", "text", "lang", "label", "category", "source", "split"}


def test_texts_parse_through_the_input_reader_without_rejects():
    records = list(iter_records(TEXTS))
    assert all(isinstance(r, Record) for r in records)
    assert 400 <= len(records) <= 700
    assert [r.doc_id for r in records] == [r["id"] for r in load_texts()]


def test_texts_have_languages_labels_categories_and_unique_ids():
    rows = load_texts()
    assert all(set(r) == TEXT_FIELDS for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["text"] for r in rows}) == len(rows)
    langs = Counter(r["lang"] for r in rows)
    assert {"en", "de", "fr", "es"} <= set(langs) and len(langs) >= 4
    assert langs.most_common(1)[0][0] == "en"
    assert {r["label"] for r in rows} == {"toxic", "clean"}
    assert {r["category"] for r in rows} == set(CATEGORIES)
    assert all(r["source"] == "qscope-demo" for r in rows)
    for lang in ("en", "de", "fr", "es"):
        mine = [r for r in rows if r["lang"] == lang]
        assert {r["label"] for r in mine} == {"toxic", "clean"}
        assert set(HARM_CATEGORIES) <= {r["category"] for r in mine}
    # harassment is toxic language; benign never is
    assert all(r["label"] == "toxic" for r in rows if r["category"] == "harassment")
    assert all(r["label"] == "clean" for r in rows if r["category"] == "benign")


def test_split_is_stratified_and_each_side_has_both_labels():
    rows = load_texts()
    assert {r["split"] for r in rows} == {"train", "test"}
    test_share = sum(r["split"] == "test" for r in rows) / len(rows)
    assert 0.25 < test_share < 0.35
    for split in ("train", "test"):
        en = load_texts(split=split, lang="en")
        assert {r["label"] for r in en} == {"toxic", "clean"}


def test_texts_fit_the_demo_reader_in_64_tokens(gemma_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma_dir)
    lengths = [len(ids) for ids in tok([r["text"] for r in load_texts()])["input_ids"]]
    assert max(lengths) <= 64


def test_sft_conversations_end_in_an_assistant_turn_and_hold_things_to_curate():
    rows = load_sft()
    assert 80 <= len(rows) <= 150
    assert len({r["id"] for r in rows}) == len(rows)
    records = list(iter_records(SFT))
    assert all(isinstance(r, Record) and r.messages for r in records)
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles[-1] == "assistant" and "user" in roles
        assert roles[0] in ("system", "user")
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == set(SFT_KINDS)
    assert kinds["near_duplicate"] >= 3 and kinds["toxic"] >= 3 and kinds["harmful_compliance"] >= 3
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        if r["kind"] == "near_duplicate":
            original = by_id[r["duplicate_of"]]
            assert original["messages"][-1] == r["messages"][-1]  # same answer, lightly edited question
    assert len({r["lang"] for r in rows}) >= 4


def test_committed_files_are_exactly_the_generator_output(tmp_path):
    texts, sft = make_corpus.write(tmp_path)
    assert texts.read_bytes() == TEXTS.read_bytes()
    assert sft.read_bytes() == SFT.read_bytes()


def test_describe_counts_match():
    info = describe()
    assert info["texts"]["n"] == len(load_texts()) and info["sft"]["n"] == len(load_sft())
    assert sum(info["texts"]["by_lang"].values()) == info["texts"]["n"]
    json.dumps(info)


SHARED = Path(__file__).parents[1].parent / "shared" / "data"


def test_demo_covers_six_languages_two_of_them_non_latin():
    langs = Counter(r["lang"] for r in load_texts())
    assert set(langs) == {"en", "de", "fr", "es", "zh", "ru"}
    for lang in ("zh", "ru"):
        assert {r["label"] for r in load_texts(lang=lang)} == {"toxic", "clean"}
        assert {r["category"] for r in load_texts(lang=lang)} >= set(HARM_CATEGORIES)


def test_sae_training_text_is_licensed_and_leaves_evaluation_rows_out():
    """Every source of the shipped SAE's text has a licence recorded; do_not_answer (non-commercial) is not one."""
    from qscope_data.demo import sae_data

    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present beside the repository")
    sources = Counter(source for source, _ in sae_data.iter_sources(SHARED))
    assert set(sources) <= set(sae_data.LICENCES) and "do_not_answer" not in sources
    assert sources["ud_text"] > 40_000 and sources["cmrc2018"] > 1000
    texts = sae_data.training_texts(SHARED)
    assert len({t for _, t in texts}) == len(texts)  # deduplicated
    wiki = [len(t) for s, t in texts if s in ("cmrc2018", "jsquad", "arcd")]
    assert sum(n <= sae_data.CHUNK_CHARS for n in wiki) >= 0.9 * len(wiki)  # paragraphs cut into sentence groups
    seen = sae_data.training_text_hashes(SHARED)
    assert sae_data.text_hash(texts[0][1]) in seen
