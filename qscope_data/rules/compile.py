"""Compile parsed rules to polars expressions: names resolved, types checked, ids bounded — before any data is read.

Semantics (the reference every other evaluator must match):

* ``act(f)`` the feature's max activation in the document, ``count(f)`` its number of firing positions, ``rate(f)`` =
  count / n_positions (0 when n_positions is 0). A feature absent from a document reads 0 — no null guards needed.
* ``fires(f)``: f is listed in the document's feature_ids (the store lists exactly the features active at some
  aggregated position, so this is act(f) > 0 — and what `rules mine` counts); ``fires(f, eps)`` = act(f) > eps;
  ``any_fires(f, …)``, ``all_fires(f, …)``, ``n_fires(f, …)`` (how many fire), ``max_act(f, …)``, ``sum_act(f, …)``.
* Numbers are float64; ``x / 0`` is 0 (like rate). Strings compare with ``==`` / ``!=`` / ``in``.
* Metadata fields are store columns (lang, source, n_tokens, any pass-through column). A null value makes every
  comparison (and ``in`` / ``not in``) false; a null boolean field reads false; arithmetic on null stays null.

Feature values are gathered once per batch for all referenced features (one pass over the flattened sparse lists,
scattered into dense columns ``__has_<id>`` / ``__act_<id>`` / ``__cnt_<id>``); every rule then reads those columns.
Presence-only rules (``any_fires``, ``fires(f)``) never read the activation lists at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from qscope_data.errors import DataError, UsageError
from qscope_data.rules.parser import (
    Arith,
    Bool,
    Call,
    Compare,
    ExprError,
    In,
    Logic,
    Name,
    Neg,
    Node,
    Not,
    Num,
    Str,
)
from qscope_data.rules.rulefile import FEATURE_ID, LoadedRule, LoadedRuleFile
from qscope_data.store import FEATURE_COLUMNS

Kind = Literal["num", "str", "bool"]
KIND_WORDS = {"num": "a number", "str": "a string", "bool": "a condition (true/false)", "feature": "a feature"}

FEATURE_FUNCS = {"act", "count", "rate", "fires"}
AGGREGATE_FUNCS = {"any_fires", "all_fires", "n_fires", "max_act", "sum_act"}
FUNCTIONS = FEATURE_FUNCS | AGGREGATE_FUNCS
LIST_COLUMNS = {"feature_ids", "max_acts", "fire_counts"}


def has_col(fid: int) -> str:
    return f"__has_{fid}"


def act_col(fid: int) -> str:
    return f"__act_{fid}"


def cnt_col(fid: int) -> str:
    return f"__cnt_{fid}"


def field_kinds(schema: pl.Schema) -> tuple[dict[str, Kind], dict[str, str]]:
    """Usable metadata fields by kind, and unusable columns with their dtype (for a helpful error)."""
    usable: dict[str, Kind] = {}
    unusable: dict[str, str] = {}
    for name, dtype in schema.items():
        if name in LIST_COLUMNS:
            unusable[name] = "the sparse feature lists (use act(), count(), fires() …)"
        elif dtype.is_numeric():
            usable[name] = "num"
        elif dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum)):
            usable[name] = "str"
        elif dtype == pl.Boolean:
            usable[name] = "bool"
        else:
            unusable[name] = str(dtype)
    return usable, unusable


@dataclass
class Scope:
    """What names mean for the rules of one file: its feature names, the store's fields, the SAE's width."""

    features: dict[str, int]
    fields: dict[str, Kind]
    unusable: dict[str, str] = field(default_factory=dict)
    d_sae: int | None = None


@dataclass
class Needs:
    """What a compiled program reads: features (presence / activations / counts) and store columns."""

    present: set[int] = field(default_factory=set)
    acts: set[int] = field(default_factory=set)
    counts: set[int] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)


class _Lowering:
    """Type-check and translate one expression; raises ExprError at the offending node's offset."""

    def __init__(self, scope: Scope, needs: Needs):
        self.scope, self.needs = scope, needs

    # -- names -------------------------------------------------------------------------------------------------
    def feature(self, node: Node, func: str) -> int:
        if not isinstance(node, Name):
            raise ExprError(f"{func}() takes a feature (f<id> or a name from features:), not an expression", node.pos)
        m = FEATURE_ID.match(node.name)
        if m:
            fid = int(m.group(1))
        elif node.name in self.scope.features:
            fid = self.scope.features[node.name]
        elif node.name in self.scope.fields:
            raise ExprError(f"{func}() takes a feature, but {node.name!r} is a metadata field", node.pos)
        else:
            raise ExprError(f"unknown feature {node.name!r} (not f<id> and not declared under features:)", node.pos)
        if self.scope.d_sae is not None and fid >= self.scope.d_sae:
            raise ExprError(f"feature id {fid} is out of range: the SAE has d_sae = {self.scope.d_sae}", node.pos)
        return fid

    def name(self, node: Name) -> tuple[Kind, pl.Expr]:
        if FEATURE_ID.match(node.name) or node.name in self.scope.features:
            raise ExprError(
                f"{node.name!r} is a feature, not a value: use act({node.name}), fires({node.name}), count({node.name}) …",
                node.pos,
            )
        if node.name in self.scope.unusable:
            raise ExprError(f"field {node.name!r} cannot be used in a rule: it is {self.scope.unusable[node.name]}", node.pos)
        kind = self.scope.fields.get(node.name)
        if kind is None:
            known = ", ".join(sorted(self.scope.fields)) or "none"
            raise ExprError(f"unknown name {node.name!r}: not a feature and not a store field (fields: {known})", node.pos)
        self.needs.columns.add(node.name)
        col = pl.col(node.name)
        if kind == "num":
            return kind, col.cast(pl.Float64)
        if kind == "str":
            return kind, col.cast(pl.String)
        return kind, col.fill_null(False)

    # -- expressions -------------------------------------------------------------------------------------------
    def expect(self, node: Node, kind: Kind, role: str) -> pl.Expr:
        got, expr = self.lower(node)
        if got != kind:
            raise ExprError(f"{role} must be {KIND_WORDS[kind]}, got {KIND_WORDS[got]}", node.pos)
        return expr

    def act(self, fid: int) -> pl.Expr:
        self.needs.acts.add(fid)
        return pl.col(act_col(fid)).cast(pl.Float64)

    def has(self, fid: int) -> pl.Expr:
        self.needs.present.add(fid)
        return pl.col(has_col(fid))

    def lower(self, node: Node) -> tuple[Kind, pl.Expr]:
        if isinstance(node, Num):
            return "num", pl.lit(node.value, dtype=pl.Float64)
        if isinstance(node, Str):
            return "str", pl.lit(node.value, dtype=pl.String)
        if isinstance(node, Bool):
            return "bool", pl.lit(node.value, dtype=pl.Boolean)
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Neg):
            return "num", -self.expect(node.operand, "num", "the operand of unary '-'")
        if isinstance(node, Not):
            return "bool", ~self.expect(node.operand, "bool", "the operand of 'not'")
        if isinstance(node, Logic):
            left = self.expect(node.left, "bool", f"each side of '{node.op}'")
            right = self.expect(node.right, "bool", f"each side of '{node.op}'")
            return "bool", (left & right) if node.op == "and" else (left | right)
        if isinstance(node, Arith):
            left = self.expect(node.left, "num", f"each side of '{node.op}'")
            right = self.expect(node.right, "num", f"each side of '{node.op}'")
            if node.op == "+":
                return "num", left + right
            if node.op == "-":
                return "num", left - right
            if node.op == "*":
                return "num", left * right
            return "num", (pl.when(left.is_null() | right.is_null()).then(pl.lit(None, dtype=pl.Float64))
                           .when(right == 0).then(pl.lit(0.0, dtype=pl.Float64)).otherwise(left / right))  # null stays null
        if isinstance(node, Compare):
            lk, left = self.lower(node.left)
            rk, right = self.lower(node.right)
            if lk != rk:
                raise ExprError(f"cannot compare {KIND_WORDS[lk]} with {KIND_WORDS[rk]}", node.pos)
            if lk != "num" and node.op not in ("==", "!="):
                raise ExprError(f"'{node.op}' compares numbers; {KIND_WORDS[lk]} takes only == or !=", node.pos)
            ops = {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right,
                   "==": left == right, "!=": left != right}
            return "bool", ops[node.op].fill_null(False)
        if isinstance(node, In):
            kind, operand = self.lower(node.operand)
            if kind == "bool":
                raise ExprError("'in' tests a number or a string, not a condition", node.operand.pos)
            for v in node.values:
                vkind = "num" if isinstance(v, Num) else "str"
                if vkind != kind:
                    raise ExprError(f"list item is {KIND_WORDS[vkind]} but the left side is {KIND_WORDS[kind]}", v.pos)
            dtype = pl.Float64 if kind == "num" else pl.String
            values = pl.Series([v.value for v in node.values], dtype=dtype)
            member = operand.is_in(values.implode())
            return "bool", (~member if node.negated else member).fill_null(False)
        raise ExprError(f"unsupported expression {type(node).__name__}", node.pos)  # pragma: no cover

    def call(self, node: Call) -> tuple[Kind, pl.Expr]:
        func, args = node.func, node.args
        if func not in FUNCTIONS:
            raise ExprError(f"unknown function {func!r} (functions: {', '.join(sorted(FUNCTIONS))})", node.pos)
        if func in AGGREGATE_FUNCS:
            if not args:
                raise ExprError(f"{func}() needs at least one feature", node.pos)
            fids = [self.feature(a, func) for a in args]
            if func == "any_fires":
                return "bool", pl.any_horizontal([self.has(f) for f in fids])
            if func == "all_fires":
                return "bool", pl.all_horizontal([self.has(f) for f in fids])
            if func == "max_act":
                return "num", pl.max_horizontal([self.act(f) for f in fids])
            terms = [self.has(f).cast(pl.Float64) for f in fids] if func == "n_fires" else [self.act(f) for f in fids]
            total = terms[0]
            for t in terms[1:]:
                total = total + t
            return "num", total
        if func == "fires":
            if len(args) not in (1, 2):
                raise ExprError("fires() takes a feature and an optional threshold: fires(f, eps)", node.pos)
            fid = self.feature(args[0], func)
            if len(args) == 1:
                return "bool", self.has(fid)
            eps = self.expect(args[1], "num", "the threshold of fires()")
            return "bool", (self.act(fid) > eps).fill_null(False)
        if len(args) != 1:
            raise ExprError(f"{func}() takes exactly one feature", node.pos)
        fid = self.feature(args[0], func)
        if func == "act":
            return "num", self.act(fid)
        self.needs.counts.add(fid)
        count = pl.col(cnt_col(fid)).cast(pl.Float64)
        if func == "count":
            return "num", count
        self.needs.columns.add("n_positions")
        npos = pl.col("n_positions").cast(pl.Float64)
        return "num", pl.when(npos > 0).then(count / npos).otherwise(pl.lit(0.0, dtype=pl.Float64))


