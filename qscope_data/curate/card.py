"""The Hugging Face dataset card (README.md) of a curated dataset, rendered from its manifest.

The YAML front matter is what the Hub and `datasets.load_dataset(OUT)` read: ``configs`` with ``data_files`` (the
``default`` config is the train shards; a ``quarantine`` config holds flagged rows when they were routed aside),
``license``, ``language`` (ISO codes of the kept rows), ``size_categories``. The body summarises what went in, what
came out and why rows were removed, and where the data came from (hashes). No timestamp: the card of a rerun is
identical.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from qscope_data.curate.manifest import CuratedManifest

_LANG_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_SIZE_BOUNDS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(n: int) -> str:
    for bound, label in _SIZE_BOUNDS:
        if n < bound:
            return label
    return "n>1B"


def front_matter(manifest: CuratedManifest, *, pretty_name: str) -> dict[str, Any]:
    kept_by_lang = manifest.counts.get("kept_by_lang", {})
    languages = sorted(lang for lang in kept_by_lang if _LANG_CODE.match(lang))
    configs: list[dict[str, Any]] = [
        {"config_name": "default", "default": True, "data_files": [{"split": "train", "path": "data/train-*.parquet"}]},
    ]
    if any(e.split == "quarantine" for e in manifest.shards):
        configs.append({"config_name": "quarantine",
                        "data_files": [{"split": "train", "path": "quarantine/quarantine-*.parquet"}]})
    meta: dict[str, Any] = {"pretty_name": pretty_name, "license": manifest.options.get("license", "other")}
    if languages:
        meta["language"] = languages
    meta.update({
        "size_categories": [size_category(int(manifest.counts.get("kept", 0)))],
        "task_categories": ["text-generation"],
        "tags": ["sft", "trl", f"format:{manifest.format}", "qscope"],
        "configs": configs,
    })
    return meta


def _table(header: tuple[str, str], rows: list[tuple[Any, Any]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _synthetic_section(sets: list[dict[str, Any]]) -> list[str]:
    """How the synthetic samples were made: generator, verification, near-copy rule, coverage beside the baseline."""
    rows = []
    for s in sets:
        p = s.get("provenance")
        if not p:
            rows.append(f"- `{s.get('path')}`: no summary.json, generator and verification unknown")
            continue
        line = (f"- `{s.get('path')}`: {p.get('accepted')} sample(s) written by **{p.get('generator')}**"
                + (" (templates: recombined reference texts, not generated)" if p.get("generator_kind") == "templates" else "")
                + f"; each kept only if re-encoding its {p.get('verify')} with `{p.get('verifying_model')}` and the SAE "
                  f"at layer {p.get('layer')} fires its target feature above {p.get('threshold')}")
        nc = p.get("near_copy")
        if nc:
            line += (f", and it is no near-copy of a reference example (verbatim, word 3-gram Jaccard ≥ {nc.get('jaccard')} "
                     f"or ≥ {nc.get('containment')} of an example's 3-grams)")
        fl = p.get("fluency")
        if fl and fl.get("max_perplexity") is not None:
            line += (f", and it is fluent (perplexity under the verifying model ≤ {fl['max_perplexity']:.4g}, "
                     f"{fl.get('max_perplexity_ratio')} × the reference texts' median; repeated character "
                     f"{fl.get('ngram')}-grams ≤ {fl.get('max_repetition')})")
        tg, rd = p.get("targeted_gap_coverage"), p.get("random_gap_coverage")
        if tg and rd:
            line += (f". Gap features covered: {tg['covered']}/{tg['total']} targeted vs {rd['covered']}/{rd['total']} "
                     "for the random baseline (same generator)")
        rows.append(line + ".")
    return ["## Synthetic samples\n", "\n".join(rows) + "\n"] if rows else []


def render_card(manifest: CuratedManifest, *, pretty_name: str = "qscope curated SFT data") -> str:
    c = manifest.counts
    meta = yaml.safe_dump(front_matter(manifest, pretty_name=pretty_name), sort_keys=False, allow_unicode=True)
    fmt_cols = {"messages": "`messages`", "prompt-completion": "`prompt`, `completion`", "text": "`text`"}[manifest.format]
    parts = [
        f"---\n{meta}---\n",
        f"# {pretty_name}\n",
        f"Supervised fine-tuning data in TRL's **{manifest.format}** format ({fmt_cols}), written by `qscope curate`: "
        "documents hit by `drop` rules over sparse-autoencoder features removed, duplicates removed, quotas (if any) applied, "
        "verified synthetic samples mixed in. Load it with `datasets.load_dataset(\"parquet\", data_files=\"data/*.parquet\")` "
        "or pass this folder to `load_dataset`; check it with `qscope manifest verify`.\n",
        "## Summary\n",
        _table(("", "rows"), [
            ("input records", c.get("input_records", 0)), ("synthetic samples offered", c.get("synthetic_records", 0)),
            ("kept (train)", c.get("kept", 0)), ("quarantined (flagged)", c.get("quarantined", 0)),
            ("removed", c.get("removed", 0)),
        ]) + "\n",
    ]
    if c.get("removed_by_reason"):
        parts += ["## Removed, by reason\n", _table(("reason", "rows"), sorted(c["removed_by_reason"].items())) + "\n"]
    if c.get("kept_by_lang"):
        parts += ["## Kept rows by language\n", _table(("language", "rows"), sorted(c["kept_by_lang"].items())) + "\n"]
    if c.get("kept_by_source"):
        parts += ["## Kept rows by source\n", _table(("source", "rows"), sorted(c["kept_by_source"].items())) + "\n"]
    if c.get("rules"):
        rows = [(f"`{name}` ({info['action']})", info["hits"]) for name, info in c["rules"].items()]
        parts += ["## Rules applied (hits in this corpus)\n", _table(("rule (action)", "hits"), rows) + "\n"]
    prov: list[tuple[Any, Any]] = []
    if manifest.model.get("id"):
        prov.append(("model", f"`{manifest.model['id']}`"))
    for sae in manifest.saes:
        prov.append((f"SAE layer {sae.get('layer')}", f"`{sae.get('source') or '?'}` (k={sae.get('k')}, d_sae={sae.get('d_sae')})"))
    store = manifest.inputs.get("store") or {}
    if store.get("manifest_sha256"):
        prov.append(("feature store manifest sha256", f"`{store['manifest_sha256']}`"))
    scores = manifest.inputs.get("scores") or {}
    if scores.get("summary_sha256"):
        prov.append(("scores summary sha256", f"`{scores['summary_sha256']}`"))
    for path, digest in manifest.rule_files.items():
        prov.append((f"rule file `{path}`", f"`{digest}`"))
    inp = manifest.inputs.get("input") or {}
    if inp.get("fingerprint"):
        prov.append(("input fingerprint", f"`{inp['fingerprint']}`"))
    for s in manifest.inputs.get("synth") or []:
        prov.append((f"synthetic `{s.get('path')}`", f"`{s.get('accepted_sha256')}`"))
    if prov:
        lines = ["| what | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in prov]
        parts += ["## Provenance\n", "\n".join(lines) + "\n"]
    parts += _synthetic_section(manifest.inputs.get("synth") or [])
    parts += [
        "## Columns\n",
        f"{fmt_cols} (the training data); `doc_id`, `source`, `lang`, `category`; `rules` (every rule the document "
        "matched) and `flags` (the matched rules whose action is `flag`); `n_tokens` (from the feature store); "
        "`synthetic` (target feature and label, attempts, activation, threshold, what was verified, variant — synthetic rows only). "
        "`removed.parquet` lists every removed record with its `reason`.\n",
    ]
    return "\n".join(parts)
