"""One Prefect flow per group of stages — encode, score (mine + score), gaps (select + gaps), synth, curate — wired
from the one stage table, `qscope_data.stages.STAGES`: which stages a flow runs, what each reads from upstream,
which upstream flow writes it, which corpus a store or scores belong to.

Each flow reads the pipeline config itself, so it can run on its own (a deployment, e.g. the weekly gap report):
what it needs from upstream it takes in `given` (what an upstream flow returned), or — with `upstream` — gets by
calling the upstream flow, whose tasks hit the cache when their inputs have not changed. A flow returns what its
stages wrote: `{output: path}`, per-corpus outputs (stores, scores) as `{output: {corpus: path}}`. Flows only
compose tasks (`tasks.py`); the work is in `qscope_data`.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect import flow

from qscope_data.config import PipelineConfig, load_config
from qscope_data.stages import EVERY_CORPUS, FLOWS, PER_CORPUS, STAGES, Executor, Stage, config_at
from qscope_flows.tasks import TASKS, configured, ensure_gpu_limit, publish

Outputs = dict[str, Any]  # output name → path, or {corpus: path} for PER_CORPUS outputs


def _config(config_path: str) -> PipelineConfig:
    config = load_config(config_path)
    ensure_gpu_limit(config)
    return config


def _read_corpus(config: PipelineConfig, row: Stage, output: str, corpus: str | None) -> str | None:
    """The corpus whose `output` a run of `row` for `corpus` reads (None for outputs that are not per corpus)."""
    if output not in PER_CORPUS:
        return None
    return corpus if row.corpus == EVERY_CORPUS else config_at(config, row.corpus)


def _lookup(outputs: Outputs, output: str, corpus: str | None) -> str | None:
    value = outputs.get(output)
    return value.get(corpus) if isinstance(value, dict) else value


def _writer(config: PipelineConfig, output: str, corpus: str | None) -> Stage | None:
    """The configured stage that writes `output` (for `corpus`), if any: a read nobody writes stays None."""
    for row in STAGES:
        if row.writes == output and row.configured(config) and (corpus is None or corpus in row.corpora(config)):
            return row
    return None


def run_flow(name: str, config_path: str, executor: Executor | None, resume: bool, given: Outputs | None,
             upstream: bool, corpora: list[str] | None = None) -> Outputs:
    """Run flow `name`'s configured stages in table order; what they read and nobody gave comes from the upstream
    flow that writes it (with `upstream`)."""
    config = _config(config_path)
    outputs: Outputs = {k: dict(v) if isinstance(v, dict) else v for k, v in (given or {}).items()}
    rows = [row for row in STAGES if row.flow == name and row.configured(config)]
    runs = [(row, corpus) for row in rows
            for corpus in (corpora if corpora and row.corpus == EVERY_CORPUS else row.corpora(config))]
    if upstream:
        missing: dict[str, list[str]] = {}  # upstream flow → the corpora it is asked for
        for row, corpus in runs:
            for _, output in row.reads:
                read_corpus = _read_corpus(config, row, output, corpus)
                writer = _writer(config, output, read_corpus)
                if writer and writer.flow != name and _lookup(outputs, output, read_corpus) is None:
                    missing.setdefault(writer.flow, [])
                    if read_corpus and read_corpus not in missing[writer.flow]:
                        missing[writer.flow].append(read_corpus)
        for up in FLOWS:
            if up in missing:
                got = FLOW_FUNCTIONS[up](config_path, executor, resume, given=outputs, corpora=missing[up] or None)
                merge_outputs(outputs, got)
    wrote: Outputs = {}
    for row, corpus in runs:
        reads = {param: _lookup(outputs, output, _read_corpus(config, row, output, corpus)) for param, output in row.reads}
        result = configured(TASKS[row.name], config, resume, row.key(corpus))(
            config, row.name, reads, corpus=corpus, executor=executor, resume=resume)
        path = result["outputs"][row.writes]
        if row.writes in PER_CORPUS:
            owner = corpus or config_at(config, row.corpus)
            publish(config, result, owner)
            update = {row.writes: {owner: path}}
        else:
            publish(config, result)
            update = {row.writes: path}
        merge_outputs(outputs, update)
        merge_outputs(wrote, update)
    return wrote


def merge_outputs(into: Outputs, more: Outputs) -> None:
    for key, value in more.items():
        if isinstance(value, dict):
            into.setdefault(key, {}).update(value)
        else:
            into[key] = value


@flow(name="encode")
def encode_flow(config_path: str, executor: Executor | None = None, resume: bool = True, given: Outputs | None = None,
                corpora: list[str] | None = None, upstream: bool = True) -> Outputs:
    """Encode the corpora the config's stages read (or `corpora`) into feature stores: {"store": {corpus: path}}."""
    return run_flow("encode", config_path, executor, resume, given, upstream, corpora)


@flow(name="score")
def score_flow(config_path: str, executor: Executor | None = None, resume: bool = True, given: Outputs | None = None,
               corpora: list[str] | None = None, upstream: bool = True) -> Outputs:
    """Mine rules from the labelled corpus (rules.mine) and score a corpus with the rule files + mined rules."""
    return run_flow("score", config_path, executor, resume, given, upstream, corpora)


@flow(name="gaps")
def gaps_flow(config_path: str, executor: Executor | None = None, resume: bool = True, given: Outputs | None = None,
              corpora: list[str] | None = None, upstream: bool = True) -> Outputs:
    """The safety-feature inventory from the labelled reference corpus, then the target corpus' coverage gaps.
    The gap report is attached as a markdown artifact (key `<name>-gaps-report`)."""
    return run_flow("gaps", config_path, executor, resume, given, upstream, corpora)


@flow(name="synth")
def synth_flow(config_path: str, executor: Executor | None = None, resume: bool = True, given: Outputs | None = None,
               corpora: list[str] | None = None, upstream: bool = True) -> Outputs:
    """Synthesis aimed at the gaps, kept only where re-encoding shows the target feature fires."""
    return run_flow("synth", config_path, executor, resume, given, upstream, corpora)


@flow(name="curate")
def curate_flow(config_path: str, executor: Executor | None = None, resume: bool = True, given: Outputs | None = None,
                corpora: list[str] | None = None, upstream: bool = True) -> Outputs:
    """Curated SFT shards of the curate corpus, with its rule scores and the accepted synthetic samples."""
    return run_flow("curate", config_path, executor, resume, given, upstream, corpora)


FLOW_FUNCTIONS: dict[str, Callable[..., Outputs]] = {
    "encode": encode_flow, "score": score_flow, "gaps": gaps_flow, "synth": synth_flow, "curate": curate_flow,
}