@dataclass
class CompiledRule:
    rule: LoadedRule
    when: pl.Expr
    score: pl.Expr | None

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def action(self) -> str:
        return self.rule.model.action

    @property
    def languages(self) -> list[str] | None:
        return self.rule.model.languages


@dataclass
class RuleProgram:
    """All rules of one scoring run, compiled; `evaluate` turns a batch of store rows into rule outcomes."""

    rules: list[CompiledRule]
    needs: Needs
    carry: list[str]  # columns copied to the output beside doc_id (lang when the store has it)

    @property
    def read_columns(self) -> list[str]:
        """The store columns a batch must contain (projection for the scan)."""
        cols = {"doc_id", *self.needs.columns, *self.carry}
        if self.needs.present or self.needs.acts or self.needs.counts:
            cols.add("feature_ids")
        if self.needs.acts:
            cols.add("max_acts")
        if self.needs.counts:
            cols.add("fire_counts")
        if any(r.languages for r in self.rules):
            cols.add("lang")
        order = list(FEATURE_COLUMNS)
        return sorted(cols, key=lambda c: (order.index(c) if c in order else len(order), c))

    def output_columns(self) -> list[str]:
        cols = ["doc_id", *self.carry]
        for r in self.rules:
            cols.append(r.name)
            if r.score is not None:
                cols.append(f"{r.name}_score")
        return cols

    def evaluate(self, batch: pl.DataFrame, *, apply_languages: bool = True) -> pl.DataFrame:
        """doc_id, carried columns, one boolean per rule and `<rule>_score` where defined, for a batch of rows."""
        frame = attach_features(batch, self.needs)
        exprs: list[pl.Expr] = [pl.col("doc_id"), *[pl.col(c) for c in self.carry]]
        rows = pl.repeat(True, pl.len())  # one True per row of the batch
        for r in self.rules:
            in_scope = pl.col("lang").is_in(pl.Series(r.languages, dtype=pl.String).implode()).fill_null(False) if (
                apply_languages and r.languages
            ) else None
            # `& rows` broadcasts a rule made of constants only (`not 0 in []`) to every row of the batch
            when = (rows & r.when).fill_null(False)
            exprs.append((when & in_scope if in_scope is not None else when).alias(r.name))
            if r.score is not None:
                score = pl.when(in_scope if in_scope is not None else rows).then(r.score)
                exprs.append(score.cast(pl.Float64).alias(f"{r.name}_score"))
        if frame.height == 0:  # constant sub-expressions (`0 in [0]`) don't broadcast to 0 rows: type on one null row
            return frame.clear(1).select(exprs).clear()
        return frame.select(exprs)


