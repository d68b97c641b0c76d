"""CLI: `qscope score` and `qscope rules mine|eval|test|select-layer` — parse, call qscope_data.rules, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from qscope_data.cli.params import option
from qscope_data.outputs import file_option, folder_option
from qscope_data.rules.mine import MineOptions
from qscope_data.rules.score import ScoreOptions

rules_app = typer.Typer(
    help="Feature-logic rules over SAE features: mine them from labels, evaluate them, unit-test rule packs.",
    no_args_is_help=True,
)


def _layer(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        from qscope_data.errors import UsageError

        raise UsageError(f"--layer {value!r}: give a layer number or 'auto'") from None


def score(
    rules: list[Path] = typer.Option(..., "--rules", help="Rule file (YAML); repeat for several."),
    features: Path = typer.Option(..., "--features", help="Feature store folder (from `qscope encode`)."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Output folder for scores.parquet and summary.json."),
    layer: int | None = typer.Option(None, "--layer", help="SAE layer (default: the rule files' header, else the store's first)."),
    batch_rows: int = option(ScoreOptions, "batch_rows", "--batch-rows", help="Documents per batch (memory bound)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Score every document of a store with rule files: one boolean column per rule, `<rule>_score`, hit counts."""
    from qscope_data.rules.score import ScoreInputs, run

    stats = run(ScoreOptions(batch_rows=batch_rows), ScoreInputs(list(rules), features, layer), out,
                progress=progress).stats
    print(f"scored {stats['n_documents']:,} documents with {len(stats['rules'])} rules "
          f"({stats['docs_per_s'] or 0:,.0f} docs/s) → {out}")
    for name, r in stats["rules"].items():
        by = r.get("hits_by_lang")
        by_text = "  " + ", ".join(f"{k}: {v}" for k, v in by.items()) if by else ""
        print(f"  {name:<24} {r['action']:<5} {r['hits']:>9,} hits{by_text}")


@rules_app.command("mine")
def mine(
    features: Path = typer.Option(..., "--features", help="Feature store with a label column."),
    out: Path = typer.Option(..., "--out", callback=file_option, help="Rule file to write (YAML)."),
    label_field: str = option(MineOptions, "label_field", "--label-field"),
    positive: str = option(MineOptions, "positive", "--positive", help="Label value of the positive class (compared as text)."),
    by: str | None = option(MineOptions, "by", "--by", help="Mine one rule per value of this field (e.g. lang) plus a pooled one."),
    top: int = option(MineOptions, "top", "--top", help="Candidate features per rule (the rule uses 1..top of them)."),
    fraction: float = option(MineOptions, "fraction", "--fraction", help="Use this fraction of the mining split (data-efficiency studies)."),
    seed: int = option(MineOptions, "seed", "--seed", help="Seed of the doc_id-hash split."),
    heldout: float = option(MineOptions, "heldout_fraction", "--heldout", help="Fraction held out for `rules eval` (never mined on)."),
    validation: float = option(MineOptions, "validation_fraction", "--validation", help="Fraction of the mining split that chooses ε and k."),
    name: str = option(MineOptions, "name", "--name", help="Rule name prefix (rules: <name>_<value>, <name>_all)."),
    action: str = option(MineOptions, "action", "--action", help="drop | flag | keep, written into the rules."),
    layer: str | None = typer.Option(None, "--layer", help="Layer number or 'auto' (top1-diff; the default with several layers)."),
    criterion: str = option(MineOptions, "criterion", "--criterion", help="What chooses ε and the rule size: balanced_accuracy | f1."),
) -> None:
    """Mine OR-rules over the features whose firing rate differs most between positives and negatives."""
    from qscope_data.errors import UsageError
    from qscope_data.rules.mine import MineInputs, run

    if action not in ("drop", "flag", "keep"):
        raise UsageError(f"--action {action!r}: choose drop, flag or keep")
    cfg = MineOptions(label_field=label_field, positive=positive, by=by, top=top, fraction=fraction, seed=seed,
                     heldout_fraction=heldout, validation_fraction=validation, name=name, action=action,
                     criterion=criterion)  # a bad value: one line (cli.main)
    result = run(cfg, MineInputs(features, _layer(layer)), out).stats
    if result["layer_selection"]:
        print(f"layer {result['layer']} chosen by top1-diff:")
        for lay, entry in result["layer_selection"]["layers"].items():
            best = entry.get("pooled")
            print(f"  layer {lay}: best f{best['feature']} Δ={best['delta']:+.3f}" if best else f"  layer {lay}: -")
    for r in result["rules"]:
        sel = r["selection"]
        feats = ", ".join(f"f{f}" for f in r["features"])
        print(f"{r['name']:<24} {len(r['features'])} features ({feats}) ε={r['eps']}  "
              f"{sel['split']} balanced accuracy {sel['balanced_accuracy']:.3f}, F1 {sel['f1']:.3f}, "
              f"flagged {sel['flagged']:.0%}")
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {out}")


