"""CLI: `qscope curate` (SFT shards with provenance) and `qscope manifest verify` — parse, call qscope_data.curate, print."""

from __future__ import annotations

from pathlib import Path

import typer

from qscope_data.cli.params import option
from qscope_data.curate.curate import CurateInputs, CurateOptions
from qscope_data.outputs import folder_option

manifest_app = typer.Typer(help="Check a curated dataset against its manifest.json.", no_args_is_help=True)


def curate(
    inputs: list[str] = typer.Option(..., "--input", help="Corpus the store was encoded from (JSONL / Parquet / glob / folder / dataset); repeat for several."),
    features: Path = typer.Option(..., "--features", help="Feature store of that corpus (from `qscope encode`)."),
    scores: Path | None = option(CurateInputs, "scores", "--scores", help="Scores folder (from `qscope score`): drop / flag actions."),
    synth: list[Path] = option(CurateInputs, "synth", "--synth", help="Synthesis output folder (accepted.jsonl); repeat for several."),
    out: Path = typer.Option(..., "--out", callback=folder_option, help="Output folder: data/, removed.parquet, manifest.json, README.md."),
    fmt: str = option(CurateOptions, "format", "--format", help="messages | prompt-completion | text (TRL SFT formats)."),
    text_role: str | None = option(CurateOptions, "text_role", "--text-role", help="Plain-text records in messages / prompt-completion become this turn: assistant."),
    text_prompt: str | None = option(CurateOptions, "text_prompt", "--text-prompt", help="User turn put before each plain text (required for prompt-completion)."),
    quota: list[str] = typer.Option([], "--quota", help="FIELD=VALUE:N[,VALUE:N…] (lang, category, source): keep the first N; repeatable."),
    dedup: bool = option(CurateOptions, "dedup", "--dedup/--no-dedup", help="Remove exact and near duplicates (on by default)."),
    near_dup_threshold: float = option(CurateOptions, "near_dup_threshold", "--near-dup-threshold", help="Word-5-gram Jaccard at or above which two documents are near duplicates."),
    executor: str = option(CurateInputs, "executor", "--executor", help="Where dedup runs: local (in process) or ray (Ray Data; same decisions)."),
    quarantine: bool = option(CurateOptions, "quarantine", "--quarantine", help="Route flagged rows to quarantine/ shards instead of train."),
    max_shard_rows: int = option(CurateOptions, "max_shard_rows", "--max-shard-rows", help="Rows per shard at most."),
    max_shard_bytes: int = option(CurateOptions, "max_shard_bytes", "--max-shard-bytes", help="Uncompressed (JSON) bytes per shard at most."),
    jsonl: bool = option(CurateOptions, "jsonl", "--jsonl", help="Also write each shard as JSONL beside the Parquet file."),
    license_: str = option(CurateOptions, "license", "--license", help="Licence field of the dataset card."),
    name: str | None = option(CurateInputs, "name", "--name", help="Dataset name on the card (default: the folder name)."),
    text_field: str | None = option(CurateInputs, "text_field", "--text-field", help="Text field (default: the store's encode setting)."),
    id_field: str | None = option(CurateInputs, "id_field", "--id-field", help="Id field (default: the store's encode setting)."),
    split: str | None = option(CurateInputs, "split", "--split", help="Split of a Hugging Face dataset input."),
    overwrite: bool = option(CurateInputs, "overwrite", "--overwrite", help="Replace a curated dataset already in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Curated SFT shards: drop rule hits, keep flagged rows with their flags, dedup, quotas, synthetic mix-in."""

    from qscope_data.curate.curate import parse_quotas, run

    options = CurateOptions(  # a bad value: one line naming the flag (cli.main)
        format=fmt, text_role=text_role, text_prompt=text_prompt, quotas=parse_quotas(quota), dedup=dedup,
        near_dup_threshold=near_dup_threshold, quarantine=quarantine, max_shard_rows=max_shard_rows,
        max_shard_bytes=max_shard_bytes, jsonl=jsonl, license=license_,
    )
    inputs = CurateInputs(inputs=inputs, features=features, scores=scores, synth=list(synth), text_field=text_field,
                          id_field=id_field, split=split, executor=executor, name=name, overwrite=overwrite)
    result = run(options, inputs, out, progress=progress)
    c, shards = result.artifact.counts, [e for e in result.artifact.shards if e.name.endswith(".parquet")]
    print(f"curated {c['input_records']:,} input + {c['synthetic_records']:,} synthetic records in "
          f"{result.stats['seconds']:.1f}s → {out}")
    print(f"  kept {c['kept']:,} ({c['kept_synthetic']:,} synthetic) in {sum(e.split == 'train' for e in shards)} shard(s); "
          f"quarantined {c['quarantined']:,}; removed {c['removed']:,}")
    for reason, n in c["removed_by_reason"].items():
        print(f"  removed {reason:<36} {n:>8,}")


@manifest_app.command("verify")
def verify(out: Path = typer.Argument(..., help="Curated dataset folder (from `qscope curate`) or feature store (from `qscope encode`).")) -> None:
    """Recompute every listed file's sha256, size and row count; exit 1 on any mismatch."""
    from qscope_data.curate.manifest import load_manifest, verify as verify_dataset
    from qscope_data.store import FeatureStore, is_feature_store

    if is_feature_store(out):
        store = FeatureStore(out, check=False)  # list every problem rather than stop at the first
        problems, n_files = store.problems(verify=True), len(store.manifest.shards)
    else:
        problems = verify_dataset(out)
        n_files = 0 if problems else len(load_manifest(out).files())
    for line in problems:
        print(line)
    if problems:
        print(f"{out}: {len(problems)} problem(s)")
        raise typer.Exit(1)
    print(f"{out}: OK ({n_files} files match manifest.json)")


def register(app: typer.Typer) -> None:
    app.command("curate")(curate)
    app.add_typer(manifest_app, name="manifest")
