"""Each stage run by the pipeline (`qscope_data.stages`, what `qscope run`'s flows call) and by its own command,
from the same options, writes the same output: the pipeline adds no defaults or conversions of its own."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
import yaml

from coverage_stores import make_store, random_docs
from curate_corpus import case, run as run_curate  # noqa: F401 (case: fixture)
from qscope_data import stages
from qscope_data.cli import main
from qscope_data.config import PipelineConfig
from qscope_data.coverage.gaps import load_gaps
from qscope_data.coverage.inventory import load_inventory
from qscope_data.rules.score import load_scores
from qscope_data.store import FeatureStore
from qscope_data.synth.output import load_synth_summary, load_synthetic
from rules_stores import labelled_store
from synth_world import LAYER as SYNTH_LAYER, build_world

D_SAE = 64
CATEGORIES = {"benign": ([], 0.0), "violence": ([1, 2, 3, 4, 5], 0.6), "fraud": ([10, 11, 12, 13], 0.5)}


def config(tmp: Path, corpora: dict[str, list[str]], **sections) -> PipelineConfig:
    """A pipeline config over prebuilt stores (the model and SAE are never loaded by these stages)."""
    return PipelineConfig.model_validate({
        "workdir": str(tmp / "work"), "model": {"id": "unused"}, "sae": {"path": "unused", "layer": 3},
        "corpora": {name: {"input": inputs} for name, inputs in corpora.items()}, **sections})


def test_rules_mine(tmp_path):
    """On a two-layer store both mine at the config's `sae.layer` (the command's `--layer`), not the layer the
    top1-diff proxy would pick (the stronger layer 3)."""
    store = labelled_store(tmp_path / "store", n=600, layers={3: 1.0, 6: 0.6})
    cfg = config(tmp_path, {"texts": ["texts.jsonl"]},
                 rules={"mine": {"corpus": "texts", "by": "lang", "top": 6, "seed": 7, "name": "toxic"}})
    cfg.sae.layer = 6
    piped = stages.mine_rules(cfg, str(store.root)).outputs["mined_rules"]
    mine = cfg.rules.mine
    main(["rules", "mine", "--features", str(store.root), "--out", str(tmp_path / "cli.yaml"), "--by", mine.by,
          "--top", str(mine.top), "--seed", str(mine.seed), "--name", mine.name, "--layer", str(cfg.sae.layer)])
    ours, theirs = yaml.safe_load(Path(piped).read_text()), yaml.safe_load((tmp_path / "cli.yaml").read_text())
    assert ours == theirs and ours["sae"]["layer"] == 6


@pytest.fixture(scope="module")
def coverage(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage-coverage")
    rng = random.Random(3)
    ref = make_store(root / "ref", random_docs(rng, 120, d_sae=D_SAE, categories=CATEGORIES, base_rate=0.04,
                                               prefix="r"), d_sae=D_SAE)
    target = make_store(root / "target", random_docs(rng, 90, d_sae=D_SAE, base_rate=0.015, prefix="t"), d_sae=D_SAE)
    return ref, target


def test_features_select_and_gaps(coverage, tmp_path):
    ref, target = coverage
    cfg = config(tmp_path, {"ref": ["ref.jsonl"], "target": ["target.jsonl"]},
                 inventory={"corpus": "ref", "top": 4, "min_support": 3}, gaps={"target": "target"})
    inventory = stages.select_inventory(cfg, str(ref.root)).outputs["inventory"]
    main(["features", "select", "--features", str(ref.root), "--top", "4", "--min-support", "3",
          "--out", str(tmp_path / "cli.yaml")])
    assert load_inventory(inventory).model_dump() == load_inventory(tmp_path / "cli.yaml").model_dump()
    assert load_inventory(inventory).features, "the case selects something"

    gaps_dir = stages.find_gaps(cfg, inventory, str(target.root)).outputs["gaps"]
    main(["gaps", "--inventory", inventory, "--target", str(target.root), "--out", str(tmp_path / "cli-gaps")])
    assert load_gaps(Path(gaps_dir) / "gaps.json").to_json() == load_gaps(tmp_path / "cli-gaps" / "gaps.json").to_json()


def test_curate(case, tmp_path):  # noqa: F811 (fixture)
    cfg = config(tmp_path, {"sft": [str(case["data"])]},
                 curate={"corpus": "sft", "quotas": {"lang": {"en": 3}}, "license": "apache-2.0"})
    piped = Path(stages.curate_corpus(cfg, str(case["store"].root), str(case["scores"]), str(case["synth"]))
                 .outputs["curated"])
    out = tmp_path / "cli"
    run_curate(case, out, "--quota", "lang=en:3", "--license", "apache-2.0", "--name", cfg.name)

    def rows(folder: Path) -> pl.DataFrame:
        return pl.concat([pl.read_parquet(p) for p in sorted(folder.glob("data/*.parquet"))]).sort("doc_id")

    assert rows(piped).equals(rows(out))
    assert pl.read_parquet(piped / "removed.parquet").sort("doc_id").equals(
        pl.read_parquet(out / "removed.parquet").sort("doc_id"))


def test_score(tmp_path):
    """A two-layer store scored with header-less rule files: the config's `sae.layer` is the layer `qscope score
    --layer` names (not the store's first)."""
    store = labelled_store(tmp_path / "store", n=300, layers={3: 0.2, 6: 1.0})
    rules = tmp_path / "rules.yaml"
    rules.write_text("features: {planted: 11, pooled: 44}\n"
                     "rules:\n"
                     "  - {name: planted, when: 'fires(planted, 0.5)', score: 'act(planted)', action: drop}\n"
                     "  - {name: pooled, when: 'fires(pooled)', languages: [en, de], action: flag}\n")
    cfg = config(tmp_path, {"texts": ["texts.jsonl"]}, rules={"files": [str(rules)]},
                 score={"corpus": "texts", "batch_rows": 70})
    cfg.sae.layer = 6
    piped = load_scores(stages.score_corpus(cfg, str(store.root)).outputs["scores"])
    main(["score", "--rules", str(rules), "--features", str(store.root), "--layer", str(cfg.sae.layer),
          "--batch-rows", str(cfg.score.batch_rows), "--out", str(tmp_path / "cli"), "--no-progress"])
    cli = load_scores(tmp_path / "cli")
    assert piped.summary["layer"] == cli.summary["layer"] == 6
    assert piped.actions == cli.actions == {"planted": "drop", "pooled": "flag"}
    assert piped.frame.sort("doc_id").equals(cli.frame.sort("doc_id"))
    assert piped.frame["planted"].any() and not piped.frame["planted"].all(), "the rules split the documents"


def test_encode(tiny_model_dir, sae_dir, write_jsonl, tmp_path):
    model, sae = tiny_model_dir("qwen3"), sae_dir(d_sae=1024, k=16, layers=(2,))
    words = "the quick brown fox jumps over a lazy dog while you bake bread with flour water salt".split()
    rng = random.Random(5)
    texts = write_jsonl([{"id": f"d{i:02d}", "text": " ".join(rng.choices(words, k=20)), "lang": "en"}
                         for i in range(14)])
    cfg = PipelineConfig.model_validate({
        "workdir": str(tmp_path / "work"), "model": {"id": str(model)}, "sae": {"path": str(sae), "layer": 2},
        "corpora": {"texts": {"input": [str(texts)], "max_tokens": 12, "keep_first": True, "token_level": True}},
        "encode": {"batch_size": 3, "shard_rows": 5}})
    piped = FeatureStore(stages.encode_corpus(cfg, "texts", executor="local", progress=False).outputs["store"])
    corpus = cfg.corpora["texts"]
    main(["encode", "--model", str(model), "--sae", str(sae), "--layer", "2", "--input", str(texts),
          "--max-tokens", str(corpus.max_tokens), "--keep-first", "--token-level",
          "--batch-size", str(cfg.encode.batch_size), "--shard-rows", str(cfg.encode.shard_rows),
          "--out", str(tmp_path / "cli"), "--no-progress"])
    cli = FeatureStore(tmp_path / "cli")
    assert piped.manifest.options == cli.manifest.options and piped.manifest.model == cli.manifest.model
    assert piped.manifest.saes == cli.manifest.saes and piped.manifest.stats["n_shards"] == 3
    assert [(s.name, s.rows) for s in piped.manifest.shards] == [(s.name, s.rows) for s in cli.manifest.shards]
    assert piped.read(2).sort("doc_id").equals(cli.read(2).sort("doc_id"))
    assert piped.scan_tokens(2).collect().sort("doc_id", "position").equals(
        cli.scan_tokens(2).collect().sort("doc_id", "position"))


def test_synth(tiny_model_dir, tmp_path):
    """The default few-shot generator (the verifying model, seeded) over the synthesis world: same accepted samples,
    same summary."""
    world = build_world(tmp_path / "world", tiny_model_dir("qwen3"))
    cfg = PipelineConfig.model_validate({
        "workdir": str(tmp_path / "work"), "model": {"id": str(world.model)},
        "sae": {"path": str(world.sae), "layer": SYNTH_LAYER},
        "corpora": {"ref": {"input": ["ref.jsonl"]}, "target": {"input": ["target.jsonl"]}},
        "inventory": {"corpus": "ref"}, "gaps": {"target": "target"},
        "synth": {"per_feature": 2, "max_attempts": 2, "max_features": 3,
                  "languages": ["en", "de"]}})
    s = cfg.synth
    piped = stages.synthesize_gaps(cfg, str(world.gaps.parent), str(world.inventory), executor="local").outputs["synth"]
    main(["synth", "--gaps", str(world.gaps), "--model", str(world.model), "--sae", str(world.sae),
          "--layer", str(SYNTH_LAYER), "--inventory", str(world.inventory), "--generator", s.generator,
          "--per-feature", str(s.per_feature), "--max-attempts", str(s.max_attempts),
          "--max-features", str(s.max_features), "--languages", ",".join(s.languages),
          "--out", str(tmp_path / "cli"), "--no-progress"])

    def samples(folder) -> list[dict]:
        return [{k: v for k, v in vars(x).items() if k != "file"} for x in load_synthetic(folder).samples]

    assert samples(piped) == samples(tmp_path / "cli") and samples(piped), "the generator fills some slots"
    ours, theirs = load_synth_summary(piped), load_synth_summary(tmp_path / "cli")
    assert ours["totals"]["accepted"] >= 1  # a random tiny model: some, not a rate
    for summary in (ours, theirs):
        del summary["coverage"]["store"]  # its own output folder's store/
    for key in ("totals", "coverage", "features", "generator", "model", "sae", "layer", "threshold", "verify",
                "languages", "variants", "per_feature", "max_attempts", "near_copy", "comparison"):
        assert ours[key] == theirs[key], key


# Every stage of the STAGES table, by the module that holds its entry point.
STAGE_MODULES = ["qscope_data.encode", "qscope_data.rules.mine", "qscope_data.rules.score", "qscope_data.coverage.inventory",
                 "qscope_data.coverage.gaps", "qscope_data.synth.synthesize", "qscope_data.curate.curate"]


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_the_common_entry_point_form(module):
    """Stages moved to the common form have one `run(options, inputs, out, *, progress=None, …) -> Result`: how a run
    behaves beyond that (where it executes, whether it starts over) is keyword-only and defaulted."""
    import importlib
    import inspect

    run = importlib.import_module(module).run
    params = list(inspect.signature(run).parameters.values())
    assert [p.name for p in params[:4]] == ["options", "inputs", "out", "progress"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:3])
    assert params[3].kind is inspect.Parameter.KEYWORD_ONLY and params[3].default is None
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
               for p in params[4:])
    assert run.__annotations__["return"].startswith("Result[")


def test_every_stage_of_the_graph_has_its_task_command_and_output():
    """The STAGES table is what the flows, the cache keys and `validate` follow: each row names a real task, a real
    command, a real output place, a real function, and reads only what an earlier row writes."""
    import inspect

    import typer

    import qscope_flows.stages as flows
    import qscope_flows.tasks as tasks
    from qscope_data.cli import app

    root = typer.main.get_command(app)
    written: set[str] = set()
    for stage in stages.STAGES:
        assert tasks.TASKS[stage.name].name == stage.name, f"stage {stage.name} has no flow task"
        assert stage.flow in flows.FLOW_FUNCTIONS and flows.FLOW_FUNCTIONS[stage.flow].name == stage.flow
        command = root
        for word in stage.command.split()[1:]:
            command = command.commands[word]
        assert hasattr(stages.Layout, stage.writes), f"stage {stage.name} writes to no Layout place"
        params = inspect.signature(stage.run).parameters
        for param, output in stage.reads:
            assert param in params, f"{stage.function} takes no {param!r}"
            assert output in written, f"stage {stage.name} reads {output!r}, which no earlier stage writes"
        written.add(stage.writes)
        assert stage.settings