@dataclass
class Gathered:
    """Dense per-feature arrays for one batch, shaped [len(ids) × rows] so each feature's row is contiguous.

    Values keep the store's types (float32 activations, int32 counts); the compiled expressions widen them to
    float64 column by column, which is exact and halves the memory the scatter touches."""

    ids: list[int]
    present: np.ndarray | None = None  # bool
    acts: np.ndarray | None = None  # float32, 0 where absent
    counts: np.ndarray | None = None  # int32, 0 where absent


def _list_array(batch: pl.DataFrame, column: str) -> pa.Array:
    arr = batch[column].to_arrow()
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _flat(lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets from 0) of a list array, zero-copy from its Arrow buffers (the `offsets` property copies)."""
    width = np.int64 if pa.types.is_large_list(lists.type) else np.int32
    offsets = np.frombuffer(lists.buffers()[1], dtype=width)[lists.offset : lists.offset + len(lists) + 1]
    values = lists.values.to_numpy(zero_copy_only=False)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def gather(batch: pl.DataFrame, ids: list[int], *, present: bool = False, acts: bool = False, counts: bool = False) -> Gathered:
    """One pass over the flattened sparse lists: keep the entries whose id is wanted and scatter them into dense
    [ids × rows] arrays. Cost O(total list length) per batch, however many rules read the features."""
    ids = sorted(set(ids))
    n = batch.height
    out = Gathered(ids)
    shape = (len(ids), n)
    if present:
        out.present = np.zeros(shape, dtype=bool)
    if acts:
        out.acts = np.zeros(shape, dtype=np.float32)
    if counts:
        out.counts = np.zeros(shape, dtype=np.int32)
    if not ids or n == 0:
        return out
    flat_ids, offsets = _flat(_list_array(batch, "feature_ids"))
    # id → slot lookup table; the last entry (-1) catches every id above the largest wanted one
    lookup = np.full(ids[-1] + 2, -1, dtype=np.int32)
    lookup[np.asarray(ids)] = np.arange(len(ids), dtype=np.int32)
    unsigned = flat_ids.view(np.uint32 if flat_ids.dtype.itemsize == 4 else np.uint64)  # a negative id → huge → caught
    slots = lookup[np.minimum(unsigned, ids[-1] + 1)]
    kept = np.flatnonzero(slots >= 0)
    rows = np.searchsorted(offsets, kept, side="right") - 1
    cell = slots[kept].astype(np.int64) * n + rows  # flat index into a [ids × rows] array
    if out.present is not None:
        out.present.reshape(-1)[cell] = True
    for column, target in (("max_acts", out.acts), ("fire_counts", out.counts)):
        if target is None:
            continue
        flat, value_offsets = _flat(_list_array(batch, column))
        if not np.array_equal(offsets, value_offsets):
            raise DataError(f"store rows whose feature_ids and {column} differ in length")
        values = flat[kept]
        if column == "max_acts":
            values = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0)
        target.reshape(-1)[cell] = values
    return out


def feature_matrix(batch: pl.DataFrame, ids: list[int], value: str = "max_acts") -> np.ndarray:
    """Dense float64 [rows × ids] of `max_acts` (or `fire_counts`), 0 where absent; ids ascending and unique."""
    g = gather(batch, ids, acts=value == "max_acts", counts=value == "fire_counts")
    result = g.acts if value == "max_acts" else g.counts
    assert result is not None
    return result.T.astype(np.float64)


def attach_features(batch: pl.DataFrame, needs: Needs) -> pl.DataFrame:
    """Add the dense columns `__has_<id>` / `__act_<id>` / `__cnt_<id>` a compiled program reads."""
    ids = sorted(needs.present | needs.acts | needs.counts)
    if not ids:
        return batch
    g = gather(batch, ids, present=bool(needs.present), acts=bool(needs.acts), counts=bool(needs.counts))
    columns: list[pl.Series] = []
    for j, fid in enumerate(g.ids):
        if fid in needs.present and g.present is not None:
            columns.append(pl.Series(has_col(fid), g.present[j]))
        if fid in needs.acts and g.acts is not None:
            columns.append(pl.Series(act_col(fid), g.acts[j]))
        if fid in needs.counts and g.counts is not None:
            columns.append(pl.Series(cnt_col(fid), g.counts[j]))
    return batch.with_columns(columns)


def compile_expression(node: Node, scope: Scope, needs: Needs) -> tuple[Kind, pl.Expr]:
    """Type-check and lower one expression (ExprError on failure). For callers that compile ad-hoc expressions."""
    return _Lowering(scope, needs).lower(node)


def resolve_d_sae(file: LoadedRuleFile, store_d_sae: int | None) -> int | None:
    """The SAE width the file's ids are bounded by: its header's, checked against the store's when both exist."""
    header = file.header.d_sae
    if header is not None and store_d_sae is not None and header != store_d_sae:
        raise UsageError(
            f"{file.path}: the rule file's SAE has d_sae = {header} but the store's has {store_d_sae}: "
            "its feature ids refer to a different SAE"
        )
    return header if header is not None else store_d_sae


