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
from rules_stores import labelled_store

D_SAE = 64
CATEGORIES = {"benign": ([], 0.0), "violence": ([1, 2, 3, 4, 5], 0.6), "fraud": ([10, 11, 12, 13], 0.5)}


def config(tmp: Path, corpora: dict[str, list[str]], **sections) -> PipelineConfig:
    """A pipeline config over prebuilt stores (the model and SAE are never loaded by these stages)."""
    return PipelineConfig.model_validate({
        "workdir": str(tmp / "work"), "model": {"id": "unused"}, "sae": {"path": "unused", "layer": 3},
        "corpora": {name: {"input": inputs} for name, inputs in corpora.items()}, **sections})


def test_rules_mine(tmp_path):
    store = labelled_store(tmp_path / "store", n=600)
    cfg = config(tmp_path, {"texts": ["texts.jsonl"]},
                 rules={"mine": {"corpus": "texts", "by": "lang", "top": 6, "seed": 7, "name": "toxic"}})
    piped = stages.mine_rules(cfg, str(store.root)).outputs["rules"]
    mine = cfg.rules.mine
    main(["rules", "mine", "--features", str(store.root), "--out", str(tmp_path / "cli.yaml"), "--by", mine.by,
          "--top", str(mine.top), "--seed", str(mine.seed), "--name", mine.name])
    assert yaml.safe_load(Path(piped).read_text()) == yaml.safe_load((tmp_path / "cli.yaml").read_text())


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

    gaps_dir = stages.find_gaps(cfg, inventory, str(target.root)).outputs["dir"]
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


def test_every_stage_of_the_graph_has_its_task_command_and_output():
    """The STAGES table is what the flows, the cache keys and `validate` follow: each row names a real task, a real
    command and a real output place."""
    import typer
    from prefect import Task

    import qscope_flows.tasks as tasks
    from qscope_data.cli import app

    task_names = {t.name for t in vars(tasks).values() if isinstance(t, Task)}
    root = typer.main.get_command(app)
    for stage in stages.STAGES:
        assert stage.name in task_names, f"stage {stage.name} has no flow task"
        command = root
        for word in stage.command.split()[1:]:
            command = command.commands[word]
        assert hasattr(stages.Layout, stage.writes), f"stage {stage.name} writes to no Layout place"
        assert stage.settings and callable(stage.run)
