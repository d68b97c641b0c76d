"""Rule files (YAML): the pydantic model, loading with source positions, and error messages that point at the text.

A rule file::

    sae: {id: Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50, layer: 14, d_sae: 32768}   # optional; else the store's manifest
    features:                                  # optional names for feature ids
      insult: 1234
      slur: {id: 99, description: "ethnic slurs"}
    rules:
      - name: toxic
        when: any_fires(insult, slur) or act(f77) > 2.5
        score: max_act(insult, slur)             # optional
        languages: [en, de]                      # optional: only fires on documents whose lang is listed
        action: drop                             # drop | flag | keep

Every problem names the file, the rule, and (for expressions) the line and column in the YAML file, with a caret
under the offending character — whatever YAML scalar style (plain, quoted, `|`, `>`) the expression was written in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qscope_data import atomic
from qscope_data.errors import UsageError, first_problem, invalid
from qscope_data.rules.parser import KEYWORDS, ExprError, Node, parse

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FEATURE_ID = re.compile(r"^f(\d+)$")
Action = Literal["drop", "flag", "keep"]


class FeatureDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0)
    description: str = ""


class SAEHeader(BaseModel):
    """Which SAE the feature ids refer to. Missing parts come from the store's manifest."""

    model_config = ConfigDict(extra="allow")
    id: str = ""
    layer: int | None = Field(default=None, ge=0)
    d_sae: int | None = Field(default=None, gt=0)


class RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    when: str
    score: str | None = None
    languages: list[str] | None = None
    action: Action = "flag"
    description: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not IDENT.match(v) or v in KEYWORDS:
            raise ValueError(f"rule name {v!r} must be an identifier (letters, digits, _), not a keyword")
        if v.endswith("_score"):
            raise ValueError(f"rule name {v!r} must not end in _score (reserved for score columns)")
        return v


class RuleFileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    description: str = ""
    sae: SAEHeader | None = None
    features: dict[str, int | FeatureDecl] = Field(default_factory=dict)
    rules: list[RuleModel] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def feature_ids(self) -> dict[str, int]:
        return {k: (v if isinstance(v, int) else v.id) for k, v in self.features.items()}


# --- source positions --------------------------------------------------------------------------------------------


@dataclass
class ScalarSource:
    """Where one YAML scalar sits in its file, so an offset inside its (decoded) value maps back to line:column."""

    text: str  # the whole file
    start: int  # index of the scalar's first character (quote / block indicator included)
    end: int
    style: str | None  # None (plain), "'", '"', "|", ">"
    line: int  # 0-based line of the scalar's start

    def locate(self, value: str, offset: int) -> tuple[int, int]:
        """0-based (line, column) in the file of `value[offset]` (or just past the last character at the end)."""
        raw_start = self.start
        if self.style in ("|", ">"):
            nl = self.text.find("\n", self.start)
            raw_start = nl + 1 if nl >= 0 else self.start
        elif self.style in ("'", '"'):
            raw_start = self.start + 1
        raw = self.text[raw_start : self.end]
        ptr = 0
        found_any = False
        for i, ch in enumerate(value[: max(0, min(offset, len(value)))]):
            if ch.isspace():
                continue
            at = raw.find(ch, ptr)
            if at < 0:
                return self._position(self.start)
            ptr, found_any = at + 1, True
        if offset < len(value) and not value[offset].isspace():
            at = raw.find(value[offset], ptr)
            index = raw_start + (at if at >= 0 else ptr)
        else:
            index = raw_start + (ptr if found_any else 0)
        return self._position(index)

    def _position(self, index: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, index)
        col = index - (self.text.rfind("\n", 0, index) + 1)
        return line, col


def caret_block(text: str, line: int, col: int) -> str:
    """The file's line and a caret under column `col` (both 0-based)."""
    lines = text.splitlines() or [""]
    src = lines[line] if 0 <= line < len(lines) else ""
    pad = "".join(c if c == "\t" else " " for c in src[:col])
    return f"    {src}\n    {pad}^"


@dataclass
class LoadedRule:
    """One rule of a file: its model, parsed expressions, and how to point at its text in an error."""

    model: RuleModel
    path: Path
    index: int
    line: int  # 0-based line of the rule's mapping
    when: Node
    score: Node | None
    sources: dict[str, ScalarSource] = field(default_factory=dict)
    file_text: str = ""

    @property
    def name(self) -> str:
        return self.model.name

    def error(self, part: str, exc: ExprError) -> UsageError:
        """A UsageError naming file:line:column, the rule and the part (when / score), with a caret."""
        return UsageError(expr_error_message(self.path, self.file_text, self.name, part, self._value(part), self.sources.get(part), exc))

    def plain_error(self, message: str) -> UsageError:
        return UsageError(f"{self.path}:{self.line + 1}: rule {self.name!r}: {message}")

    def _value(self, part: str) -> str:
        return self.model.when if part == "when" else (self.model.score or "")