def compile_rules(files: list[LoadedRuleFile], schema: pl.Schema, *, store_d_sae: int | None = None) -> RuleProgram:
    """Compile every rule of every file against a store schema. All name, type and id errors surface here."""
    fields, unusable = field_kinds(schema)
    if "doc_id" not in schema:
        raise DataError("the store has no doc_id column")
    needs = Needs()
    compiled: list[CompiledRule] = []
    for f in files:
        scope = Scope(f.features, fields, unusable, resolve_d_sae(f, store_d_sae))
        if scope.d_sae is not None:
            for fname, fid in f.features.items():
                if fid >= scope.d_sae:
                    raise UsageError(f"{f.path}: feature {fname!r} = {fid} is out of range: the SAE has d_sae = {scope.d_sae}")
        clash = sorted(set(f.features) & set(fields))
        if clash:
            raise UsageError(f"{f.path}: feature name {clash[0]!r} is also a store field; rename the feature")
        for rule in f.rules:
            lowering = _Lowering(scope, needs)
            try:
                when = lowering.expect(rule.when, "bool", "`when`")
            except ExprError as exc:
                raise rule.error("when", exc) from None
            score = None
            if rule.score is not None:
                try:
                    score = lowering.expect(rule.score, "num", "`score`")
                except ExprError as exc:
                    raise rule.error("score", exc) from None
            if rule.model.languages and "lang" not in schema:
                raise rule.plain_error("has `languages:` but the store has no lang column")
            if rule.name in ("doc_id", "lang"):
                raise rule.plain_error(f"the name {rule.name!r} is reserved for an output column")
            compiled.append(CompiledRule(rule, when, score))
    carry = ["lang"] if "lang" in schema else []
    return RuleProgram(compiled, needs, carry)
