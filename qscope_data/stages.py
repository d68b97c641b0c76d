"""The pipeline's stages as functions of one validated config: what `qscope run`'s Prefect flows call.

Each function maps the config's section onto its stage library (encode / executors.ray, rules, coverage, synth,
curate), writes to a fixed place under `workdir` (`Layout`), and returns a `StageResult`: the paths it wrote, a
small summary and a markdown paragraph for people (the flows publish it as an artifact). Nothing here knows about
Prefect; the flows add retries, caching, concurrency limits and artifacts around these calls.

`settings_digest` and `inputs_digest` are what a cached result is keyed on: the config sections a stage reads and
the bytes of what it reads (store manifests, rule files, input files), so a rerun with the same config over the
same data hits the cache and any change upstream misses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from qscope_data import atomic
from qscope_data.config import PipelineConfig
from qscope_data.errors import UsageError
from qscope_data.result import interactive

Executor = Literal["local", "ray"]


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, under the config's workdir."""

    root: Path

    def store(self, corpus: str) -> Path:
        return self.root / "stores" / corpus

    @property
    def mined_rules(self) -> Path:
        return self.root / "rules" / "mined.yaml"

    def scores(self, corpus: str) -> Path:
        return self.root / "scores" / corpus

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.yaml"

    @property
    def gaps(self) -> Path:
        return self.root / "gaps"

    @property
    def synth(self) -> Path:
        return self.root / "synth"

    @property
    def curated(self) -> Path:
        return self.root / "shards"

    @property
    def results(self) -> Path:
        """Where the flows persist task results (the cache lives with the outputs it describes)."""
        return self.root / ".prefect" / "results"


    @property
    def output_records(self) -> Path:
        """One JSON per stage run: what its outputs looked like when it finished (the cache holds only while they
        still look so)."""
        return self.root / ".prefect" / "outputs"


def layout(config: PipelineConfig) -> Layout:
    return Layout(Path(config.workdir))


@dataclass
class StageResult:
    stage: str
    outputs: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""


# -- cache keys -------------------------------------------------------------------------------------------------

def outputs_listing(paths: list[str]) -> dict[str, list]:
    """path → [[relative name, bytes, mtime_ns], …] of every file a stage output is (or holds); [] when absent.
    Sizes and mtimes, not hashes: a check on every flow run must not reread gigabytes of shards."""
    listing: dict[str, list] = {}
    for p in sorted(set(paths)):
        path = Path(p)
        files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else []
        listing[p] = [[q.relative_to(path).as_posix() if q != path else "", q.stat().st_size, q.stat().st_mtime_ns]
                      for q in files]
    return listing


def record_outputs(config: PipelineConfig, key: str, outputs: dict[str, str]) -> None:
    """Write what a stage's outputs look like now that it has finished (see `outputs_intact`)."""
    paths = [v for v in outputs.values() if isinstance(v, str) and Path(v).exists()]
    atomic.write_json(layout(config).output_records / f"{key}.json", outputs_listing(paths))