@rules_app.command("select-layer")
def select_layer_cmd(
    features: Path = typer.Option(..., "--features"),
    label_field: str = option(MineOptions, "label_field", "--label-field"),
    positive: str = option(MineOptions, "positive", "--positive"),
    by: str | None = option(MineOptions, "by", "--by"),
    seed: int = option(MineOptions, "seed", "--seed"),
    heldout: float = option(MineOptions, "heldout_fraction", "--heldout"),
) -> None:
    """Report each layer's best feature Δ and the layer the top1-diff proxy picks (as JSON)."""
    from qscope_data.rules.mine import select_layer
    from qscope_data.store import FeatureStore

    cfg = MineOptions(label_field=label_field, positive=positive, by=by, seed=seed, heldout_fraction=heldout)
    print(json.dumps(select_layer(FeatureStore(features), cfg), indent=2))


@rules_app.command("eval")
def eval_cmd(
    rules: list[Path] = typer.Option(..., "--rules", help="Rule file(s) to evaluate."),
    features: Path = typer.Option(..., "--features", help="Feature store with labels."),
    out: Path = typer.Option(..., "--out", callback=file_option, help="report.json (PNG plots and report.html are written beside it)."),
    label_field: str | None = typer.Option(None, "--label-field", help="Default: the mined file's, else 'label'."),
    positive: str | None = typer.Option(None, "--positive"),
    by: str | None = typer.Option(None, "--by", help="Group metrics by this field (default: the mined file's --by)."),
    split: str = typer.Option("auto", "--split", help="heldout | all | auto (held-out when the file records a split)."),
    layer: int | None = typer.Option(None, "--layer"),
    curve: bool = typer.Option(True, "--curve/--no-curve", help="Re-mine on 10%..100% for the data-efficiency curve."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Precision / recall / F1 per rule and group, the transfer matrix and the data-efficiency curve."""
    from qscope_data.rules.evaluate import evaluate_rules

    report = evaluate_rules(rules, features, out, label_field=label_field, positive=positive, by=by, split=split,
                            layer=layer, curve=curve, progress=progress)
    print(f"{report['split']} split: {report['n_documents']:,} documents ({report['n_positive']:,} positive)")
    print(f"{'rule':<24} {'group':<10} {'P':>6} {'R':>6} {'F1':>6}")
    for name, entry in report["rules"].items():
        for group, m in [("overall", entry["overall"]), *sorted((entry.get("by_group") or {}).items())]:
            print(f"{name:<24} {group:<10} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f}")
    print(f"wrote {out} and {', '.join(Path(p).name for p in report['artifacts'].values())}")


@rules_app.command("test")
def test_cmd(
    rules: Path = typer.Argument(..., help="Rule file."),
    cases: Path = typer.Argument(..., help="CASES.yaml with documents and expected outcomes."),
) -> None:
    """Run a rule pack's unit tests; exit 1 with a diff when a case fails."""
    from qscope_data.rules.cases import run_cases

    result = run_cases(rules, cases)
    if not result.ok:
        print(result.diff())
        raise typer.Exit(1)
    print(f"ok: {result.n_cases} cases, {result.n_checks} checks passed")


def register(app: typer.Typer) -> None:
    app.command("score")(score)
    app.add_typer(rules_app, name="rules")
