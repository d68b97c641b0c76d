"""SASFT, measured on the real LM (Gemma-3-270M by default): LoRA fine-tuning with λ = 0 against λ > 0, same seed,
data and steps, beside the untuned model, in one run.

1. plan: `qscope_data.sasft.prepare` on UD sentences (en, zh; 60 each) with the given SAE at its block: each
   language's most monolingual features and their α baselines;
2. SFT set: XQuAD questions in en and zh, each answered with the context sentence that holds the answer (a
   sentence in the question's language); held out: questions of other XQuAD articles, never trained on;
3. train: LoRA (peft; r 8 on q/k/v/o projections) for `--steps` steps with `SASFTTrainer`, λ = 0 and λ = `--lambda`
   (default: auto — 1 / the plan's L_reduce on the training set before training, so the penalty starts at ≈ 1 nat);
4. held-out report per model: code-switching rate of greedy responses (the project's detector: a response that
   holds a language other than the prompt's), mean pre-activation of the penalised features on other-language
   held-out text (the quantity L_reduce pushes below α), and held-out LM loss of the reference answers.

    python benchmarks/bench_sasft.py --sae DIR [--model DIR] [--layer 6] [--steps 24] [--lambda auto]

Data: ../shared/data (XQuAD CC BY-SA 4.0, google-deepmind/xquad; UD CC BY-SA).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))
LANGS = ("en", "zh")
_SENT = re.compile(r"(?<=[.!?。！？])\s*")


def xquad_pairs(lang: str) -> list[tuple[int, dict]]:
    """(article index, {question, answer sentence}) for every XQuAD question of `lang`."""
    data = json.loads((SHARED / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))["data"]
    out = []
    for a, art in enumerate(data):
        for para in art["paragraphs"]:
            ctx = para["context"]
            for qa in para["qas"]:
                start = qa["answers"][0]["answer_start"]
                pos = 0
                for sent in _SENT.split(ctx):
                    if pos <= start < pos + len(sent) + 1 and 10 <= len(sent) <= 220:
                        out.append((a, {"question": qa["question"], "answer": sent.strip()}))
                        break
                    pos = ctx.find(sent, pos) + len(sent) if sent else pos
    return out


def build_data(n_train: int, n_eval: int, seed: int):
    rng = random.Random(seed)
    train, held = [], []
    for lang in LANGS:
        pairs = xquad_pairs(lang)
        arts = sorted({a for a, _ in pairs})
        eval_arts = set(arts[-8:])  # held-out articles
        tr = [p for a, p in pairs if a not in eval_arts]
        ev = [p for a, p in pairs if a in eval_arts]
        rng.shuffle(tr)
        rng.shuffle(ev)
        train += [{"messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}],
                   "lang": lang} for p in tr[:n_train]]
        held += [{"question": p["question"], "answer": p["answer"], "lang": lang} for p in ev[:n_eval]]
    rng.shuffle(train)
    return train, held


def ud_docs(per_lang: int, seed: int, path: Path) -> Path:
    """`per_lang` UD sentences per language as the plan's input JSONL."""
    rng = random.Random(seed)
    docs = []
    for lang in LANGS:
        rows = [json.loads(line) for line in (SHARED / "ud_text" / f"{lang}.jsonl").open(encoding="utf-8")]
        rng.shuffle(rows)
        docs += [{"id": f"{lang}-{i}", "text": r["text"], "lang": lang} for i, r in enumerate(rows[:per_lang])]
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def render(tok, question: str, answer: str | None = None) -> str:
    msgs = [{"role": "user", "content": question}]
    if answer is None:
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)