def outputs_intact(config: PipelineConfig, key: str) -> bool:
    """Whether the outputs a stage recorded are all still there, unchanged: a cached result is good only then."""
    try:
        recorded = json.loads((layout(config).output_records / f"{key}.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded) and all(recorded.values()) and recorded == outputs_listing(list(recorded))


def settings_digest(config: PipelineConfig, stage: str, corpus: str | None = None) -> str:
    """sha256 of the config sections `stage` reads (and the corpus' own section for per-corpus stages)."""
    data = config.model_dump(mode="json")
    picked: dict[str, Any] = {}
    for path in stage_named(stage).settings:
        value: Any = data
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        picked[path] = value
    if corpus is not None:
        picked["corpus"] = data["corpora"][corpus]
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()


def stage_inputs(config: PipelineConfig, stage: str, reads: dict[str, str | None], corpus: str | None) -> list[str]:
    """What one run of a stage reads, for its cache key: its upstream outputs, then its input files."""
    return [p for p in reads.values() if p] + stage_named(stage).read_files(config, corpus)


def inputs_digest(paths: list[str | Path]) -> str:
    """sha256 over what a stage reads: a store by its manifest, an output folder by its summary / manifest, a file
    by its bytes, a glob or folder by the files in it. A missing path digests as missing (the stage will fail)."""
    from qscope_data.inputs import input_fingerprint, resolve_paths

    h = hashlib.sha256()
    for spec in paths:
        spec = str(spec)
        h.update(spec.encode())
        p = Path(spec)
        for marker in ("manifest.json", "summary.json", "gaps.json"):
            if p.is_dir() and (p / marker).is_file():
                h.update(atomic.sha256_file(p / marker).encode())
                break
        else:
            if p.is_file():
                h.update(atomic.sha256_file(p).encode())
            else:
                try:
                    h.update(input_fingerprint(resolve_paths(spec)).encode())
                except UsageError:
                    h.update(b"<missing>")
    return h.hexdigest()


# -- the stages -------------------------------------------------------------------------------------------------


def encode_corpus(config: PipelineConfig, corpus: str, *, executor: Executor | None = None, resume: bool = True,
                  progress: bool | None = None) -> StageResult:
    """The corpus into its feature store (local or Ray executor). A store holding another job (new data, other
    settings) is started over: the pipeline owns `workdir/stores/`. `resume=False` starts over regardless."""
    from qscope_data.encode import EncodeInputs, EncodeOptions, run

    c, enc = config.corpora[corpus], config.encode
    options = EncodeOptions(
        max_tokens=c.max_tokens, keep_first=c.keep_first, span=c.span, text_as=c.text_as, text_field=c.text_field, id_field=c.id_field,
        drop_text=c.drop_text, token_level=c.token_level, batch_size=enc.batch_size, shard_rows=enc.shard_rows,
        device=config.model.device, dtype=config.model.dtype,
    )
    inputs = EncodeInputs(config.model.id, config.sae.path, c.input, (config.sae.layer,),
                          revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
                          sae_k=config.sae.k)
    where = None
    if (executor or enc.executor) == "ray":
        from qscope_data.executors.placement import ray_options
        from qscope_data.executors.ray import RayExecutor

        where = RayExecutor(ray_options(config))
    result = run(options, inputs, layout(config).store(corpus), progress=progress, executor=where,
                 overwrite="other-job" if resume else True)
    s, out = result.stats, result.outputs["store"]
    md = (f"### encode `{corpus}`\n\n{s['documents']:,} documents, {s['rejected']:,} rejected, "
          f"{s['tokens']:,} tokens in {s['shards']} shard(s) ({s['state']}; {s['shards_skipped']} resumed), "
          f"{s['seconds']:.1f} s, {s['tokens_per_s']:,.0f} tokens/s → `{out}`\n")
    return StageResult("encode", {"store": str(out)}, dict(s), md)


def mine_rules(config: PipelineConfig, store: str) -> StageResult:
    """Mine toxicity rules (firing-rate gap Δ, OR of the top features) from the labelled corpus' store, at
    `sae.layer` (never the top1-diff pick: the rules must be for the layer the config's SAE reads)."""
    from qscope_data.rules.mine import MineInputs, MineOptions, run

    m = config.rules.mine if config.rules else None
    if m is None:
        raise UsageError("rules.mine is not configured")
    options = MineOptions.model_validate(m.model_dump(exclude={"corpus"}))
    result = run(options, MineInputs(Path(store), config.sae.layer), layout(config).mined_rules,
                 progress=interactive())
    rules, layer = result.stats["rules"], result.stats["layer"]
    lines = [f"- `{r['name']}` ({r['group'] or 'all'}): k={r['k']}, eps={r['eps']}, features {r['features']}"
             for r in rules]
    md = f"### rules mine\n\n{len(rules)} rule(s) mined from `{store}` (layer {layer}):\n\n" + "\n".join(lines) + "\n"
    return StageResult("mine", {"mined_rules": str(result.outputs["rules"])}, {"layer": layer, "rules": rules}, md)


def score_corpus(config: PipelineConfig, store: str, mined: str | None = None) -> StageResult:
    """Score every document of the store with the configured rule files (and the mined ones), at `sae.layer`
    (a store with several layers is scored where the config's SAE reads, as `qscope score --layer` does)."""
    from qscope_data.rules.score import ScoreInputs, ScoreOptions, run

    if config.score is None:
        raise UsageError("score is not configured")
    files = list(config.rules.files if config.rules else []) + ([mined] if mined else [])
    options = ScoreOptions.model_validate(config.score.model_dump(exclude={"corpus"}))
    inputs = ScoreInputs([Path(f) for f in files], Path(store), config.sae.layer)
    result = run(options, inputs, layout(config).scores(config.score.corpus), progress=interactive())
    stats = result.stats
    rows = [f"| `{name}` | {r.get('action', '')} | {r.get('hits', '')} |" for name, r in stats["rules"].items()]
    md = (f"### score `{config.score.corpus}`\n\n{stats['n_documents']:,} documents, {len(files)} rule file(s)\n\n"
          "| rule | action | hits |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    return StageResult("score", {"scores": str(result.outputs["scores"])},
                       {k: stats[k] for k in ("n_documents", "rules", "layer")}, md)


def select_inventory(config: PipelineConfig, store: str) -> StageResult:
    """The safety-feature inventory (`coverage.inventory.run`): per category, the features that fire most above the
    negative class, at `sae.layer`."""
    from qscope_data.coverage.inventory import InventoryOptions, SelectInputs, run

    inv_cfg = config.inventory
    if inv_cfg is None:
        raise UsageError("inventory is not configured")
    options = InventoryOptions.model_validate(inv_cfg.model_dump(exclude={"corpus"}))
    result = run(options, SelectInputs(Path(store), layer=config.sae.layer), layout(config).inventory,
                 progress=interactive())
    counts = result.stats["by_category"]
    md = f"### features select\n\n{result.stats['features']} feature(s) over {len(counts)} categor(ies): " + \
        ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n"
    return StageResult("select", {"inventory": str(result.outputs["inventory"])}, dict(result.stats), md)


def find_gaps(config: PipelineConfig, inventory: str, target_store: str, dashboard: str | None = None) -> StageResult:
    """Coverage of the inventory by the target corpus, and its gaps (`coverage.gaps.run`): gaps.json +
    report.md/html with plots. The summary's markdown is the gap report itself. `dashboard`: a `features explain`
    folder the gaps link to."""
    from qscope_data.coverage.gaps import GapsInputs, GapsOptions, run
    from qscope_data.coverage.report import gap_report_markdown

    g = config.gaps
    if g is None:
        raise UsageError("gaps is not configured")
    inputs = GapsInputs(Path(inventory), [Path(target_store)], dashboard=Path(dashboard) if dashboard else None)
    result = run(GapsOptions.model_validate(g.model_dump(exclude={"target"})), inputs, layout(config).gaps,
                 progress=interactive())
    return StageResult("gaps", {name: str(p) for name, p in result.outputs.items()}, dict(result.stats),
                       gap_report_markdown(result.artifact))


def synthesize_gaps(config: PipelineConfig, gaps_dir: str, inventory: str | None = None, *,
                    executor: Executor | None = None) -> StageResult:
    """Targeted synthesis for the gaps; a sample is kept only if re-encoding shows its target feature fires.
    It loads the model (generation with a local generator, verification always): with the Ray executor it runs as
    a Ray task holding the encoder actors' GPUs (`executors.placement`), never in the driver."""
    from qscope_data.coverage.report import GAPS_JSON
    from qscope_data.executors.placement import ray_options, run_placed
    from qscope_data.synth.options import SynthInputs
    from qscope_data.synth.synthesize import run

    s = config.synth
    if s is None:
        raise UsageError("synth is not configured")
    out = layout(config).synth
    inputs = SynthInputs(
        gaps=Path(gaps_dir) / GAPS_JSON, model=config.model.id, sae=config.sae.path, layer=config.sae.layer,
        inventory=Path(inventory) if inventory else None, device=config.model.device, dtype=config.model.dtype,
        sae_k=config.sae.k, batch_size=config.encode.batch_size, overwrite=True, **baseline_pool(config),
    )
    where = executor or config.encode.executor
    result, placement = run_placed(run, s, inputs, out, progress=interactive() and where == "local", executor=where,
                                   ray=ray_options(config))
    summary = result.artifact
    t, cov = summary.totals, summary.coverage

    def pct(part: dict) -> str:
        return "–" if part.get("fraction") is None else f"{100 * part['fraction']:.1f}%"

    before, after = cov.get("before", {}).get("overall", {}), cov.get("after", {}).get("overall", {})
    md = (f"### synth\n\n{t.get('accepted', 0)} of {t.get('requested', 0)} sample(s) accepted for {t.get('features', 0)} "
          f"gap feature(s) in {t.get('attempts', 0)} attempt(s) (generator `{s.generator}`); inventory coverage "
          f"{pct(before)} → {pct(after)}; rejected by reason: {json.dumps(t.get('rejected_by_reason', {}))}\n")
    md += ("\nRan as a Ray task on node {node} (num_gpus {num_gpus:g}).\n".format(**placement)
           if placement["executor"] == "ray" else "")
    comp = summary.comparison
    if "random" in comp:
        tg, rd = comp["targeted"]["gap_coverage"], comp["random"]["gap_coverage"]
        md += (f"\nGap features covered: targeted {tg['covered']}/{tg['total']} vs random baseline "
               f"{rd['covered']}/{rd['total']} ({comp['random']['candidates']} candidates, same generator).\n")
    return StageResult("synth", {"synth": str(out)}, {"totals": t, "coverage": summary.coverage,
                                                      "comparison": _without_lists(comp), "placement": placement}, md)


def baseline_pool(config: PipelineConfig) -> dict:
    """The random baseline's shots: the inventory corpus (the harmful reference set), its non-negative categories."""
    from qscope_data.synth.requests import BENIGN_CATEGORIES

    inv = config.inventory
    if inv is None or not (config.synth and config.synth.baseline_random):
        return {}
    return {"baseline_pool": list(config.corpora[inv.corpus].input), "baseline_pool_field": inv.label_field,
            "benign_categories": sorted({inv.negative, *BENIGN_CATEGORIES})}


def _without_lists(comp: dict) -> dict:
    """The comparison for the run summary: counts, not per-sample lists."""
    return {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list) or kk == "covered_features"}
            for k, v in comp.items()}


