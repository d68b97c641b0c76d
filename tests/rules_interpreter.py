"""Test-only reference semantics of the rule language: a plain-Python interpreter walking the parser's AST over
one row at a time, and a hypothesis strategy for random well-typed expression trees.

It shares nothing with the polars compiler but the AST, so agreement between the two is evidence both are right.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from qscope_data.rules.parser import Arith, Bool, Call, Compare, In, Logic, Name, Neg, Node, Not, Num, Str

FEATURE_RE = re.compile(r"^f(\d+)$")


class Row:
    """One document: {feature id: (act, count)}, n_positions and metadata fields."""

    def __init__(self, features: dict[int, tuple[float, int]], n_positions: int, fields: dict[str, Any]):
        self.features, self.n_positions, self.fields = features, n_positions, fields


def interpret(node: Node, row: Row, names: dict[str, int]) -> Any:
    def fid(arg: Node) -> int:
        assert isinstance(arg, Name)
        m = FEATURE_RE.match(arg.name)
        return int(m.group(1)) if m else names[arg.name]

    def act(f: int) -> float:
        return float(row.features.get(f, (0.0, 0))[0])

    def count(f: int) -> float:
        return float(row.features.get(f, (0.0, 0))[1])

    def ev(n: Node) -> Any:
        if isinstance(n, (Num, Str, Bool)):
            return n.value
        if isinstance(n, Name):
            v = row.fields[n.name]
            if n.name in BOOL_FIELDS:
                return bool(v) if v is not None else False  # a null boolean field reads false
            if isinstance(v, (int, float)):
                return float(v)
            return v
        if isinstance(n, Call):
            ids = [fid(a) for a in n.args[:1]] if n.func in ("act", "count", "rate", "fires") else [fid(a) for a in n.args]
            if n.func == "act":
                return act(ids[0])
            if n.func == "count":
                return count(ids[0])
            if n.func == "rate":
                return count(ids[0]) / row.n_positions if row.n_positions > 0 else 0.0
            if n.func == "fires":
                if len(n.args) == 1:
                    return ids[0] in row.features
                eps = ev(n.args[1])
                return eps is not None and act(ids[0]) > eps
            if n.func == "any_fires":
                return any(f in row.features for f in ids)
            if n.func == "all_fires":
                return all(f in row.features for f in ids)
            if n.func == "n_fires":
                total = 0.0
                for f in ids:
                    total = total + (1.0 if f in row.features else 0.0)
                return total
            if n.func == "max_act":
                return max(act(f) for f in ids)
            if n.func == "sum_act":
                total = act(ids[0])
                for f in ids[1:]:
                    total = total + act(f)
                return total
            raise AssertionError(n.func)
        if isinstance(n, Neg):
            v = ev(n.operand)
            return None if v is None else -v
        if isinstance(n, Not):
            return not ev(n.operand)
        if isinstance(n, Logic):
            left, right = ev(n.left), ev(n.right)
            return (left and right) if n.op == "and" else (left or right)
        if isinstance(n, Arith):
            left, right = ev(n.left), ev(n.right)
            if left is None or right is None:
                return None
            if n.op == "+":
                return left + right
            if n.op == "-":
                return left - right
            if n.op == "*":
                return left * right
            return 0.0 if right == 0 else left / right
        if isinstance(n, Compare):
            left, right = ev(n.left), ev(n.right)
            if left is None or right is None:
                return False
            return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right,
                    "==": left == right, "!=": left != right}[n.op]
        if isinstance(n, In):
            v = ev(n.operand)
            if v is None:
                return False
            member = v in [x.value for x in n.values]
            return (not member) if n.negated else member
        raise AssertionError(type(n))

    return ev(node)


# --- random expressions ------------------------------------------------------------------------------------------

FEATURE_POOL = [0, 1, 2, 3, 5, 8]
FEATURE_NAMES = {"alpha": 2, "beta": 7}  # 7 never appears in stores: an always-absent named feature
NUM_FIELDS = ["n_tokens", "weight"]  # weight: float with nulls
STR_FIELDS = ["lang"]  # with nulls
BOOL_FIELDS = ["flag"]  # with nulls
LITERALS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 10.0, 0.25, 4.0]
LANGS = ["en", "de", "zh"]

features = st.sampled_from([f"f{i}" for i in FEATURE_POOL] + list(FEATURE_NAMES) + ["f9"])
num_literal = st.sampled_from(LITERALS).map(lambda v: Num(v))


def _feature_call(func: str) -> st.SearchStrategy[Node]:
    return features.map(lambda f: Call(func, (Name(f),)))


def _aggregate(func: str) -> st.SearchStrategy[Node]:
    return st.lists(features, min_size=1, max_size=4).map(lambda fs: Call(func, tuple(Name(f) for f in fs)))


num_leaf = st.one_of(
    num_literal,
    _feature_call("act"), _feature_call("count"), _feature_call("rate"),
    _aggregate("n_fires"), _aggregate("max_act"), _aggregate("sum_act"),
    st.sampled_from(NUM_FIELDS).map(Name),
)


num_exprs = st.recursive(
    num_leaf,
    lambda sub: st.one_of(
        sub.map(Neg),
        st.tuples(st.sampled_from("+-*/"), sub, sub).map(lambda t: Arith(t[0], t[1], t[2])),
    ),
    max_leaves=5,
)

bool_leaf = st.one_of(
    st.booleans().map(Bool),
    _feature_call("fires"),
    st.tuples(features, num_literal).map(lambda t: Call("fires", (Name(t[0]), t[1]))),
    _aggregate("any_fires"), _aggregate("all_fires"),
    st.sampled_from(BOOL_FIELDS).map(Name),
    st.tuples(st.sampled_from(["==", "!="]), st.sampled_from(LANGS)).map(lambda t: Compare(t[0], Name("lang"), Str(t[1]))),
    st.tuples(st.lists(st.sampled_from(LANGS), max_size=3), st.booleans()).map(
        lambda t: In(Name("lang"), tuple(Str(x) for x in t[0]), t[1])
    ),
    st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), num_exprs, num_exprs).map(lambda t: Compare(*t)),
    # boundary cases: a feature's value against the values stores actually hold (equality is common here)
    st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.sampled_from(["act", "count"]), features,
              st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])).map(lambda t: Compare(t[0], Call(t[1], (Name(t[2]),)), Num(t[3]))),
    st.tuples(num_exprs, st.lists(num_literal, max_size=3), st.booleans()).map(lambda t: In(t[0], tuple(t[1]), t[2])),
)

bool_exprs = st.recursive(
    bool_leaf,
    lambda sub: st.one_of(
        sub.map(Not),
        st.tuples(st.sampled_from(["and", "or"]), sub, sub).map(lambda t: Logic(t[0], t[1], t[2])),
    ),
    max_leaves=6,
)