def evaluate(lm, loss, held: list[dict], max_new_tokens: int) -> dict:
    """Code-switching rate, penalised features' mean pre-activation on other-language text, held-out LM loss."""
    from qscope_data.capture import edit_block_output
    from qscope_data.sasft.langdetect import is_code_switched
    from qscope_data.synth.steering import generate

    tok = lm.tokenizer
    lm.model.eval()
    prompts = [render(tok, h["question"]) for h in held]
    outs = generate(lm, prompts, max_new_tokens=max_new_tokens, temperature=0.0, batch_size=8,
                    repetition_penalty=1.2, add_special_tokens=False)
    switched = {lang: [] for lang in LANGS}
    for h, o in zip(held, outs):
        switched[h["lang"]].append(is_code_switched(o, h["lang"])[0])
    pre_sum, pre_n, nll_sum, nll_n = 0.0, 0, 0.0, 0
    for h, prompt in zip(held, prompts):
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(render(tok, h["question"], h["answer"]), add_special_tokens=False, return_tensors="pt")["input_ids"]
        seen = {}

        def keep(hidden, call):
            seen["h"] = hidden
            return hidden

        with edit_block_output(lm, loss.layer, keep), torch.inference_mode():
            logits = lm.model(input_ids=ids.to(lm.device)).logits[0].float()
        tgt = ids[0, len(p_ids):].to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits[len(p_ids) - 1:-1], tgt, reduction="sum")
        nll_sum, nll_n = nll_sum + float(nll), nll_n + tgt.numel()
        li = loss.lang_index(h["lang"])
        pen = loss.penalised[li]  # features of the *other* languages, penalised on this text
        if li >= 0 and bool(pen.any()):
            pre = loss.pre_activations(seen["h"][0, 1:].to(loss.W_enc.device))[:, pen]
            pre_sum, pre_n = pre_sum + float(pre.sum()), pre_n + pre.numel()
    return {
        "code_switching": {lang: round(sum(v) / len(v), 3) if v else None for lang, v in switched.items()},
        "code_switching_all": round(sum(sum(v) for v in switched.values()) / len(held), 3),
        "penalised_pre_activation": round(pre_sum / max(pre_n, 1), 3),
        "heldout_loss": round(nll_sum / max(nll_n, 1), 4),
        "samples": [{"lang": h["lang"], "q": h["question"], "out": o} for h, o in zip(held, outs)][:: max(1, len(held) // 6)],
    }


def fine_tune(model_dir: str, loss, train_rows: list[dict], lam: float, steps: int, seed: int, lr: float, out: Path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig

    from qscope_data.capture import load_model
    from qscope_data.sasft.trainer import SASFTTrainer

    torch.manual_seed(seed)
    lm = load_model(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(lm.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    args = SFTConfig(output_dir=str(out), max_steps=steps, learning_rate=lr, per_device_train_batch_size=4,
                     max_length=96, seed=seed, data_seed=seed, logging_steps=max(1, steps // 6), save_strategy="no",
                     report_to=[], gradient_checkpointing=False, disable_tqdm=True, use_cpu=True)
    trainer = SASFTTrainer(peft_model, args, sasft_loss=loss, sasft_lambda=lam, train_dataset=Dataset.from_list(train_rows),
                           processing_class=lm.tokenizer)
    t0 = time.perf_counter()
    trainer.train()
    log = [{k: v for k, v in e.items() if k in ("step", "loss", "ce_loss", "sasft_reduce")} for e in trainer.state.log_history]
    return lm, time.perf_counter() - t0, log


def initial_reduce(lm, loss, train_rows: list[dict]) -> float:
    """L_reduce of the untuned model on the training responses (all positions but the first), for the auto λ."""
    from qscope_data.capture import capture

    vals = []
    for row in train_rows[:32]:
        text = render(lm.tokenizer, row["messages"][0]["content"], row["messages"][1]["content"])
        enc = lm.tokenizer([text], return_tensors="pt", add_special_tokens=False)
        h = capture(lm, enc["input_ids"], enc["attention_mask"], [loss.layer])[loss.layer]
        lang = torch.tensor([loss.lang_index(row["lang"])])
        mask = torch.ones_like(enc["input_ids"])
        mask[:, 0] = 0
        vals.append(float(loss(h, lang, mask).loss))
    return sum(vals) / len(vals)


def main() -> None:
    from qscope_data.capture import load_model
    from qscope_data.sae import load_sae
    from qscope_data.sasft.loss import SASFTLoss
    from qscope_data.sasft.prepare import PrepareConfig, prepare, write_prepare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sae", required=True, help="SAE folder for --layer (e.g. from `qscope sae train`)")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--lambda", dest="lam", default="auto")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--top", type=int, default=8, help="features per language")
    ap.add_argument("--n-train", type=int, default=48, help="SFT examples per language")
    ap.add_argument("--n-eval", type=int, default=12, help="held-out prompts per language")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "sasft"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found (set QSCOPE_SHARED_DATA)")
    model = args.model
    if model is None:
        from qscope_data.demo.gemma import ensure_gemma

        model = str(ensure_gemma())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = load_model(model, dtype=torch.float32)
    sae = load_sae(args.sae, args.layer)
    plan = prepare(lm, sae, str(ud_docs(60, args.seed, out / "plan_input.jsonl")), PrepareConfig(layer=args.layer, top=args.top, max_tokens=64))
    write_prepare(plan, out / "plan")
    loss = SASFTLoss.from_plan(out / "plan")
    train_rows, held = build_data(args.n_train, args.n_eval, args.seed)
    r0 = initial_reduce(lm, loss, train_rows)
    lam = 1.0 / max(r0, 1e-6) if args.lam == "auto" else float(args.lam)
    results = {"untuned": evaluate(lm, loss, held, args.max_new_tokens)}
    del lm
    logs, secs = {}, {}
    for name, value in (("λ=0", 0.0), (f"λ={lam:.3g}", lam)):
        tuned, secs[name], logs[name] = fine_tune(model, loss, train_rows, value, args.steps, args.seed, args.lr,
                                                  out / "tmp")
        results[name] = evaluate(tuned, loss, held, args.max_new_tokens)
        del tuned
    total = time.perf_counter() - t0
    summary = {"model": model, "sae": args.sae, "layer": args.layer, "plan_features": loss.n_features,
               "initial_reduce": r0, "lambda": lam, "steps": args.steps, "lr": args.lr, "train_examples": len(train_rows),
               "heldout_prompts": len(held), "train_seconds": secs, "seconds": round(total, 1), "results": results,
               "train_log": logs}
    (out / "sasft_bench.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"model {model} · block {args.layer} · {loss.n_features} penalised features ({args.top}/language) · "
          f"LoRA r8 · {args.steps} steps × 4 examples · lr {args.lr} · seed {args.seed} · L_reduce before training "
          f"{r0:.3g} → λ = {lam:.3g}")
    print("| model | code-switching en | code-switching zh | all | penalised features' mean pre-activation "
          "(other-language text) | held-out LM loss | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        cs = r["code_switching"]
        print(f"| {name} | {cs['en']} | {cs['zh']} | {r['code_switching_all']} | {r['penalised_pre_activation']} | "
              f"{r['heldout_loss']} | {secs.get(name, 0):.0f} |")
    print(f"{len(held)} held-out prompts ({args.n_eval}/language), greedy {args.max_new_tokens} tokens; {total:.0f} s total")


if __name__ == "__main__":
    main()