def curate_corpus(config: PipelineConfig, store: str, scores: str | None = None, synth: str | None = None) -> StageResult:
    """Curated SFT shards with provenance: drops by rule, dedup, quotas, synthetic samples mixed in."""
    from qscope_data.curate.curate import CurateInputs, CurateOptions, run

    c = config.curate
    if c is None:
        raise UsageError("curate is not configured")
    corpus = config.corpora[c.corpus]
    out = layout(config).curated
    options = CurateOptions.model_validate(
        c.model_dump(exclude={"corpus", "quotas"}) | {"quotas": {fld: values for fld, values in c.quotas.items() if values}})
    inputs = CurateInputs(inputs=list(corpus.input), features=Path(store), scores=Path(scores) if scores else None,
                          synth=[Path(synth)] if synth else [], text_field=corpus.text_field, id_field=corpus.id_field,
                          name=config.name, overwrite=True)
    result = run(options, inputs, out, progress=interactive())
    counts = result.artifact.counts
    md = f"### curate\n\n→ `{out}`\n\n```json\n{json.dumps(counts, indent=1, default=str)[:3000]}\n```\n"
    return StageResult("curate", {"curated": str(out)}, {"counts": counts}, md)


# -- the graph ----------------------------------------------------------------------------------------------------


PER_CORPUS = ("store", "scores")  # outputs kept per corpus (`Layout.store(corpus)`, `Layout.scores(corpus)`)
EVERY_CORPUS = "*"  # a stage that runs once per corpus the configured stages read (encode)


