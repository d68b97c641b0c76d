"""One Prefect flow per stage: encode, score (rules mine + score), gaps (features select + gaps), synth, curate.

Each flow reads the pipeline config itself, so it can run on its own (a deployment, e.g. the weekly gap report);
what it needs from upstream it takes as parameters, or gets by calling the upstream flow — whose tasks hit the
cache when their inputs have not changed. Flows only compose tasks (`tasks.py`); the work is in `qscope_data`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from qscope_data.config import PipelineConfig, load_config
from qscope_data.stages import Executor
from qscope_flows.tasks import (
    configured,
    curate_task,
    encode_task,
    ensure_gpu_limit,
    gaps_task,
    mine_task,
    publish,
    score_task,
    select_task,
    synth_task,
)


def _config(config_path: str) -> PipelineConfig:
    config = load_config(config_path)
    ensure_gpu_limit(config)
    return config


@flow(name="encode")
def encode_flow(config_path: str, executor: Executor | None = None, resume: bool = True,
                corpora: list[str] | None = None) -> dict[str, str]:
    """Encode the corpora the config's stages read (or `corpora`) into feature stores: {corpus: store path}."""
    config = _config(config_path)
    stores: dict[str, str] = {}
    for corpus in corpora or config.needed_corpora():
        result = configured(encode_task, config, resume, f"encode-{corpus}")(
            config, corpus, inputs=list(config.corpora[corpus].input), executor=executor, resume=resume)
        publish(config, result, corpus)
        stores[corpus] = result["outputs"]["store"]
    return stores


@flow(name="score")
def score_flow(config_path: str, executor: Executor | None = None, resume: bool = True,
               stores: dict[str, str] | None = None) -> dict[str, Any]:
    """Mine rules from the labelled corpus (rules.mine) and score a corpus with the rule files + mined rules."""
    config = _config(config_path)
    rules = config.rules
    wanted = [c for c in ((rules.mine.corpus if rules and rules.mine else None), config.score.corpus if config.score else None) if c]
    stores = stores or encode_flow(config_path, executor, resume, corpora=list(dict.fromkeys(wanted)))
    out: dict[str, Any] = {}
    if rules and rules.mine:
        mined = configured(mine_task, config, resume)(config, inputs=[stores[rules.mine.corpus]])
        publish(config, mined)
        out["mined"] = mined["outputs"]["rules"]
    if config.score:
        store = stores[config.score.corpus]
        files = list(config.rules.files if config.rules else [])
        scored = configured(score_task, config, resume)(config, inputs=[store, *files, out.get("mined")], store=store,
                                                        mined=out.get("mined"))
        publish(config, scored, config.score.corpus)
        out["scores"] = scored["outputs"]["scores"]
    return out


@flow(name="gaps")
def gaps_flow(config_path: str, executor: Executor | None = None, resume: bool = True,
              stores: dict[str, str] | None = None) -> dict[str, Any]:
    """The safety-feature inventory from the labelled reference corpus, then the target corpus' coverage gaps.
    The gap report is attached as a markdown artifact (key `<name>-gap-report`)."""
    config = _config(config_path)
    if config.inventory is None or config.gaps is None:
        return {}
    stores = stores or encode_flow(config_path, executor, resume,
                                   corpora=list(dict.fromkeys([config.inventory.corpus, config.gaps.target])))
    selected = configured(select_task, config, resume)(config, inputs=[stores[config.inventory.corpus]])
    publish(config, selected)
    inventory = selected["outputs"]["inventory"]
    target = stores[config.gaps.target]
    found = configured(gaps_task, config, resume)(config, inputs=[inventory, target], inventory=inventory,
                                                  target_store=target)
    publish(config, found, "report")
    return {"inventory": inventory, "gaps": found["outputs"]["dir"]}


@flow(name="synth")
def synth_flow(config_path: str, executor: Executor | None = None, resume: bool = True, gaps: str | None = None,
               inventory: str | None = None) -> dict[str, Any]:
    """Synthesis aimed at the gaps, kept only where re-encoding shows the target feature fires."""
    config = _config(config_path)
    if config.synth is None:
        return {}
    if gaps is None:
        upstream = gaps_flow(config_path, executor, resume)
        gaps, inventory = upstream["gaps"], upstream["inventory"]
    made = configured(synth_task, config, resume)(config, inputs=[gaps, inventory], gaps_dir=gaps, inventory=inventory,
                                                  executor=executor)
    publish(config, made)
    return {"synth": made["outputs"]["synth"]}


@flow(name="curate")
def curate_flow(config_path: str, executor: Executor | None = None, resume: bool = True,
                stores: dict[str, str] | None = None, scores: str | None = None, synth: str | None = None,
                upstream: bool = True) -> dict[str, Any]:
    """Curated SFT shards of the curate corpus, with its rule scores and the accepted synthetic samples.
    With `upstream` (a standalone run), missing inputs come from the score / synth flows."""
    config = _config(config_path)
    if config.curate is None:
        return {}
    corpus = config.curate.corpus
    stores = stores or encode_flow(config_path, executor, resume, corpora=[corpus])
    if upstream and scores is None and config.score and config.score.corpus == corpus:
        scores = score_flow(config_path, executor, resume, stores=stores).get("scores")
    if upstream and synth is None and config.synth:
        synth = synth_flow(config_path, executor, resume).get("synth")
    store = stores[corpus]
    made = configured(curate_task, config, resume)(
        config, inputs=[store, scores, synth, *config.corpora[corpus].input], store=store, scores=scores, synth=synth)
    publish(config, made)
    return {"curated": made["outputs"]["curated"]}
