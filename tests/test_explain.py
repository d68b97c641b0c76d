"""`qscope features explain`: dashboards from a real token-level store (tiny Qwen3 + a real SAE file), the logit lens
against an independent computation, explanations and detection scores through a real OpenAI-compatible server on
127.0.0.1 (retries, cache, key hygiene), and the label file feeding `features select` and the gap report."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
import torch

from cli_inprocess import qscope
from dashboard_dom import RenderedSpans, check_feature_page, needs_chromium, rendered_dom
from qscope_data.encode import EncodeOptions, EncodeInputs, run as encode_run
from qscope_data.explain.detection import detection_score
from qscope_data.explain.prompts import EXPLAINER_SYSTEM, parse_detection, parse_explanation
from qscope_data.store import FeatureStore
from qscope_data.testing import _TRAINING_TEXT
from test_synth_http import ChatServer

LAYER = 2
KEY = "sk-qscope-explain-5d1e0b77aa"
KEY_ENV = "QSCOPE_EXPLAIN_TEST_KEY"
LANGS = ("en", "de", "fr")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, sae_dir):
    """A token-level store of 48 labelled texts (each text always in one category), and the 6 busiest features that
    still leave documents where they do not fire (detection needs negatives)."""
    root = tmp_path_factory.mktemp("explain")
    model, sae = tiny_model_dir("qwen3"), sae_dir(layers=(LAYER,))
    records = [{"id": f"d{i:03d}", "text": t, "lang": LANGS[i % 3], "category": "benign" if i % 2 else "cyber"}
               for i, t in enumerate(_TRAINING_TEXT * 4)]
    inp = root / "in.jsonl"
    inp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    encode_run(EncodeOptions(token_level=True), EncodeInputs(str(model), str(sae), inp, [LAYER]), root / "store", progress=False)
    store = FeatureStore(root / "store")
    counts = Counter(f for ids in store.read(LAYER, ["feature_ids"])["feature_ids"].to_list() for f in ids)
    n_docs = store.manifest.n_documents
    busy = [f for f, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n <= 0.6 * n_docs][:6]
    return {"root": root, "model": model, "sae": sae, "store": store, "features": busy, "input": inp}


def token_table(store: FeatureStore) -> pl.DataFrame:
    return store.scan_tokens(LAYER).collect()


def run_dashboard(world, out: Path, *extra: str, capsys=None) -> tuple[int, str, str]:
    ids = ",".join(map(str, world["features"]))
    return qscope("features", "explain", "--features", world["store"].root, "--ids", ids, "--out", out, *extra,
                  capsys=capsys)


# ---------------------------------------------------------------------------------------------------- dashboards


def test_dashboard_contexts_are_the_token_table(world, tmp_path, capsys):
    out = tmp_path / "dash"
    code, stdout, err = run_dashboard(world, out, capsys=capsys)
    assert code == 0, err
    for name in ("index.html", "features.json", "features.parquet", "labels.jsonl", "summary.json"):
        assert (out / name).exists(), name
    table = json.loads((out / "features.json").read_text())
    tokens = token_table(world["store"])
    value_at = {}
    for row in tokens.iter_rows(named=True):
        for f, v in zip(row["feature_ids"], row["values"]):
            value_at[(row["doc_id"], row["position"], f)] = v
    token_at = {(r["doc_id"], r["position"]): r["token_id"] for r in tokens.iter_rows(named=True)}
    docs = world["store"].read(LAYER, ["doc_id", "feature_ids", "lang"])
    for feat in table["features"]:
        f = feat["feature"]
        firing = docs.filter(pl.col("feature_ids").list.contains(f))
        assert feat["docs_firing"] == firing.height
        assert feat["rates"]["lang"]["en"]["firing"] == firing.filter(pl.col("lang") == "en").height
        assert feat["positions_firing"] == sum(1 for (d, p, g), v in value_at.items() if g == f and v > 0)
        assert sum(feat["histogram"]["counts"]) == feat["positions_firing"]
        top = [c for c in feat["contexts"] if c["kind"] == "top"]
        assert top and top[0]["max_act"] == pytest.approx(feat["max_act"])
        assert [c["max_act"] for c in top] == sorted((c["max_act"] for c in top), reverse=True)
        for c in feat["contexts"]:
            assert [token_at[(c["doc_id"], p)] for p in c["positions"]] == c["token_ids"]
            assert c["acts"] == pytest.approx([value_at.get((c["doc_id"], p, f), 0.0) for p in c["positions"]])
            if c["kind"].endswith("negative"):
                assert c["doc_id"] not in set(firing["doc_id"].to_list())
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["id"] for r in labels] == world["features"]
    assert all(r["label"] is None and r["description"] is None and r["score"] is None for r in labels)
    from qscope_data.coverage.inventory import load_labels

    read = load_labels(out / "labels.jsonl")  # the file `features select --labels` reads, empty columns and all
    assert read["id"].to_list() == world["features"] and read["label"].null_count() == read.height
    assert "no explanation" in (out / f"feature-{world['features'][0]}.html").read_text()
    assert pl.read_parquet(out / "features.parquet")["feature"].to_list() == world["features"]


def test_logit_lens_equals_unembedding_of_normed_decoder(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from qscope_data.sae import load_sae

    out = tmp_path / "dash"
    assert run_dashboard(world, out)[0] == 0
    table = json.loads((out / "features.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(world["model"], dtype=torch.float32)
    W_U = model.lm_head.weight.detach()
    gamma = model.model.norm.weight.detach()
    W_dec = load_sae(str(world["sae"]), LAYER).W_dec
    for feat in table["features"]:
        scores = W_U @ (gamma * W_dec[:, feat["feature"]])  # RMSNorm: the weight, times a positive scalar
        lens = feat["logit_lens"]
        assert [t["token_id"] for t in lens["promoted"]] == torch.topk(scores, 10).indices.tolist()
        assert [t["token_id"] for t in lens["suppressed"]] == torch.topk(-scores, 10).indices.tolist()
        assert "norm" in lens["norm"]


def test_store_without_token_table_exits_2_naming_the_fix(world, tmp_path, capsys):
    plain = tmp_path / "plain"
    encode_run(EncodeOptions(), EncodeInputs(str(world["model"]), str(world["sae"]), world["input"], [LAYER]), plain, progress=False)
    code, _, err = qscope("features", "explain", "--features", plain, "--ids", "1", "--out", tmp_path / "o", capsys=capsys)
    assert code == 2 and "no token-level table" in err and "qscope encode --token-level" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()
    code, _, err = qscope("features", "explain", "--features", world["store"].root, "--ids", "1,99999", "--out",
                          tmp_path / "o", capsys=capsys)
    assert code == 2 and "99999" in err
    code, _, err = qscope("features", "explain", "--features", world["store"].root, "--out", tmp_path / "o", capsys=capsys)
    assert code == 2 and "--ids or --inventory" in err
    code, _, err = qscope("features", "explain", "--features", world["store"].root, "--ids", "1", "--window", "1",
                          "--out", tmp_path / "o", capsys=capsys)
    assert code == 2 and "window" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- detection arithmetic


def test_detection_score_from_known_answers():
    truth = [True, True, True, True, False, False, False, False, False, False]
    said = [True, True, True, False, True, False, False, False, False, None]
    s = detection_score(truth, said)
    assert (s.tp, s.fn, s.fp, s.tn, s.unanswered) == (3, 1, 1, 4, 1)
    assert s.recall == 0.75 and s.specificity == 0.8 and s.precision == 0.75
    assert s.balanced_accuracy == pytest.approx((0.75 + 0.8) / 2)
    assert detection_score([True, False], [None, None]).balanced_accuracy is None  # never a made-up number
    assert detection_score([True, True], [True, False]).balanced_accuracy is None  # no negatives answered


def test_answer_parsing():
    assert parse_explanation("**Label:** greetings\nDescription: fires on 'hello'.") .label == "greetings"
    assert parse_explanation("it is about greetings") is None
    assert parse_detection("Sure: [1, 0, 1]", 3) == [True, False, True]
    assert parse_detection("[1, 0]", 3) is None and parse_detection("[2, 0, 1]", 3) is None


# ------------------------------------------------------------------------------------ explainer / scorer over HTTP


def literal_model(messages: list[dict]) -> str:
    """A literal explainer and scorer: the label names the most frequent marked token; the scorer answers 1, 0, 1,
    0, … in each batch (so the expected score follows from the order of excerpts alone)."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if system == EXPLAINER_SYSTEM:
        marked = Counter(re.findall(r"<<(.+?)>>", user, re.S))
        word = marked.most_common(1)[0][0] if marked else "?"
        return f"Label: the token [{word}]\nDescription: fires on [{word}] and what follows it."
    n = int(re.search(r"JSON list of (\d+) numbers", user).group(1))
    return "Answer: [" + ", ".join("1" if i % 2 == 0 else "0" for i in range(n)) + "]"