def expr_error_message(
    path: Path, file_text: str, rule: str, part: str, value: str, source: ScalarSource | None, exc: ExprError
) -> str:
    if source is not None:
        line, col = source.locate(value, exc.pos)
        return f"{path}:{line + 1}:{col + 1}: rule {rule!r}, {part}: {exc.message}\n{caret_block(file_text, line, col)}"
    # no YAML position (rules built in code): point into the expression itself
    line = value.count("\n", 0, exc.pos)
    col = exc.pos - (value.rfind("\n", 0, exc.pos) + 1)
    return f"{path}: rule {rule!r}, {part} (expression line {line + 1}, column {col + 1}): {exc.message}\n{caret_block(value, line, col)}"


@dataclass
class LoadedRuleFile:
    path: Path
    model: RuleFileModel
    rules: list[LoadedRule]
    sha256: str
    text: str

    @property
    def features(self) -> dict[str, int]:
        return self.model.feature_ids()

    @property
    def header(self) -> SAEHeader:
        return self.model.sae or SAEHeader()


# --- loading -----------------------------------------------------------------------------------------------------


def _mapping_get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _pydantic_message(path: Path, root: yaml.Node, exc: ValidationError) -> UsageError:
    """The shared one-line error (`errors.invalid`), placed at the YAML line (and rule) the problem is in."""
    loc = first_problem(exc).get("loc", ())
    node: yaml.Node | None = root
    for part in loc:
        if node is None:
            break
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode) and part < len(node.value):
            node = node.value[part]
        elif isinstance(part, str):
            node = _mapping_get(node, part) or node
    line = f":{node.start_mark.line + 1}" if node is not None else ""
    rule = ""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules_node = _mapping_get(root, "rules")
        name_node = None
        if isinstance(rules_node, yaml.SequenceNode) and loc[1] < len(rules_node.value):
            name_node = _mapping_get(rules_node.value[loc[1]], "name")
        rule = f": rule {name_node.value!r}" if name_node is not None else f": rule #{loc[1] + 1}"
    return invalid(exc, f"{path}{line}{rule}")


def _expr_source(text: str, node: yaml.Node | None) -> ScalarSource | None:
    if not isinstance(node, yaml.ScalarNode):
        return None
    return ScalarSource(text, node.start_mark.index, node.end_mark.index, node.style, node.start_mark.line)


def load_rule_file(path: str | Path) -> LoadedRuleFile:
    """Read, validate and parse one rule file. Every expression is parsed here; names are resolved at compile time."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: rule file not found")
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or root is None:
        raise UsageError(f"{path}: a rule file is a YAML mapping with a `rules:` list")
    rules_node = _mapping_get(root, "rules")
    # expressions are taken as written (a bare `when: true` or `when: 1` stays text, to be parsed and type-checked)
    if isinstance(rules_node, yaml.SequenceNode) and isinstance(data.get("rules"), list):
        for i, rnode in enumerate(rules_node.value):
            if not isinstance(data["rules"][i], dict):
                continue
            for part in ("when", "score"):
                vnode = _mapping_get(rnode, part)
                if isinstance(vnode, yaml.ScalarNode) and data["rules"][i].get(part) is not None:
                    data["rules"][i][part] = vnode.value
    try:
        model = RuleFileModel.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_message(path, root, exc) from None

    for name in model.features:
        if not IDENT.match(name) or name in KEYWORDS or FEATURE_ID.match(name):
            raise UsageError(f"{path}: feature name {name!r} must be an identifier that is not a keyword or f<id>")

    loaded: list[LoadedRule] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(model.rules):
        rnode = rules_node.value[i] if isinstance(rules_node, yaml.SequenceNode) else None
        line = rnode.start_mark.line if rnode is not None else 0
        if rule.name in seen:
            raise UsageError(f"{path}:{line + 1}: rule {rule.name!r} is defined twice (first at line {seen[rule.name] + 1})")
        seen[rule.name] = line
        sources = {p: s for p in ("when", "score") if (s := _expr_source(text, _mapping_get(rnode, p) if rnode else None))}
        stub = LoadedRule(rule, path, i, line, when=None, score=None, sources=sources, file_text=text)  # type: ignore[arg-type]
        try:
            when = parse(rule.when)
        except ExprError as exc:
            raise stub.error("when", exc) from None
        score = None
        if rule.score is not None:
            try:
                score = parse(rule.score)
            except ExprError as exc:
                raise stub.error("score", exc) from None
        stub.when, stub.score = when, score
        loaded.append(stub)
    return LoadedRuleFile(path, model, loaded, atomic.sha256_bytes(raw), text)


def load_rule_files(paths: list[str | Path]) -> list[LoadedRuleFile]:
    """Load several files; rule names must be unique across all of them (they become output columns)."""
    files = [load_rule_file(p) for p in paths]
    owner: dict[str, Path] = {}
    for f in files:
        for rule in f.rules:
            if rule.name in owner:
                raise rule.plain_error(f"name also used in {owner[rule.name]} (rule names become columns: make them unique)")
            owner[rule.name] = f.path
    return files
