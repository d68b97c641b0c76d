"""CLI: `qscope sasft prepare|train|eval` — SAE-guided SFT against unwanted language mixing."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qscope_data.outputs import file_option, folder_option
from pydantic import ValidationError

from qscope_data.errors import UsageError, invalid
from qscope_data.progress import Bar

sasft_app = typer.Typer(help="SAE-guided SFT (SASFT): pick language features, fine-tune with the penalty, measure "
                             "code-switching.", no_args_is_help=True)


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()] or None


@sasft_app.command("prepare")
def prepare(
    model: str = typer.Option(..., "--model", help="Model folder or hub id (causal LM or encoder-only)."),
    sae: str = typer.Option(..., "--sae", help="SAE folder, file or hub repo id."),
    layer: int = typer.Option(..., "--layer", help="Block whose output the SAE reads (0-indexed)."),
    input: list[str] = typer.Option(..., "--input", help="JSONL/Parquet file, glob or folder with text and a language field; repeatable."),
    lang_field: str = typer.Option("lang", "--lang-field", help="Field holding each record's language."),
    text_field: str = typer.Option("text", "--text-field", help="Field holding plain text (records with `messages` use the chat template)."),
    languages: str | None = typer.Option(None, "--languages", help="Target languages, comma-separated (default: all in the input)."),
    top: int = typer.Option(16, "--top", help="Features kept per language."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Tokens read per text."),
    max_docs: int | None = typer.Option(None, "--max-docs-per-language", help="Cap on texts read per language."),
    alpha_stat: str = typer.Option("mean", "--alpha-stat", help="Baseline statistic: mean, or qNN (e.g. q50, q90)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    k: int | None = typer.Option(None, "--k", help="SAE k when its files do not say it."),
    device: str = typer.Option("cpu", "--device"),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Plan folder: sasft.json, encoder_rows.safetensors, report.md/html."),
) -> None:
    """Choose each language's features (monolinguality ν = μ_L − γ) and their per-language baselines α."""
    from qscope_data.capture import load_model
    from qscope_data.inputs import resolve_paths
    from qscope_data.sae import load_sae
    from qscope_data.sasft.prepare import PrepareConfig
    from qscope_data.sasft.prepare import prepare as run_prepare
    from qscope_data.sasft.prepare import write_prepare

    try:
        config = PrepareConfig(layer=layer, lang_field=lang_field, text_field=text_field, languages=_split(languages),
                               top=top, max_tokens=max_tokens, max_docs_per_language=max_docs, batch_size=batch_size,
                               alpha_stat=alpha_stat)
    except ValidationError as exc:
        raise invalid(exc, "sasft prepare") from None
    paths = resolve_paths(input)
    lm = load_model(model, device=device)
    sae_obj = load_sae(sae, layer, k=k)
    with Bar("sasft prepare", transient=True) as bar:
        result = run_prepare(lm, sae_obj, paths, config, progress=bar.start)
    written = write_prepare(result, out)
    print(json.dumps({"out": str(out), "features": {lang: [f.id for f in feats] for lang, feats in result.plan.features.items()},
                      "token_counts": result.plan.token_counts, "rejects": len(result.rejects),
                      "files": {k: str(v) for k, v in written.items()}}, indent=2, ensure_ascii=False))


@sasft_app.command("train")
def train(
    model: str = typer.Option(..., "--model", help="Causal LM folder or hub id to fine-tune."),
    plan: Path = typer.Option(..., "--plan", help="Folder written by `qscope sasft prepare`."),
    data: list[str] = typer.Option(..., "--data", help="Curated shard folder / Parquet / JSONL with `messages` (or text) and a language column."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Output folder: the fine-tuned model, tokenizer and sasft_train.json."),
    lam: float = typer.Option(1.0, "--lambda", help="Weight λ of the SASFT term (0 = plain SFT)."),
    positions: str = typer.Option("response", "--positions", help="Tokens the penalty counts: response | all."),
    languages: str | None = typer.Option(None, "--languages", help="Subset of the plan's target languages to penalise."),
    lang_field: str = typer.Option("lang", "--lang-field"),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after this many optimiser steps (-1: use --epochs)."),
    epochs: float = typer.Option(1.0, "--epochs"),
    lr: float = typer.Option(2e-5, "--lr"),
    batch_size: int = typer.Option(4, "--batch-size"),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    max_length: int = typer.Option(1024, "--max-length"),
    assistant_only_loss: bool = typer.Option(False, "--assistant-only-loss", help="Cross-entropy on assistant tokens only."),
    seed: int = typer.Option(0, "--seed"),
    bf16: bool = typer.Option(False, "--bf16"),
    checkpointing: bool = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing"),
    logging_steps: int = typer.Option(10, "--logging-steps"),
) -> None:
    """Fine-tune with TRL's SFTTrainer and loss CE + λ · L_reduce (needs the `train` extra: trl, accelerate)."""
    try:
        from qscope_data.sasft.trainer import TrainConfig
        from qscope_data.sasft.trainer import train as run_train
    except ImportError as exc:
        raise UsageError(f"sasft train needs TRL: pip install 'qscope-data[train]' ({exc})") from None
    if positions not in ("response", "all"):
        raise UsageError(f"--positions must be response or all, got {positions!r}")
    try:
        config = TrainConfig(plan=plan, sasft_lambda=lam, positions=positions, languages=_split(languages),
                             lang_field=lang_field, max_steps=max_steps, epochs=epochs, learning_rate=lr,
                             batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                             assistant_only_loss=assistant_only_loss, seed=seed, bf16=bf16, gradient_checkpointing=checkpointing,
                             logging_steps=logging_steps)
    except ValidationError as exc:
        raise invalid(exc, "sasft train") from None
    summary = run_train(model, data, out, config)
    last = next((e for e in reversed(summary["log"]) if "sasft_reduce" in e), {})
    print(json.dumps({"out": summary["out"], "steps": summary["steps"], "train_loss": summary["train_loss"],
                      "last_sasft_reduce": last.get("sasft_reduce"), "data": summary["data"]}, indent=2, ensure_ascii=False))


@sasft_app.command("eval")
def eval_(
    model: str = typer.Option(..., "--model", help="Causal LM to evaluate (e.g. the SASFT output)."),
    prompts: list[str] = typer.Option(..., "--prompts", help="JSONL/Parquet prompts: text or messages, with a language field."),
    baseline_model: str | None = typer.Option(None, "--baseline-model", help="The model before SASFT, for the before/after comparison."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lang_field: str = typer.Option("lang", "--lang-field", help="Prompt language field (else detected from the prompt)."),
    text_field: str = typer.Option("text", "--text-field"),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N prompts."),
    device: str = typer.Option("cpu", "--device"),
    responses: Path | None = typer.Option(None, "--responses", help="Write every response with its detection to this JSONL."),
    out: Path | None = typer.Option(None, "--out", callback=file_option, help="Also write the result JSON here."),
) -> None:
    """Code-switching rate of greedy generations (share flagged with a language other than the prompt's), as JSON."""
    from qscope_data.atomic import write_json
    from qscope_data.sasft.evaluate import evaluate

    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}")
    with Bar("sasft evaluate", transient=True) as bar:
        result = evaluate(model, prompts, baseline_spec=baseline_model, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, lang_field=lang_field, text_field=text_field, limit=limit,
                          device=device, responses_out=responses, progress=bar.start)
    if out is not None:
        write_json(out, result)
    print(json.dumps(result, indent=2, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.add_typer(sasft_app, name="sasft")