def test_explain_and_score_over_http_retries_cache_and_no_key(world, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "explained"
    f0, f1 = world["features"][:2]
    plan = {f"explain-f{f0}": lambda n: ("status", 429, 0) if n == 1 else ("ok",),
            f"detect-f{f1}-b0": lambda n: ("status", 503, None) if n <= 2 else ("ok",)}
    spec = "openai:{url}?model=explainer-1&key_env=" + KEY_ENV + "&backoff=0.01&max_retries=3&concurrency=3&rps=200"
    with ChatServer(lambda rid, n: plan.get(rid, lambda _n: ("ok",))(n), literal_model) as server:
        code, stdout, err = run_dashboard(world, out, "--explainer", spec.format(url=server.base_url),
                                          "--detection-batch", "4", "--price-in", "1.0", "--price-out", "2.0",
                                          capsys=capsys)
    assert code == 0, err
    assert server.tries[f"explain-f{f0}"] == 2 and server.tries[f"detect-f{f1}-b0"] == 3
    assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)
    n_requests = len(server.tries)
    summary = json.loads((out / "summary.json").read_text())
    usage = summary["usage"]["explainer"]
    assert usage["sent"] == n_requests and usage["failed"] == 0 and usage["tries"] == n_requests + 3
    assert usage["prompt_tokens"] > 0 and usage["cost_usd"] == pytest.approx(
        usage["prompt_tokens"] * 1e-6 + usage["completion_tokens"] * 2e-6)

    table = {f["feature"]: f for f in json.loads((out / "features.json").read_text())["features"]}
    labels = {r["id"]: r for r in map(json.loads, (out / "labels.jsonl").read_text().splitlines())}
    for f in world["features"]:
        feat, row = table[f], labels[f]
        assert row["label"].startswith("the token [") and row["description"].startswith("fires on [")
        # the scorer said 1 for the even excerpts of each batch of 4, in the order the project sent them
        truth = [a["fires"] for a in feat["answers"]]
        said = [i % 4 % 2 == 0 for i in range(len(truth))]
        tp = sum(t and s for t, s in zip(truth, said))
        fp = sum(s and not t for t, s in zip(truth, said))
        pos, neg = sum(truth), len(truth) - sum(truth)
        assert pos and neg
        assert row["recall"] == pytest.approx(tp / pos, abs=1e-6)
        assert row["score"] == pytest.approx((tp / pos + (neg - fp) / neg) / 2, abs=1e-6)
        assert row["precision"] == (pytest.approx(tp / (tp + fp), abs=1e-6) if tp + fp else None)
        ctx_fires = {(c["doc_id"], c["peak"], c["kind"]): any(a > 0 for a in c["acts"]) for c in feat["contexts"]}
        assert truth == [ctx_fires[(a["doc_id"], a["peak"], a["kind"])] for a in feat["answers"]]
        assert {a["kind"] for a in feat["answers"]} >= {"heldout", "random_negative"}
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"API key written to {path}"
    assert KEY not in stdout + err and KEY not in caplog.text
    assert "retry" in caplog.text  # the retries were logged, without the key

    def answers_of(path: Path) -> list[dict]:  # the label rows without who answered (the rerun's URL differs)
        return [{k: v for k, v in json.loads(line).items() if k not in ("explainer", "scorer")}
                for line in path.read_text().splitlines()]

    before = answers_of(out / "labels.jsonl")
    with ChatServer(lambda rid, n: ("status", 500, None), literal_model) as server:  # would fail every request
        code, _, err = run_dashboard(world, out, "--explainer", spec.format(url=server.base_url),
                                     "--detection-batch", "4", capsys=capsys)
    assert code == 0, err
    assert not server.tries, "a rerun asked the LLM again"
    rerun = json.loads((out / "summary.json").read_text())["usage"]["explainer"]
    assert rerun["sent"] == 0 and rerun["cache_hits"] == n_requests
    assert answers_of(out / "labels.jsonl") == before