def config_at(config: PipelineConfig, path: str) -> Any:
    """The config value at a dotted path (None where a section is absent)."""
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part, None)
    return value


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once: the flows' wiring and tasks, the cache keys, the artifacts,
    `qscope validate`'s summary and docs/architecture.md's table follow this row."""

    name: str  # the task, cache-key and artifact name
    command: str  # the stage's own command (same options, same output: tests/test_stage_commands.py)
    section: str  # the config section that switches it on (and holds its options model)
    settings: tuple[str, ...]  # config paths its output depends on (the cache key; executor choice never is)
    reads: tuple[tuple[str, str], ...]  # (its function's parameter, the upstream output it takes: a `Layout` name)
    writes: str  # its `Layout` output
    function: str  # its function in this module: (config, **reads) -> StageResult; looked up when called
    flow: str  # the stage flow that runs it (flows/stages.py); a flow runs its stages in table order
    corpus: str | None = None  # config path of the corpus whose store / scores it reads; EVERY_CORPUS: each one
    files: tuple[str, ...] = ()  # config paths of files it reads besides upstream outputs ("corpus.input": its corpus')
    gpu: bool = False  # holds a slot of the GPU concurrency limit and takes the executor choice
    artifact: str = ""  # its markdown artifact's name (default: the stage's)

    @property
    def run(self) -> Callable[..., StageResult]:
        return globals()[self.function]

    def configured(self, config: PipelineConfig) -> bool:
        value = config_at(config, self.section)
        return value is not None and value != {}

    def corpora(self, config: PipelineConfig) -> list[str | None]:
        """The corpora it runs for: the one its `corpus` path names, every needed one, or [None]."""
        if self.corpus == EVERY_CORPUS:
            return list(needed_corpora(config))
        return [config_at(config, self.corpus)] if self.corpus else [None]

    def key(self, corpus: str | None) -> str:
        """Its task run's name and its outputs record's key: one per corpus for a per-corpus stage."""
        return f"{self.name}-{corpus}" if self.corpus == EVERY_CORPUS else self.name

    def read_files(self, config: PipelineConfig, corpus: str | None) -> list[str]:
        """The input files it reads besides upstream outputs (part of its cache key)."""
        out: list[str] = []
        for path in self.files:
            value = config.corpora[corpus].input if path == "corpus.input" else config_at(config, path)
            out += [str(v) for v in value or []]
        return out


STAGES: tuple[Stage, ...] = (
    Stage("encode", "qscope encode", "corpora", ("model", "sae", "encode.batch_size", "encode.shard_rows"), (),
          "store", "encode_corpus", "encode", corpus=EVERY_CORPUS, files=("corpus.input",), gpu=True),
    Stage("mine", "qscope rules mine", "rules.mine", ("rules.mine",), (("store", "store"),), "mined_rules",
          "mine_rules", "score", corpus="rules.mine.corpus"),
    Stage("score", "qscope score", "score", ("rules.files", "score"), (("store", "store"), ("mined", "mined_rules")),
          "scores", "score_corpus", "score", corpus="score.corpus", files=("rules.files",)),
    Stage("select", "qscope features select", "inventory", ("inventory",), (("store", "store"),), "inventory",
          "select_inventory", "gaps", corpus="inventory.corpus"),
    Stage("gaps", "qscope gaps", "gaps", ("gaps",), (("inventory", "inventory"), ("target_store", "store")), "gaps",
          "find_gaps", "gaps", corpus="gaps.target", artifact="gaps-report"),
    Stage("synth", "qscope synth", "synth", ("model", "sae", "synth"), (("gaps_dir", "gaps"), ("inventory", "inventory")),
          "synth", "synthesize_gaps", "synth", gpu=True),
    Stage("curate", "qscope curate", "curate", ("curate", "name", "corpora"),
          (("store", "store"), ("scores", "scores"), ("synth", "synth")), "curated", "curate_corpus", "curate",
          corpus="curate.corpus", files=("corpus.input",)),
)
FLOWS: tuple[str, ...] = tuple(dict.fromkeys(s.flow for s in STAGES))  # the stage flows, in graph order


def stage_named(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r} (stages: {', '.join(s.name for s in STAGES)})")


def needed_corpora(config: PipelineConfig) -> list[str]:
    """The corpora some configured stage reads (all of them when none does: encode-only configs)."""
    named = {config_at(config, s.corpus) for s in STAGES if s.corpus not in (None, EVERY_CORPUS) and s.configured(config)}
    return [c for c in config.corpora if c in named] or list(config.corpora)


def configured_stages(config: PipelineConfig) -> list[str]:
    """The stages a run of `config` will run, in graph order."""
    return [s.name for s in STAGES if s.configured(config)]


# -- validation ---------------------------------------------------------------------------------------------------


def check_pipeline(config: PipelineConfig, *, check_model: bool = True) -> list[str]:
    """Everything a run will need, checked without computing: inputs resolve, rule files parse and compile,
    the model / SAE pair fits (headers only), the generator spec parses. Raises `UsageError` at the first problem;
    returns what was checked."""
    from qscope_data.inputs import resolve_paths

    from qscope_data.outputs import check_folder

    check_folder(config.workdir, "workdir")
    done: list[str] = []
    for name, corpus in config.corpora.items():
        try:
            files = resolve_paths(corpus.input)
        except UsageError as exc:
            raise UsageError(f"corpora.{name}.input: {exc}") from None
        done.append(f"corpus {name}: {len(files)} input file(s)")
    if config.rules and config.rules.files:
        from qscope_data.rules.rulefile import load_rule_files

        loaded = load_rule_files(list(config.rules.files))
        for f in loaded:
            if f.header.layer is not None and f.header.layer != config.sae.layer:
                raise UsageError(f"{f.path}: rules are for SAE layer {f.header.layer}, but sae.layer is {config.sae.layer}")
        done.append(f"rules: {len(loaded)} file(s), {sum(len(f.model.rules) for f in loaded)} rule(s) parse")
    if check_model:
        from qscope_data.preflight import check_pair, model_shape, sae_shape

        shape = model_shape(config.model.id, revision=config.model.revision,
                            trust_remote_code=config.model.trust_remote_code)
        sae = sae_shape(config.sae.path, config.sae.layer, k=config.sae.k)
        check_pair(shape, sae, config.sae.layer)
        if config.rules:
            _check_rule_widths(config, sae.d_sae)
        done.append(f"model {shape.model_id}: {shape.n_layers} blocks, hidden size {shape.d_model}; SAE {sae.format} "
                    f"d_sae {sae.d_sae}, k {sae.k}, layer {config.sae.layer}: compatible")
    if config.encode.executor == "ray" and config.model.device.startswith("cuda") and config.encode.gpus_per_worker <= 0:
        raise UsageError("encode.gpus_per_worker must be > 0 for model.device cuda on the Ray executor")
    if config.synth:
        from qscope_data.synth.generators import parse_generator_spec

        parse_generator_spec(config.synth.generator)
        done.append(f"synth generator {config.synth.generator!r} parses")
    return done


def _check_rule_widths(config: PipelineConfig, d_sae: int) -> None:
    from qscope_data.rules.rulefile import load_rule_files

    for f in load_rule_files(list(config.rules.files)):
        width = f.header.d_sae
        if width is not None and width != d_sae:
            raise UsageError(f"{f.path}: rules are for an SAE of width {width}, but {config.sae.path} has d_sae {d_sae}")
        ids = f.features.values()
        if ids and max(ids) >= d_sae:
            raise UsageError(f"{f.path}: feature id {max(ids)} is beyond the SAE's width {d_sae}")

