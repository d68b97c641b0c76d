"""SASFT training lowers the penalised features' pre-activations on off-language text, clearly more than plain SFT.

A tiny random Qwen3 is fine-tuned twice from the same weights with the same seed and data (24 steps, CPU): once with
λ = 10 and once with λ = 0. The measure, computed independently of the trainer's hook (from `output_hidden_states`):
the mean pre-activation of the features penalised on each example's language, over its assistant-response tokens.
Margin: the λ > 0 run's drop is at least 2× the λ = 0 run's drop (when that is positive) and at least 0.1 in
absolute terms (the starting mean is ≈ 0.09; λ = 0 moves it by ≈ 0.01, λ = 10 by ≈ 0.3 on the dev machine).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl", reason="SASFT training needs the train extra (trl)")
from datasets import Dataset
from trl import SFTConfig

from qscope_data.capture import load_model
from qscope_data.sasft.loss import SASFTLoss
from qscope_data.sasft.prepare import PrepareConfig, prepare, write_prepare
from qscope_data.sasft.trainer import SASFTTrainer, tokenize_example
from qscope_data.testing import random_sae
from sasft_data import conversations, text_records

LANGS = ("en", "ru", "zh")
LAYER = 1
STEPS = 24


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sasft-train")
    model_dir = tiny_model_dir()
    lm = load_model(str(model_dir))
    data = root / "multi.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in text_records(LANGS)), encoding="utf-8")
    write_prepare(prepare(lm, random_sae(64, 512, 16, layer=LAYER, seed=2), data, PrepareConfig(layer=LAYER, top=8)),
                  root / "plan")
    loss = SASFTLoss.from_plan(root / "plan")
    rows = conversations(LANGS)
    index = {lang: i for i, lang in enumerate(loss.baseline_languages)}
    tokenized = [tokenize_example(r, lm.tokenizer, lang_index=index) for r in rows]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine runs ~4x faster single-threaded
    yield {"root": root, "model_dir": model_dir, "loss": loss, "rows": rows, "tokenized": tokenized}
    torch.set_num_threads(threads)


def penalised_mean_pre(model, loss: SASFTLoss, tokenized: list[dict]) -> float:
    """Mean pre-activation of each example's penalised features over its response tokens (block LAYER's output)."""
    values = []
    model.eval()
    with torch.no_grad():
        for ex in tokenized:
            hidden = model(input_ids=torch.tensor([ex["input_ids"]]), output_hidden_states=True).hidden_states[LAYER + 1][0]
            pre = loss.pre_activations(hidden)
            mask = torch.tensor(ex["sasft_mask"]).bool()
            values.append(pre[mask][:, loss.penalised[ex["sasft_lang"]]].flatten())
    return float(torch.cat(values).mean())


def fine_tune(setup, lam: float, out: str) -> tuple[float, float, list[float]]:
    lm = load_model(str(setup["model_dir"]))
    before = penalised_mean_pre(lm.model, setup["loss"], setup["tokenized"])
    args = SFTConfig(output_dir=out, max_steps=STEPS, per_device_train_batch_size=6, learning_rate=2e-3,
                     lr_scheduler_type="constant", seed=0, data_seed=0, report_to=[], save_strategy="no",
                     logging_steps=8, disable_tqdm=True, bf16=False, gradient_checkpointing=False)
    trainer = SASFTTrainer(lm.model, args, sasft_loss=setup["loss"], sasft_lambda=lam,
                           train_dataset=Dataset.from_list(setup["rows"]), processing_class=lm.tokenizer)
    trainer.train()
    after = penalised_mean_pre(lm.model, setup["loss"], setup["tokenized"])
    reduce = [e["sasft_reduce"] for e in trainer.state.log_history if "sasft_reduce" in e]
    return before, after, reduce


def test_sasft_lowers_penalised_pre_activations_more_than_plain_sft(setup, tmp_path) -> None:
    b0, a0, reduce0 = fine_tune(setup, 0.0, str(tmp_path / "plain"))
    b1, a1, reduce1 = fine_tune(setup, 10.0, str(tmp_path / "sasft"))
    assert b0 == pytest.approx(b1)  # same starting weights
    drop_plain, drop_sasft = b0 - a0, b1 - a1
    print(f"penalised mean pre-activation: start {b0:.4f}; λ=0 → {a0:.4f} (drop {drop_plain:.4f}); "
          f"λ=10 → {a1:.4f} (drop {drop_sasft:.4f}); L_reduce λ=0 {reduce0}, λ=10 {reduce1}")
    assert drop_sasft >= 0.1
    assert drop_sasft >= 2 * max(drop_plain, 0.0)
    # the penalty itself: with λ > 0 it collapses, with λ = 0 it does not
    assert reduce1[-1] < 0.1 * reduce1[0]
    assert reduce0[-1] > 0.5 * reduce0[0]


def test_language_and_mask_reach_the_loss(setup, tmp_path) -> None:
    """TRL prunes unknown columns and its collator knows only input_ids/labels: the SASFT columns must survive both."""
    lm = load_model(str(setup["model_dir"]))
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], bf16=False,
                     remove_unused_columns=True, shuffle_dataset=False, disable_tqdm=True)
    trainer = SASFTTrainer(lm.model, args, sasft_loss=setup["loss"], train_dataset=Dataset.from_list(setup["rows"]),
                           processing_class=lm.tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"input_ids", "labels", "attention_mask", "sasft_lang", "sasft_mask"} <= set(batch)
    assert "messages" not in batch and "doc_id" not in batch
    langs = [setup["loss"].baseline_languages[int(i)] for i in batch["sasft_lang"]]
    assert set(langs) <= set(LANGS)
    assert batch["sasft_mask"].shape == batch["input_ids"].shape
    # the mask is the assistant response: inside the attention, never the prompt's first token
    assert (batch["sasft_mask"] <= batch["attention_mask"]).all() and (batch["sasft_mask"][:, 0] == 0).all()
    assert (batch["sasft_mask"].sum(1) > 0).all()
    # an example's response tokens decode to its answer text
    ex = setup["tokenized"][0]
    resp = [t for t, m in zip(ex["input_ids"], ex["sasft_mask"]) if m]
    assert lm.tokenizer.decode(resp).startswith(setup["rows"][0]["messages"][1]["content"])