def test_failed_requests_are_asked_again_answered_ones_are_not(world, tmp_path, monkeypatch, capsys):
    """A run whose scorer requests all fail keeps the explanations it got; the rerun sends only the scorer's."""
    out = tmp_path / "resume"
    spec = "openai:{url}?model=explainer-1&backoff=0.01&max_retries=1"
    failing = lambda rid, n: ("status", 503, None) if rid.startswith("detect-") else ("ok",)  # noqa: E731
    with ChatServer(failing, literal_model) as server:
        code, stdout, err = run_dashboard(world, out, "--explainer", spec.format(url=server.base_url), capsys=capsys)
    assert code == 0, err
    first = json.loads((out / "summary.json").read_text())
    assert first["explained"] == len(world["features"]) and first["scored"] == 0
    assert first["usage"]["explainer"]["failed"] == sum(1 for r in server.tries if r.startswith("detect-"))
    assert all(r["score"] is None and r["label"] for r in map(json.loads, (out / "labels.jsonl").read_text().splitlines()))
    with ChatServer(lambda rid, n: ("ok",), literal_model) as server:
        code, _, err = run_dashboard(world, out, "--explainer", spec.format(url=server.base_url), capsys=capsys)
    assert code == 0, err
    assert server.tries and all(r.startswith("detect-") for r in server.tries)
    assert json.loads((out / "summary.json").read_text())["scored"] == len(world["features"])


