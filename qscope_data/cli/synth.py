"""CLI: `qscope synth` (feature-targeted synthetic safety data, verified by re-encoding) and `qscope steer`
(baseline vs steered continuation of one prompt). Thin: parse, call `qscope_data.synth`, print."""

from __future__ import annotations

from pathlib import Path

import typer

from qscope_data.cli.params import option
from qscope_data.outputs import folder_option
from qscope_data.synth.fluency import FluencyOptions
from qscope_data.synth.nearcopy import NearCopyOptions
from qscope_data.synth.options import SynthInputs, SynthOptions

from qscope_data.errors import UsageError


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str | None, flag: str) -> list[int] | None:
    items = _split(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected comma-separated feature ids") from None


def synth(
    gaps: Path = typer.Option(..., "--gaps", help="gaps.json from `qscope gaps`."),
    model: str = typer.Option(..., "--model", help="Verifying model (folder or hub id): the one the gaps were measured with."),
    sae: str = typer.Option(..., "--sae", help="SAE folder, file or hub repo id."),
    layer: int | None = option(SynthInputs, "layer", "--layer", help="SAE layer (default: the gap report's)."),
    generator: str = option(SynthOptions, "generator", "--generator",
                                  help="lm (the verifying model, few-shot) | lm:<model>[?steer_alpha=0.1&shots=4&seed=0] | "
                                       "hf:<chat model>[?steer_alpha=4&positions=generated] | "
                                       "openai:<base_url>?model=<name>[&key_env=VAR&concurrency=4] | templates (tests)"),
    per_feature: int = option(SynthOptions, "per_feature", "--per-feature", help="Samples wanted per gap feature."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Output folder: accepted.jsonl/.parquet, rejected.jsonl, summary.json, store/."),
    threshold: float = option(SynthOptions, "threshold", "--threshold", help="Keep a sample only if its target feature's activation exceeds this (ε)."),
    max_attempts: int = option(SynthOptions, "max_attempts", "--max-attempts", help="Attempts per sample, each with feedback from the last."),
    keywords: int = option(SynthOptions, "keywords", "--keywords", help="Words each gap fires on in its examples, named to the generator (0: none)."),
    languages: str = option(SynthOptions, "languages", "--languages", to_cli=",".join, help="Comma-separated language codes, spread over the samples."),
    verify: str = option(SynthOptions, "verify", "--verify", help="What must fire the feature: prompt | conversation."),
    features: str | None = option(SynthInputs, "features", "--features", help="Only these gap features (comma-separated ids)."),
    max_features: int | None = option(SynthOptions, "max_features", "--max-features", help="Only the first N gaps (largest first)."),
    inventory: Path | None = option(SynthInputs, "inventory", "--inventory", help="The gap report's inventory YAML (default: rebuilt from gaps.json)."),
    benign: str = option(SynthInputs, "benign_categories", "--benign-categories", to_cli=",".join,
                         help="Categories answered helpfully (others get refusals)."),
    variants: str = option(SynthOptions, "variants", "--variants", to_cli=",".join, help="Framings to use: plain,roleplay,hypothetical,obfuscation."),
    near_dup: float = option(SynthInputs, "near_duplicate_threshold", "--near-dup-threshold",
                             help="Jaccard of word 5-grams at which two prompts are near duplicates."),
    near_copy_jaccard: float = option(NearCopyOptions, "jaccard", "--near-copy-jaccard",
                                      help="Word 3-gram Jaccard with a reference example at which a candidate is a near-copy."),
    near_copy_containment: float = option(NearCopyOptions, "containment", "--near-copy-containment",
                                          help="Share of an example's word 3-grams a candidate may hold before it is a near-copy."),
    max_perplexity_ratio: float | None = option(FluencyOptions, "max_perplexity_ratio", "--fluency-max-perplexity-ratio",
                                                help="Reject a candidate whose perplexity under the verifying model exceeds this × the gap examples' median (degenerate text)."),
    max_repetition: float | None = option(FluencyOptions, "max_repetition", "--fluency-max-repetition",
                                          help="Reject a candidate whose share of repeated character 10-grams exceeds this (a loop)."),
    baseline: tuple[str, str] | None = typer.Option(None, "--baseline", metavar="random N|match",
                                             help="random N: also write N untargeted samples (same generator, shots drawn from the harmful reference pool) and report them beside the targeted ones; random match: as many as the targeted run wrote prompt candidates."),
    candidates: int = option(SynthOptions, "candidates", "--candidates", help="Prompts written per slot and attempt; the one whose prompt fires the target feature most is answered and verified."),
    baseline_pool: list[str] | None = option(SynthInputs, "baseline_pool", "--baseline-pool",
                                                   help="Labelled reference JSONL/Parquet for the baseline's shots (non-benign --baseline-pool-field); default: the gaps' examples."),
    baseline_pool_field: str = option(SynthInputs, "baseline_pool_field", "--baseline-pool-field",
                                      help="Category field of --baseline-pool."),
    seed: int = option(SynthOptions, "seed", "--seed", help="Seed of the baseline's draws."),
    max_tokens: int | None = option(SynthInputs, "max_tokens", "--max-tokens", help="Verification: truncate each candidate to N tokens (default: the target store's setting)."),
    batch_size: int = option(SynthInputs, "batch_size", "--batch-size", help="Verification batch size."),
    device: str = option(SynthInputs, "device", "--device"),
    dtype: str | None = option(SynthInputs, "dtype", "--dtype", help="Model dtype (default: the target store's encode setting)."),
    sae_k: int | None = option(SynthInputs, "sae_k", "--sae-k", help="k when the SAE files do not say it."),
    overwrite: bool = option(SynthInputs, "overwrite", "--overwrite", help="Replace a finished run in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Generate samples aimed at coverage gaps; keep those whose target feature fires when re-encoded."""

    from qscope_data.synth.synthesize import run

    settings: dict = dict(
        generator=generator, per_feature=per_feature, candidates=candidates, threshold=threshold,
        max_attempts=max_attempts, keywords=keywords, languages=_split(languages) or [], verify=verify, max_features=max_features,
        seed=seed, near_copy={"jaccard": near_copy_jaccard, "containment": near_copy_containment},
        fluency={"max_perplexity_ratio": max_perplexity_ratio, "max_repetition": max_repetition},
    )
    if baseline is not None:
        if baseline[0] != "random":
            raise UsageError(f"--baseline {baseline[0]!r}: the only baseline is random (--baseline random N)")
        if baseline[1] != "match" and not baseline[1].isdigit():
            raise UsageError(f"--baseline random {baseline[1]!r}: N is a whole number of samples, or match")
        settings["baseline_random"] = baseline[1] if baseline[1] == "match" else int(baseline[1])
    if variants is not None:
        settings["variants"] = _split(variants) or []
    options = SynthOptions(**settings)  # a bad value: one line naming the flag (cli.main)
    inputs = SynthInputs(
        gaps=gaps, model=model, sae=sae, layer=layer, features=_ints(features, "--features"), inventory=inventory,
        benign_categories=_split(benign) or [], near_duplicate_threshold=near_dup,
        baseline_pool=baseline_pool or None, baseline_pool_field=baseline_pool_field, max_tokens=max_tokens,
        batch_size=batch_size, device=device, dtype=dtype, sae_k=sae_k, overwrite=overwrite,
    )
    summary = run(options, inputs, out, progress=progress).artifact
    t, cov = summary.totals, summary.coverage
    rate = "–" if t["acceptance_rate"] is None else f"{100 * t['acceptance_rate']:.1f}%"
    print(f"accepted {t['accepted']}/{t['requested']} samples for {t['features']} gap feature(s) in {t['attempts']} "
          f"attempts (acceptance {rate}; generator {summary.generator.get('name')}) → {out}")
    if cov.get("after") is not None:
        b, a = cov["before"]["overall"], cov["after"]["overall"]
        g = cov["gap_set"]
        print(f"coverage {b['covered']}/{b['total']} → {a['covered']}/{a['total']}; gap set "
              f"{g['before']['covered']}/{g['before']['total']} → {g['after']['covered']}/{g['after']['total']}")
    comp = summary.comparison
    if "random" in comp:
        tg, rd = comp["targeted"], comp["random"]
        print(f"gap coverage: targeted {_cov(tg['gap_coverage'])} ({tg['candidates']} candidates) vs random "
              f"{_cov(rd['gap_coverage'])} ({rd['candidates']} candidates); random rejected {rd['rejected_by_reason']}")
    for w in summary.warnings:
        print(f"warning: {w}")


def _cov(c: dict) -> str:
    return f"{c['covered']}/{c['total']}"


def steer(
    prompt: str | None = typer.Argument(None, help="The prompt to continue (not with --eval)."),
    model: str = typer.Option(..., "--model", help="Causal LM (folder or hub id)."),
    sae: str = typer.Option(..., "--sae", help="SAE folder, file or hub repo id."),
    layer: int = typer.Option(..., "--layer", help="Block whose output the SAE reads; the steering vector is added there."),
    feature: int = typer.Option(..., "--feature", help="Feature id f: the direction is W_dec[:, f]."),
    alpha: float | None = typer.Option(None, "--alpha", help="Strength α (negative suppresses); absolute, one prompt."),
    eval_prompts: Path | None = typer.Option(None, "--eval", help="JSONL of prompts {text, lang, set: amplify|suppress}: "
                                             "α sweep (amplify +α, suppress −α), effect and perplexity, into --out."),
    alphas: str | None = typer.Option(None, "--alphas", help="--eval: α values ≥ 0 in units of the block's median residual norm (default 0,0.05,0.1,0.2,0.4)."),
    target_lang: str | None = typer.Option(None, "--target-lang", help="--eval: the language the feature writes (default zh)."),
    out: Path | None = typer.Option(None, "--out", help="--eval: folder for steer_eval.json and steer_eval.png."),
    positions: str = typer.Option("all", "--positions", help="all | generated (leave the prompt's positions alone)."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens"),
    chat: bool = typer.Option(True, "--chat/--raw", help="Wrap the prompt in the model's chat template."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="Model dtype (default: the target store's encode setting)."),
    sae_k: int | None = typer.Option(None, "--sae-k"),
) -> None:
    """Baseline vs steered greedy continuation of PROMPT, side by side (h ← h + α·W_dec[:, f] at block --layer);
    with --eval, an α sweep over a prompt file: share of output in the target language and perplexity per α."""
    from rich.console import Console
    from rich.table import Table

    from qscope_data.synth.steering import check_alpha

    if alpha is not None:  # --eval sweeps its own alphas
        check_alpha(alpha)  # before loading anything

    from qscope_data.capture import load_model
    from qscope_data.sae import load_sae
    from qscope_data.synth.steering import compare_steering, require_causal
    from qscope_data.torch_dtypes import parse_dtype

    if positions not in ("all", "generated"):
        raise UsageError(f"--positions {positions!r}: choose all or generated")
    if eval_prompts is None and (prompt is None or alpha is None):
        raise UsageError("qscope steer: give PROMPT and --alpha, or --eval PROMPTS.jsonl --out DIR")
    if eval_prompts is not None and (prompt is not None or out is None):
        raise UsageError("qscope steer --eval: takes no PROMPT argument and needs --out")
    prompts = _eval_prompts(eval_prompts) if eval_prompts is not None else None
    lm = load_model(model, device=device, dtype=parse_dtype(dtype))
    require_causal(lm)  # before loading a large SAE for nothing
    sae_obj = load_sae(sae, layer, k=sae_k, device=device)
    if prompts is not None:
        _steer_eval(lm, sae_obj, layer, feature, prompts, alphas, target_lang, positions, max_new_tokens, out)  # type: ignore[arg-type]
        return
    result = compare_steering(lm, sae_obj, layer, feature, alpha, prompt, positions=positions,  # type: ignore[arg-type]
                              max_new_tokens=max_new_tokens, chat=chat, seed=seed)
    table = Table(title=f"feature {feature} · layer {layer} · α={alpha:g} · positions={positions}", show_lines=True)
    table.add_column(f"baseline · feature {feature} max {result.baseline_activation:.3g}", ratio=1, overflow="fold")
    table.add_column(f"steered · feature {feature} max {result.steered_activation:.3g}", ratio=1, overflow="fold")
    table.add_row(result.baseline or "(empty)", result.steered or "(empty)")
    console = Console()
    console.print(f"prompt: {prompt}")
    console.print(table)


def _eval_prompts(path: Path) -> list:
    import json

    from qscope_data.synth.steer_eval import EvalPrompt

    if not path.is_file():
        raise UsageError(f"--eval {path}: no such file")
    prompts = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, lang, which = row["text"], str(row.get("lang", "")), row.get("set", "amplify")
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"--eval {path}:{i}: expected a JSON object with text (and lang, set)") from None
        if which not in ("amplify", "suppress") or not isinstance(text, str) or not text.strip():
            raise UsageError(f"--eval {path}:{i}: set must be amplify or suppress and text non-empty (got set={which!r})")
        prompts.append(EvalPrompt(text, lang, which))
    if not prompts:
        raise UsageError(f"--eval {path}: no prompts")
    return prompts


def _steer_eval(lm, sae, layer: int, feature: int, prompts: list, alphas: str | None, target_lang: str | None,
                positions: str, max_new_tokens: int, out: Path) -> None:

    from qscope_data import atomic
    from qscope_data.synth.steer_eval import SteerEvalOptions, markdown_table, sweep, sweep_figure
    from qscope_data.synth.steering import feature_direction

    kwargs: dict = {"positions": positions, "max_new_tokens": max_new_tokens}
    if alphas is not None:
        try:
            kwargs["alphas"] = [float(a) for a in _split(alphas) or []]
        except ValueError:
            raise UsageError(f"--alphas {alphas!r}: expected comma-separated numbers") from None
    if target_lang is not None:
        kwargs["target_lang"] = target_lang
    options = SteerEvalOptions(**kwargs)  # a bad value: one line naming the flag (cli.main)
    result = sweep(lm, layer, feature_direction(sae, feature), prompts, options)
    result.update(feature=feature, model=lm.model_id)
    atomic.write_json(out / "steer_eval.json", result)
    atomic.write_bytes(out / "steer_eval.png", sweep_figure(result))
    print(f"feature {feature} · block {layer} · α × median residual norm {result['residual_scale']:.3g}")
    print(markdown_table(result))
    print(f"→ {out}/steer_eval.json, steer_eval.png")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
    app.command("steer")(steer)
