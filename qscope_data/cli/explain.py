"""CLI: `qscope features explain` (dashboards, explanations scored by detection, the label file)."""

from __future__ import annotations

from pathlib import Path

import typer

from qscope_data.explain.options import ExplainOptions

_D = ExplainOptions.model_fields


def _default(name: str):
    return _D[name].default


def _ids(value: str | None) -> list[int] | None:
    from qscope_data.errors import UsageError

    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"--ids {value!r}: expected comma-separated feature ids, e.g. 12,345") from None


def explain(
    features: Path = typer.Option(..., "--features", help="Feature store encoded with --token-level."),
    out: Path = typer.Option(..., "--out", help="Folder: index.html + a page per feature, features.json/.parquet, labels.jsonl."),
    ids: str | None = typer.Option(None, "--ids", help="Comma-separated feature ids."),
    inventory: Path | None = typer.Option(None, "--inventory", help="Explain the features of this inventory YAML."),
    layer: int | None = typer.Option(None, "--layer", help="SAE layer (default: the inventory's, else the store's first)."),
    model: str | None = typer.Option(None, "--model", help="Model (tokenizer, unembedding); default: the store's."),
    sae: str | None = typer.Option(None, "--sae", help="SAE (decoder directions); default: the store's."),
    logit_lens: bool = typer.Option(True, "--logit-lens/--no-logit-lens", help="Promoted / suppressed output tokens (causal LMs)."),
    by: str | None = typer.Option(None, "--by", help="Comma-separated fields for firing rates (default: lang + label-like columns)."),
    window: int = typer.Option(_default("window"), "--window", help="Positions per context."),
    top: int = typer.Option(_default("n_top"), "--top", help="Top-activating contexts per feature."),
    quantiles: int = typer.Option(_default("n_quantiles"), "--quantiles", help="Activation quantile bins."),
    explainer: str | None = typer.Option(None, "--explainer", help="hf:<model> or openai:<base_url>?model=<name>[&key_env=VAR&rps=…]."),
    scorer: str | None = typer.Option(None, "--scorer", help="Generator spec of the detection scorer (default: the explainer)."),
    detection_batch: int = typer.Option(_default("detection_batch"), "--detection-batch", help="Excerpts per scorer request."),
    price_in: float = typer.Option(0.0, "--price-in", help="USD per 1M prompt tokens (cost estimate)."),
    price_out: float = typer.Option(0.0, "--price-out", help="USD per 1M completion tokens."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Dashboards of SAE features from a token-level store; with --explainer, labels scored by detection."""
    from qscope_data.cli.coverage import _split
    from qscope_data.explain.run import run_explain

    from pydantic import ValidationError

    from qscope_data.errors import invalid

    try:
        opts = ExplainOptions(features=features, out=out, ids=_ids(ids), inventory=inventory, layer=layer, model=model,
                              sae=sae, logit_lens=logit_lens, by=_split(by), window=window, n_top=top,
                              n_quantiles=quantiles, explainer=explainer, scorer=scorer, detection_batch=detection_batch,
                              price_in=price_in, price_out=price_out, seed=seed, device=device)
    except ValidationError as exc:
        raise invalid(exc, "features explain") from None
    summary = run_explain(opts)
    for note in summary.notes:
        print(f"note: {note}")
    score = "–" if summary.mean_score is None else f"{summary.mean_score:.3f}"
    print(f"wrote {out}/index.html: {summary.features} feature(s), {summary.explained} explained, {summary.scored} scored "
          f"(mean detection balanced accuracy {score}); labels in {out}/labels.jsonl")
    for role, u in summary.usage.items():
        print(f"  {role}: {u['sent']} sent, {u['cache_hits']} cached, {u['failed']} failed, "
              f"{u['prompt_tokens']}+{u['completion_tokens']} tokens, ${u['cost_usd']:.4f}")
        if u["failed"]:
            print(f"  warning: {u['failed']} {role} request(s) failed (see the feature pages); a rerun asks only those again")


def register(app: typer.Typer) -> None:
    from qscope_data.cli.coverage import features_app

    features_app.command("explain")(explain)
