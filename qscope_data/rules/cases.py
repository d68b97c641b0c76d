"""Rule unit tests: hand-written documents (feature activations + metadata) and the outcome each rule must give.

A CASES.yaml beside a rule pack::

    cases:
      - name: English insult is flagged
        meta: {lang: en, source: forum}          # metadata fields the rules read
        features: {insult: 2.5, f77: {act: 0.4, count: 3}}   # by id or by the rule file's names; absent = 0
        n_positions: 20                           # optional (default 16; rate() divides by it)
        expect: {toxic: true, toxic_score: 2.5}   # rule → bool, <rule>_score → number (or null)

The cases become a small in-memory store table and go through the same compiler and evaluator as `qscope score`,
so a pack that passes here behaves the same on a real store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qscope_data.errors import UsageError, invalid
from qscope_data.rules.compile import compile_rules
from qscope_data.rules.rulefile import FEATURE_ID, load_rule_file
from qscope_data.store import FEATURE_COLUMNS


class FeatureValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    act: float = Field(ge=0)
    count: int | None = Field(default=None, ge=0)


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    meta: dict[str, Any] = Field(default_factory=dict)
    features: dict[str | int, float | FeatureValue] = Field(default_factory=dict)
    n_positions: int = Field(default=16, ge=0)
    n_tokens: int | None = Field(default=None, ge=0)
    expect: dict[str, bool | float | None] = Field(min_length=1)


class CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    rules: str | None = None  # the rule file these cases test (relative to the cases file); the CLI may name it
    cases: list[Case] = Field(min_length=1)


@dataclass
class Mismatch:
    case: str
    column: str
    expected: Any
    got: Any


@dataclass
class CaseResult:
    n_cases: int
    n_checks: int
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def diff(self) -> str:
        """A readable diff: one line per failed check."""
        lines = [f"{len(self.mismatches)} of {self.n_checks} checks failed:"]
        for m in self.mismatches:
            lines.append(f"  case {m.case!r}: {m.column}: expected {m.expected!r}, got {m.got!r}")
        return "\n".join(lines)


def load_cases(path: str | Path) -> CaseFile:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: cases file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    try:
        return CaseFile.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, str(path)) from None


def _feature_id(key: str | int, names: dict[str, int], path: Path, case: str, d_sae: int | None) -> int:
    if isinstance(key, int):
        fid = key
    elif m := FEATURE_ID.match(key):
        fid = int(m.group(1))
    elif key in names:
        fid = names[key]
    else:
        raise UsageError(f"{path}: case {case!r}: unknown feature {key!r} (not f<id> and not in the rule file's features:)")
    if d_sae is not None and fid >= d_sae:
        raise UsageError(f"{path}: case {case!r}: feature id {fid} is out of range (d_sae = {d_sae})")
    return fid


def case_table(cases: CaseFile, names: dict[str, int], path: Path, d_sae: int | None) -> pl.DataFrame:
    """The cases as store rows (the document-table schema plus their metadata columns)."""
    seen: set[str] = set()
    for case in cases.cases:
        if case.name in seen:
            raise UsageError(f"{path}: two cases are named {case.name!r}")
        seen.add(case.name)
    rows: dict[str, list[Any]] = {c: [] for c in FEATURE_COLUMNS}
    meta_keys = list(dict.fromkeys(k for c in cases.cases for k in c.meta))
    for key in meta_keys:
        if key in FEATURE_COLUMNS and key not in ("n_tokens", "n_positions"):
            raise UsageError(f"{path}: meta key {key!r} is a store column the cases fill in themselves")
    meta: dict[str, list[Any]] = {k: [] for k in meta_keys if k not in ("n_tokens", "n_positions")}
    for case in cases.cases:
        feats: dict[int, tuple[float, int]] = {}
        for key, value in case.features.items():
            fid = _feature_id(key, names, path, case.name, d_sae)
            act, count = (value, None) if isinstance(value, (int, float)) else (value.act, value.count)
            if act < 0:
                raise UsageError(f"{path}: case {case.name!r}: activation of {key!r} is negative")
            if act > 0 or (count or 0) > 0:
                feats[fid] = (float(act), int(count if count is not None else 1))
        ids = sorted(feats)
        rows["doc_id"].append(case.name)
        n_positions = int(case.meta.get("n_positions", case.n_positions))
        rows["n_positions"].append(n_positions)
        rows["n_tokens"].append(int(case.meta.get("n_tokens", case.n_tokens if case.n_tokens is not None else n_positions + 1)))
        rows["feature_ids"].append(ids)
        rows["max_acts"].append([feats[i][0] for i in ids])
        rows["fire_counts"].append([feats[i][1] for i in ids])
        for k in meta:
            meta[k].append(case.meta.get(k))
    schema = {"doc_id": pl.String, "n_tokens": pl.Int32, "n_positions": pl.Int32, "feature_ids": pl.List(pl.Int32),
              "max_acts": pl.List(pl.Float32), "fire_counts": pl.List(pl.Int32)}
    table = pl.DataFrame(rows, schema=schema)
    for k, values in meta.items():
        try:
            table = table.with_columns(pl.Series(k, values, strict=True))
        except Exception as exc:
            raise UsageError(f"{path}: meta field {k!r} mixes value types across cases: {values}") from exc
    if "lang" not in table.columns:  # rules with `languages:` need the column; cases that omit it have no language
        table = table.with_columns(pl.lit(None, dtype=pl.String).alias("lang"))
    return table


def _same(expected: Any, got: Any) -> bool:
    if expected is None or got is None:
        return expected is None and got is None
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(expected, bool) and isinstance(got, bool) and expected == got
    return math.isclose(float(expected), float(got), rel_tol=1e-6, abs_tol=1e-6)


def run_cases(rules_path: str | Path | None, cases_path: str | Path) -> CaseResult:
    """Evaluate every case with the rule file and compare with the expectations."""
    cases_path = Path(cases_path)
    cases = load_cases(cases_path)
    if rules_path is None:
        if cases.rules is None:
            raise UsageError(f"{cases_path}: name the rule file (argument, or `rules:` in the cases file)")
        rules_path = cases_path.parent / cases.rules
    rule_file = load_rule_file(rules_path)
    d_sae = rule_file.header.d_sae
    table = case_table(cases, rule_file.features, cases_path, d_sae)
    program = compile_rules([rule_file], table.schema, store_d_sae=None)
    outcome = program.evaluate(table)
    columns = set(program.output_columns())
    mismatches: list[Mismatch] = []
    n_checks = 0
    for i, case in enumerate(cases.cases):
        row = outcome.row(i, named=True)
        for column, expected in case.expect.items():
            if column not in columns or column in ("doc_id", "lang"):
                raise UsageError(f"{cases_path}: case {case.name!r} expects {column!r}, which is not a rule or a rule's score")
            n_checks += 1
            got = row[column]
            if column.endswith("_score") and isinstance(expected, bool):
                raise UsageError(f"{cases_path}: case {case.name!r}: {column} is a number, not true/false")
            if not column.endswith("_score") and not isinstance(expected, bool):
                raise UsageError(f"{cases_path}: case {case.name!r}: {column} is true/false, not {expected!r}")
            if not _same(expected, got):
                mismatches.append(Mismatch(case.name, column, expected, got))
    return CaseResult(len(cases.cases), n_checks, mismatches)