def test_labels_feed_select_and_gap_report_links_dashboard(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    store = world["store"].root
    inv0 = tmp_path / "inv0.yaml"
    code, _, err = qscope("features", "select", "--features", store, "--top", "4", "--out", inv0, capsys=capsys)
    assert code == 0, err
    dash = tmp_path / "dash"
    spec = "openai:{url}?model=explainer-1&key_env=" + KEY_ENV + "&backoff=0.01"
    with ChatServer(lambda rid, n: ("ok",), literal_model) as server:
        code, _, err = qscope("features", "explain", "--features", store, "--inventory", inv0, "--out", dash,
                              "--explainer", spec.format(url=server.base_url), "--detection-batch", "4", capsys=capsys)
    assert code == 0, err
    labels = [json.loads(line) for line in (dash / "labels.jsonl").read_text().splitlines()]
    scores = sorted(r["score"] for r in labels if r["score"] is not None)
    threshold = scores[len(scores) // 2]
    keep = {r["id"] for r in labels if r["score"] is not None and r["score"] >= threshold}
    assert 0 < len(keep) < len(labels)

    inv = tmp_path / "inv.yaml"
    code, _, err = qscope("features", "select", "--features", store, "--top", "4", "--labels", dash / "labels.jsonl",
                          "--min-safety-score", threshold, "--out", inv, capsys=capsys)
    assert code == 0, err
    from qscope_data.coverage.inventory import load_inventory

    inventory = load_inventory(inv)
    assert set(inventory.ids()) == keep
    by_id = {r["id"]: r for r in labels}
    assert all(f.label == by_id[f.id]["label"] and f.description == by_id[f.id]["description"] for f in inventory.features)

    report = tmp_path / "gaps"
    code, _, err = qscope("gaps", "--inventory", inv, "--target", store, "--min-docs", "100000", "--dashboard", dash,
                          "--out", report, capsys=capsys)
    assert code == 0, err
    html = (report / "report.html").read_text()
    gaps = json.loads((report / "gaps.json").read_text())["gaps"]
    assert {g["feature"] for g in gaps} == keep
    for g in gaps:
        assert g["label"] == by_id[g["feature"]]["label"]
        assert f'<a href="../dash/feature-{g["feature"]}.html">{g["feature"]}</a>' in html
        assert (report / f"../dash/feature-{g['feature']}.html").resolve().exists()
    assert f"[{gaps[0]['feature']}](../dash/feature-{gaps[0]['feature']}.html)" in (report / "report.md").read_text()
    code, _, err = qscope("gaps", "--inventory", inv, "--target", store, "--dashboard", tmp_path / "nowhere",
                          "--out", tmp_path / "g2", capsys=capsys)
    assert code == 2 and "nowhere" in err


# ------------------------------------------------------------------------------------------- headless Chromium


@needs_chromium
def test_dashboard_in_chromium_shows_the_token_table(world, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "dash"
    assert run_dashboard(world, out)[0] == 0
    f = world["features"][0]
    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    assert check_feature_page(out / f"feature-{f}.html", token_table(world["store"]), f, tokenizer, tmp_path) >= 2

    other = world["features"][1]
    dom, err = rendered_dom((out / "index.html").resolve().as_uri() + f"#q={other}", tmp_path)
    index = RenderedSpans()
    index.feed(dom)
    assert sorted(r["id"] for r in index.rows) == sorted(world["features"])
    assert [r["id"] for r in index.rows if not r["hidden"]] == [other], "search by id did not filter the index"


def test_local_hf_explainer_runs_and_an_unreadable_answer_is_not_a_label(world, tmp_path, capsys):
    """A local HF chat model as explainer (a random tiny Qwen3 writes gibberish): the run finishes, every feature
    records why it has no label, and the label file leaves label and score empty instead of inventing them."""
    out = tmp_path / "hf"
    spec = f"hf:{world['model']}?max_new_tokens=6&temperature=0"
    code, stdout, err = qscope("features", "explain", "--features", world["store"].root, "--ids",
                               ",".join(map(str, world["features"][:2])), "--out", out, "--explainer", spec, capsys=capsys)
    assert code == 0, err
    table = json.loads((out / "features.json").read_text())["features"]
    assert all(f["label"] is None and f["explain_error"].startswith("unreadable answer") for f in table)
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert all(r["label"] is None and r["score"] is None and r["explainer"].startswith("hf:") for r in labels)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["usage"]["explainer"]["sent"] == 2 and summary["explained"] == 0
    code, _, err = qscope("features", "explain", "--features", world["store"].root, "--ids", "1", "--out", out,
                          "--explainer", "offline", capsys=capsys)
    assert code == 2 and "cannot explain" in err


def test_logit_lens_through_a_layernorm_with_bias_and_tied_embeddings(tmp_path):
    """GPT-2 (LayerNorm with weight and bias, unembedding tied to the embedding): the lens ranks tokens by
    W_U · (γ ⊙ (d − mean d)) — the bias, which shifts every feature alike, is not part of it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from qscope_data.capture import load_model
    from qscope_data.explain.logit_lens import logit_lens
    from qscope_data.testing import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    with torch.no_grad():
        model.transformer.ln_f.weight.uniform_(0.2, 2.0)
        model.transformer.ln_f.bias.normal_(0, 3.0)  # large: it would dominate the ranking if it were kept
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    lm = load_model(str(tmp_path / "gpt2"))
    W_dec = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    lens = logit_lens(lm, W_dec, [0, 3, 7], k=5)
    W_U, gamma = model.transformer.wte.weight.detach(), model.transformer.ln_f.weight.detach()
    for f in (0, 3, 7):
        d = W_dec[:, f]
        scores = W_U @ (gamma * (d - d.mean()))
        assert [t["token_id"] for t in lens[f]["promoted"]] == torch.topk(scores, 5).indices.tolist()
        assert [t["token_id"] for t in lens[f]["suppressed"]] == torch.topk(-scores, 5).indices.tolist()
        assert "ln_f" in lens[f]["norm"]
