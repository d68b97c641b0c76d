"""CLI: `qscope features select` (the safety-feature inventory), `qscope gaps` and `qscope overlap`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from qscope_data.cli.params import option
from qscope_data.coverage.gaps import GapsOptions
from qscope_data.coverage.inventory import InventoryOptions
from qscope_data.outputs import file_option, folder_option


features_app = typer.Typer(help="Choose SAE features that stand for concepts (the safety inventory).", no_args_is_help=True)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items


@features_app.command("select")
def select(
    features: Path | None = typer.Option(None, "--features", help="Labelled reference store (e.g. harmful prompts by harm type beside benign ones)."),
    label_field: str = option(InventoryOptions, "label_field", "--label-field", help="Pass-through column holding each document's category."),
    negative: str = option(InventoryOptions, "negative", "--negative", help="The category the others are contrasted with."),
    top: int = option(InventoryOptions, "top", "--top", help="Features kept per category."),
    min_support: int = option(InventoryOptions, "min_support", "--min-support", help="A feature must fire on at least this many documents of the category."),
    contrast: str = option(InventoryOptions, "contrast", "--contrast", help="Δ against the negative class, or 'rest': every document outside the category."),
    min_purity: float = option(InventoryOptions, "min_purity", "--min-purity", help="Keep a feature only when this share of its top-activating reference documents carry its category."),
    purity_top: int = option(InventoryOptions, "purity_top", "--purity-top", help="Top-activating reference documents that purity is measured on."),
    labels: Path | None = typer.Option(None, "--labels", help="Label file (CSV/JSONL/Parquet: id, label, description, safety score) to merge in, or to use alone."),
    min_safety_score: float | None = typer.Option(None, "--min-safety-score", help="Keep only features whose label-file safety score reaches this."),
    layer: int | None = typer.Option(None, "--layer", help="SAE layer of the store (default: its first)."),
    examples: int = option(InventoryOptions, "examples", "--examples", help="Example doc_ids kept per feature."),
    out: Path = typer.Option(..., "--out", callback=file_option, help="Inventory YAML to write."),
) -> None:
    """Rank features per category by firing-rate gap Δ against the negative class and write the inventory YAML."""
    from qscope_data.coverage.inventory import SelectInputs, run

    options = InventoryOptions(label_field=label_field, negative=negative, top=top, min_support=min_support,
                               contrast=contrast, min_purity=min_purity, purity_top=purity_top, examples=examples)
    result = run(options, SelectInputs(features, layer, labels, min_safety_score), out, progress=True)
    summary = ", ".join(f"{c} {n}" for c, n in sorted(result.stats["by_category"].items())) or "none"
    print(f"wrote {out}: {result.stats['features']} feature(s) ({summary})")


def gaps(
    inventory: Path = typer.Option(..., "--inventory", help="Inventory YAML from `qscope features select`."),
    target: list[Path] = typer.Option(..., "--target", help="Target store; repeat to pool several."),
    reference: Path | None = typer.Option(None, "--reference", help="Store to take gap examples from (default: the inventory's)."),
    by: str | None = option(GapsOptions, "by", "--by", to_cli=lambda v: None if v is None else ",".join(v), help="Comma-separated document fields to break coverage down by (default: lang if present)."),
    min_docs: int = option(GapsOptions, "min_docs", "--min-docs", help="A feature is covered when it fires on at least this many target documents."),
    layer: int | None = typer.Option(None, "--layer", help="SAE layer (default: the inventory's)."),
    examples: int = option(GapsOptions, "examples", "--examples", help="Reference texts per gap."),
    dashboard: Path | None = typer.Option(None, "--dashboard", help="`features explain` output folder: link each gap to its page."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Report folder: gaps.json, report.md, report.html."),
) -> None:
    """Which inventory features the target never fires, per category and language: gaps.json + report.md/html."""
    from qscope_data.coverage.gaps import GapsInputs, run

    options = GapsOptions(by=_split(by), min_docs=min_docs, examples=examples)  # a bad value: one line (cli.main)
    result = run(options, GapsInputs(inventory, list(target), reference, layer, dashboard), out, progress=True)
    report, paths = result.artifact, result.outputs
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    overall = report.coverage["overall"]
    frac = "–" if overall["fraction"] is None else f"{100 * overall['fraction']:.1f}%"
    print(f"coverage {overall['covered']}/{overall['total']} ({frac}), {len(report.gaps)} gap(s); wrote {paths['gaps.json']}, "
          f"{paths['report.md'].name}, {paths['report.html'].name}")
    for g in report.gaps[:5]:
        print(f"  gap feature {g.feature} [{g.category}] delta={g.delta} {g.label or ''}".rstrip())


def overlap(
    stores: list[Path] = typer.Argument(..., help="Feature stores to compare (same SAE)."),
    names: str | None = typer.Option(None, "--names", help="Comma-separated dataset names (default: folder names)."),
    last_token: bool = typer.Option(False, "--last-token", help="Footprint from each document's last token (needs token-level stores)."),
    subsets: int = typer.Option(20, "--subsets", help="Random document orderings averaged for each coverage curve."),
    seed: int = typer.Option(0, "--seed"),
    layer: int | None = typer.Option(None, "--layer", help="SAE layer (default: each store's first)."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Folder for overlap.json, overlap.html and PNGs."),
) -> None:
    """Footprints, the asymmetric overlap matrix and each store's redundancy score."""
    from qscope_data.coverage.overlap import analyse_overlap
    from qscope_data.coverage.report import write_overlap_report
    from qscope_data.progress import Bar
    from qscope_data.store import FeatureStore

    opened = [FeatureStore(s) for s in stores]
    with Bar("footprints", len(opened), unit="stores", transient=True) as bar:
        result = analyse_overlap(
            opened, names=_split(names), layer=layer, last_token=last_token, subsets=subsets, seed=seed,
            on_store=lambda name: (bar.advance(), bar.note(name)),
        )
    paths = write_overlap_report(result, out)
    width = max(len(n) for n in result.names)
    for name, fp, r in zip(result.names, result.footprints, result.redundancy):
        print(f"{name:<{width}}  docs {fp.n_docs:>7}  |F| {fp.size:>6}  R {'–' if r is None else f'{r:.3f}'}")
    print(f"wrote {paths['overlap.json']}, {paths['overlap.html'].name}")


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")
    app.command("gaps")(gaps)
    app.command("overlap")(overlap)
