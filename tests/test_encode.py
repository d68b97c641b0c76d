"""The encode stage against an independent reference: for every architecture and batch size, each document's features
equal a dense float64 ReLU(TopK) of `hidden_states[n + 1]` from a plain unpadded forward (first position dropped).
Also: early stop at the stage level, chat spans, token-level table, pass-through schema identical across shards."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from qscope_data.capture import load_model
from qscope_data.encode import EncodeOptions, encode_records, featurize, load_saes, EncodeInputs, run as encode_run
from qscope_data.inputs import iter_records
from qscope_data.sae import reference_encode
from qscope_data.spans import chat_spans
from qscope_data.store import FeatureStore
from qscope_data.testing import ARCHS

WORDS = ("the quick brown fox jumps over a lazy dog while you bake bread with flour water salt and yeast "
         "der schnelle braune Fuchs le renard brun 你好 世界 what is twelve plus thirty").split()


def make_docs(n: int, seed: int = 0, max_words: int = 30) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"doc{i}", "text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words)))),
             "lang": ["en", "de", "zh"][i % 3], "label": i % 2} for i in range(n)]


def reference_features(hidden_rows: torch.Tensor, sae) -> dict[int, tuple[float, int]]:
    """{feature: (max activation, positions active)} from a dense float64 ReLU(TopK) of `hidden_rows` [P, d]."""
    values, ids = reference_encode(hidden_rows.double(), sae.W_enc, sae.b_enc, sae.k)
    dense = torch.zeros(hidden_rows.shape[0], sae.d_sae, dtype=torch.float64)
    keep = ids >= 0
    rows = torch.arange(hidden_rows.shape[0]).unsqueeze(1).expand_as(ids)[keep]
    dense[rows, ids[keep]] = values[keep].double()
    active = (dense > 0)
    return {int(f): (float(dense[:, f].max()), int(active[:, f].sum())) for f in active.any(0).nonzero().flatten()}


def plain_hidden(model, input_ids: list[int], layer: int) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([input_ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0]


def assert_row_matches(row: dict, ref: dict[int, tuple[float, int]]) -> None:
    assert row["feature_ids"] == sorted(ref), row["doc_id"]
    np.testing.assert_allclose(row["max_acts"], [ref[f][0] for f in row["feature_ids"]], atol=1e-4, rtol=0)
    assert row["fire_counts"] == [ref[f][1] for f in row["feature_ids"]]


@pytest.mark.parametrize("arch", [*ARCHS, "minilm"])
def test_store_equals_dense_reference_of_plain_forward(arch, tiny_model_dir, sae_dir, write_jsonl, tmp_path, request):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if arch == "minilm":
        model_path, d_model, loader = request.getfixturevalue("minilm_dir"), 384, AutoModel
    else:
        model_path, d_model, loader = tiny_model_dir(arch), 64, AutoModelForCausalLM
    saes_path = sae_dir(d_model=d_model, layers=(1, 2))
    docs = make_docs(5, max_words=12)
    inp = write_jsonl(docs)

    # The reference: loaded independently, one document at a time, no padding, first position dropped.
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = loader.from_pretrained(model_path, dtype=torch.float32).eval()
    saes = load_saes(str(saes_path), [1, 2])
    expected = []
    for doc in docs:
        ids = tokenizer(doc["text"], truncation=True, max_length=16)["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        expected.append((len(ids), {n: reference_features(hidden[n + 1][0, 1:], saes[n]) for n in (1, 2)}))

    for batch_size in (1, 3):
        out = tmp_path / f"store-bs{batch_size}"
        opts = EncodeOptions(batch_size=batch_size, shard_rows=2, max_tokens=16)
        summary = encode_run(opts, EncodeInputs(str(model_path), str(saes_path), inp, [1, 2]), out, progress=False).stats
        assert (summary["documents"], summary["rejected"], summary["shards"]) == (5, 0, 3)
        store = FeatureStore(out)
        assert store.layers == [1, 2]
        for layer in (1, 2):
            rows = store.read(layer).to_dicts()
            assert [r["doc_id"] for r in rows] == [d["id"] for d in docs]
            for row, doc, (n_tokens, ref) in zip(rows, docs, expected):
                assert (row["n_tokens"], row["n_positions"]) == (n_tokens, n_tokens - 1)
                assert (row["text"], row["lang"], row["label"]) == (doc["text"], doc["lang"], doc["label"])
                assert_row_matches(row, ref[layer])


def test_keep_first_aggregates_position_zero(tiny_model_dir, sae_dir):
    lm = load_model(str(tiny_model_dir("qwen3")))
    saes = load_saes(str(sae_dir()), [1])
    records = [r for r in iter_records_from(make_docs(3))]
    with_first = featurize(lm, saes, records, EncodeOptions(keep_first=True))[1].to_pylist()
    for row, rec in zip(with_first, records):
        ids = lm.tokenizer(rec.text)["input_ids"]
        assert row["n_positions"] == row["n_tokens"] == len(ids)
        assert_row_matches(row, reference_features(plain_hidden(lm.model, ids, 1), saes[1]))


def iter_records_from(docs: list[dict], tmp_name: str = "x.jsonl"):
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write("".join(json.dumps(d) + "\n" for d in docs))
    return list(iter_records(fh.name))


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_5_moe"])
def test_forward_stops_after_the_deepest_layer_during_encode(arch, tiny_model_dir, sae_dir):
    lm = load_model(str(tiny_model_dir(arch)))
    saes = load_saes(str(sae_dir(layers=(0, 1))), [0, 1])
    calls = {"later_blocks": 0, "deepest": 0, "norm": 0, "lm_head": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    handles = [lm.blocks[i].register_forward_hook(count("later_blocks")) for i in range(2, lm.n_layers)]
    handles += [lm.blocks[1].register_forward_hook(count("deepest")),
                lm.model.model.norm.register_forward_hook(count("norm")),
                lm.model.lm_head.register_forward_hook(count("lm_head"))]
    featurize(lm, saes, iter_records_from(make_docs(5)), EncodeOptions(batch_size=2))
    for h in handles:
        h.remove()
    assert calls == {"later_blocks": 0, "deepest": 3, "norm": 0, "lm_head": 0}


CONVERSATIONS = [
    {"id": "c1", "messages": [{"role": "system", "content": "You are a helpful assistant."},
                              {"role": "user", "content": "How do I bake bread?"},
                              {"role": "assistant", "content": "Mix flour, water, salt and yeast, then bake."}]},
    {"id": "c2", "messages": [{"role": "user", "content": "What is 12 plus 30?"},
                              {"role": "assistant", "content": "42."},
                              {"role": "user", "content": "Write a poem about the sea."},
                              {"role": "assistant", "content": "The sea and the sky at night."}]},
    {"id": "c3", "messages": [{"role": "user", "content": "Only a prompt, no answer yet."}]},
]


@pytest.mark.parametrize("span", ["all", "prompt", "response"])
def test_chat_span_aggregates_the_right_positions(span, tiny_model_dir, sae_dir):
    lm = load_model(str(tiny_model_dir("qwen3")))
    saes = load_saes(str(sae_dir()), [1])
    tok = lm.tokenizer
    rows = featurize(lm, saes, iter_records_from(CONVERSATIONS), EncodeOptions(span=span, batch_size=2))[1].to_pylist()
    for row, conv in zip(rows, CONVERSATIONS):
        msgs = conv["messages"]
        full = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, assistant = full["input_ids"], np.asarray(full["assistant_masks"], dtype=bool)
        last_asst = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if span == "all":
            positions = np.arange(1, len(ids))
        elif span == "prompt":
            n_prompt = (len(tok.apply_chat_template(msgs[:last_asst], tokenize=True, add_generation_prompt=True,
                                                    return_dict=True)["input_ids"]) if last_asst is not None else len(ids))
            positions = np.arange(1, n_prompt)
        else:
            positions = np.flatnonzero(assistant)
        assert row["n_tokens"] == len(ids)
        assert row["n_positions"] == len(positions), (conv["id"], span)
        if len(positions):
            assert_row_matches(row, reference_features(plain_hidden(lm.model, ids, 1)[positions], saes[1]))
        else:
            assert row["feature_ids"] == []
    # c3 has no assistant turn: all prompt, no response
    assert rows[2]["n_positions"] == {"all": rows[2]["n_tokens"] - 1, "prompt": rows[2]["n_tokens"] - 1, "response": 0}[span]


def test_text_as_user_reads_a_text_as_the_user_turn_of_a_chat(tiny_model_dir, sae_dir, write_jsonl, tmp_path):
    """`text_as: user` encodes a plain text exactly as the one-turn conversation holding it (the rendering the SFT
    prompts it is compared with get), and the store records how many records went through the chat template."""
    lm = load_model(str(tiny_model_dir("qwen3")))
    saes = load_saes(str(sae_dir()), [1])
    texts = ["How do I hack into my neighbour's wifi?", "A recipe for apple pie, please."]
    as_text = iter_records_from([{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])
    as_chat = iter_records_from([{"id": f"t{i}", "messages": [{"role": "user", "content": t}]} for i, t in enumerate(texts)])
    opts = EncodeOptions(span="prompt", text_as="user", batch_size=2)
    users = featurize(lm, saes, as_text, opts)[1].to_pylist()
    chats = featurize(lm, saes, as_chat, EncodeOptions(span="prompt", batch_size=2))[1].to_pylist()
    plain = featurize(lm, saes, as_text, EncodeOptions(span="prompt", batch_size=2))[1].to_pylist()
    for user, chat, raw in zip(users, chats, plain):
        assert (user["n_tokens"], user["feature_ids"], user["max_acts"]) == (chat["n_tokens"], chat["feature_ids"], chat["max_acts"])
        assert user["n_tokens"] > raw["n_tokens"]  # the template's turn markers around the same words
    data = write_jsonl([{"id": "a", "text": texts[0]}, {"id": "b", "messages": [{"role": "user", "content": texts[1]}]}])
    inputs = EncodeInputs(str(tiny_model_dir("qwen3")), str(sae_dir()), [str(data)], (1,))
    stats = {}
    for text_as in ("text", "user"):
        store = encode_run(EncodeOptions(text_as=text_as), inputs, tmp_path / text_as, progress=False).artifact
        stats[text_as] = (store.manifest.stats["n_records"], store.manifest.stats["n_chat"], store.manifest.options["text_as"])
    assert stats == {"text": (2, 1, "text"), "user": (2, 2, "user")}


def test_span_fallback_without_generation_markers_renders_prefixes(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))
    plain = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))
    plain.chat_template = plain.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    newline = tok.convert_tokens_to_ids("Ċ")
    for conv in CONVERSATIONS[:2]:
        ids, prompt, response = chat_spans(tok, conv["messages"])
        ids2, prompt2, response2 = chat_spans(plain, conv["messages"])
        assert ids == ids2 and (prompt == prompt2).all()
        # Without markers a turn runs to the end of its rendering: the marked content plus the newline after it.
        assert (response2 >= response).all()
        assert all(ids[i] == newline for i in np.flatnonzero(response2 & ~response))


def test_token_level_table_agrees_with_document_table(tiny_model_dir, sae_dir):
    lm = load_model(str(tiny_model_dir("qwen3")))
    saes = load_saes(str(sae_dir()), [2])
    records = iter_records_from(make_docs(5) + CONVERSATIONS[:1])
    result = encode_records(lm, saes, records, EncodeOptions(token_level=True, batch_size=4, span="response"))
    docs = pl.from_arrow(result.docs[2])
    tokens = pl.from_arrow(result.tokens[2])
    assert tokens["position"].min() >= 1
    for row in docs.to_dicts():
        t = tokens.filter(pl.col("doc_id") == row["doc_id"])
        assert t.height == row["n_positions"]
        assert t["position"].to_list() == sorted(t["position"].to_list())
        per_feature: dict[int, list[float]] = {}
        for fids, vals in zip(t["feature_ids"].to_list(), t["values"].to_list()):
            assert vals == sorted(vals, reverse=True) and all(v > 0 for v in vals)
            for f, v in zip(fids, vals):
                per_feature.setdefault(f, []).append(v)
        assert row["feature_ids"] == sorted(per_feature)
        assert row["max_acts"] == [max(per_feature[f]) for f in row["feature_ids"]]
        assert row["fire_counts"] == [len(per_feature[f]) for f in row["feature_ids"]]


def test_passthrough_schema_is_identical_across_shards(tiny_model_dir, sae_dir, write_jsonl, tmp_path):
    docs = make_docs(9)
    for d in docs[:3]:
        d["label"] = int(d["label"])  # ints in shard 0 …
    for d in docs[3:6]:
        d["label"] = d["label"] + 0.5  # … floats in shard 1
        d["score"] = "high"
    docs[6]["score"] = 3  # strings and ints: stored as strings
    docs[7]["meta"] = {"source": "web", "year": 2024}  # only in the last shard
    docs[8]["meta"] = {}
    inp = write_jsonl(docs)
    encode_run(EncodeOptions(shard_rows=3), EncodeInputs(str(tiny_model_dir("qwen3")), str(sae_dir()), inp, [1]), tmp_path / "s", progress=False)
    store = FeatureStore(tmp_path / "s")
    paths = store.shard_paths(1)
    assert len(paths) == 3
    schemas = {str(pq.read_schema(p).remove_metadata()) for p in paths}
    assert len(schemas) == 1
    df = store.read(1)
    assert df.columns[:6] == ["doc_id", "n_tokens", "n_positions", "feature_ids", "max_acts", "fire_counts"]
    assert df["label"].dtype == pl.Float64 and df["label"].to_list()[:6] == [0, 1, 0, 1.5, 0.5, 1.5]
    assert df["score"].to_list() == [None] * 3 + ["high"] * 3 + ["3", None, None]
    assert df["meta"].to_list()[7] == {"source": "web", "year": 2024}
    assert "id" not in df.columns  # the id is doc_id


def test_drop_text_and_content_hash_ids(tiny_model_dir, sae_dir, write_jsonl, tmp_path):
    docs = [{"text": "same text"}, {"text": "same text"}, {"text": "other text", "lang": "en"}]
    encode_run(EncodeOptions(drop_text=True), EncodeInputs(str(tiny_model_dir("qwen3")), str(sae_dir()), write_jsonl(docs), [1]), tmp_path / "s", progress=False)
    df = FeatureStore(tmp_path / "s").read(1)
    assert "text" not in df.columns and df["lang"].to_list() == [None, None, "en"]
    ids = df["doc_id"].to_list()
    assert ids[1] == ids[0] + "#2" and len(set(ids)) == 3


def test_parquet_and_saved_dataset_inputs_give_the_jsonl_store(tiny_model_dir, sae_dir, write_jsonl, tmp_path):
    import datasets
    import pyarrow as pa

    docs = make_docs(4)
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "in.parquet")
    datasets.Dataset.from_list(docs).save_to_disk(str(tmp_path / "ds"))
    stores = {}
    for name, inp in {"jsonl": write_jsonl(docs), "parquet": tmp_path / "in.parquet", "dataset": tmp_path / "ds"}.items():
        encode_run(EncodeOptions(), EncodeInputs(str(tiny_model_dir("qwen3")), str(sae_dir()), inp, [1]), tmp_path / name, progress=False)
        stores[name] = FeatureStore(tmp_path / name).read(1)
    assert stores["jsonl"]["doc_id"].to_list() == [d["id"] for d in docs]
    assert stores["parquet"].equals(stores["jsonl"]) and stores["dataset"].equals(stores["jsonl"])


def test_the_job_is_planned_once_and_an_executor_runs_only_its_pending_shards(tiny_model_dir, sae_dir, write_jsonl,
                                                                               tmp_path):
    """`plan` fixes the shards and what the store already holds; a resumed job yields only the unfinished shard, and
    the executors reach the store only through the job (no private helpers, no store internals)."""
    import ast
    import re
    from pathlib import Path

    import qscope_data.executors as executors
    from qscope_data.encode import plan

    inputs = EncodeInputs(str(tiny_model_dir("qwen3")), str(sae_dir()), write_jsonl(make_docs(7)), [1])
    options, out = EncodeOptions(shard_rows=3), tmp_path / "s"
    first = encode_run(options, inputs, out, progress=False)
    assert first.stats["shards"] == 3 and first.artifact.manifest.n_documents == 7
    assert plan(options, inputs, out).state == "finished"
    (out / "_progress" / "part-00001.json").unlink()
    (out / "manifest.json").unlink()
    job = plan(options, inputs, out)
    skipped: list[int] = []
    assert job.state == "resume" and [s.index for s, _ in job.pending(on_skip=skipped.append)] == [1]
    assert skipped == [3, 1] and (job.n_shards, job.skipped) == (3, 2)
    again = encode_run(options, inputs, out, progress=False)
    assert (again.stats["state"], again.stats["documents_encoded"], again.stats["documents"]) == ("resume", 3, 7)
    for path in Path(executors.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        private = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(
            "qscope_data") for a in n.names if a.name.startswith("_")]
        assert not private, f"{path.name} imports private helpers {private}"
        assert not re.search(r"PROGRESS_DIR|[\"'/]_progress\b", path.read_text()), f"{path.name} names store internals"
