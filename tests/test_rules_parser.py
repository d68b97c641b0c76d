"""The expression grammar and rule files: precedence, round trips, and syntax errors that point at file, rule,
line and column with a caret — in every YAML scalar style."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from qscope_data.errors import UsageError
from qscope_data.rules.parser import Arith, Call, Compare, ExprError, In, Logic, Name, Neg, Not, Num, Str, parse, render
from qscope_data.rules.rulefile import load_rule_file

from rules_interpreter import bool_exprs, num_exprs


def test_precedence_and_shapes():
    tree = parse("not fires(f1) and act(f2) + 2 * count(x) >= 3 or lang in ['en', \"de\"]")
    assert isinstance(tree, Logic) and tree.op == "or"
    left = tree.left
    assert isinstance(left, Logic) and left.op == "and"
    assert isinstance(left.left, Not)
    cmp = left.right
    assert isinstance(cmp, Compare) and cmp.op == ">="
    assert cmp.left == Arith("+", Call("act", (Name("f2"),)), Arith("*", Num(2.0), Call("count", (Name("x"),))))
    assert tree.right == In(Name("lang"), (Str("en"), Str("de")), False)
    assert parse("a - -1") == Arith("-", Name("a"), Neg(Num(1.0)))
    assert parse("x not in [1, -2.5e1]") == In(Name("x"), (Num(1.0), Num(-25.0)), True)
    assert parse("fires(f1, .5)") == Call("fires", (Name("f1"), Num(0.5)))
    assert parse("'it\\'s' == s") == Compare("==", Str("it's"), Name("s"))
    assert parse("android and orange") == Logic("and", Name("android"), Name("orange"))  # keywords inside names


@settings(max_examples=150, deadline=None)
@given(tree=bool_exprs)
def test_render_round_trips_conditions(tree):
    assert parse(render(tree)) == tree


@settings(max_examples=100, deadline=None)
@given(tree=num_exprs)
def test_render_round_trips_numbers(tree):
    assert parse(render(tree)) == tree


@pytest.mark.parametrize(
    "text, message, pos",
    [
        ("fires(f1", "expected ')'", 8),
        ("act(f1) >", "expected a value", 9),
        ("a b", "unexpected 'b'", 2),
        ("lang in en", "expected '['", 8),
        ("x == $", "unexpected character '$'", 5),
        ("", "empty expression", 0),
        ("fires(f1,)", "unexpected ')'", 9),
        ("(a or b", "expected ')'", 7),
    ],
)
def test_syntax_errors_have_offsets(text, message, pos):
    with pytest.raises(ExprError) as exc:
        parse(text)
    assert message in exc.value.message
    assert exc.value.pos == pos


def _error(tmp_path, body: str) -> str:
    path = tmp_path / "pack.yaml"
    path.write_text(body)
    with pytest.raises(UsageError) as exc:
        load_rule_file(path)
    return str(exc.value)


def _caret_column(message: str) -> int:
    caret = message.splitlines()[-1]
    return caret.index("^") - 4  # caret_block indents by four spaces


def test_error_in_plain_scalar_points_at_file_position(tmp_path):
    msg = _error(tmp_path, "rules:\n  - name: ok\n    when: fires(f1)\n  - name: broken\n    when: fires(f1) and and fires(f2)\n")
    first = msg.splitlines()[0]
    assert first.startswith(f"{tmp_path / 'pack.yaml'}:5:25: rule 'broken', when: syntax error: unexpected 'and'"), first
    assert msg.splitlines()[1] == "        when: fires(f1) and and fires(f2)"
    assert _caret_column(msg) == 24


def test_error_in_quoted_scalar(tmp_path):
    msg = _error(tmp_path, 'rules:\n  - {name: q, when: "lang == \\"en\\" and ?"}\n')
    col = 'rules:\n  - {name: q, when: "lang == \\"en\\" and ?"}'.splitlines()[1].index("?") + 1
    assert f":2:{col}: rule 'q', when: syntax error: unexpected character '?'" in msg.splitlines()[0]
    assert msg.splitlines()[1][4:][_caret_column(msg)] == "?"


def test_error_in_block_scalar(tmp_path):
    body = "rules:\n  - name: multi\n    when: |\n      fires(f1)\n        or fires(f2\n    action: drop\n"
    msg = _error(tmp_path, body)
    assert ":5:20: rule 'multi', when: syntax error: expression ends early; expected ')'" in msg.splitlines()[0]
    assert msg.splitlines()[1] == "    " + "        or fires(f2"
    assert _caret_column(msg) == len("        or fires(f2")


def test_error_in_folded_scalar_and_score(tmp_path):
    body = "rules:\n  - name: folded\n    when: >\n      fires(f1)\n      or act(f2) >\n    action: drop\n"
    msg = _error(tmp_path, body)
    assert ":5:19: rule 'folded', when: syntax error: expression ends early" in msg.splitlines()[0]
    msg = _error(tmp_path, "rules:\n  - name: s\n    when: fires(f1)\n    score: act(f1) *\n")
    assert ":4:21: rule 's', score:" in msg.splitlines()[0]  # just past the '*'
    assert _caret_column(msg) == len("    score: act(f1) *")


def test_structural_errors_name_file_rule_and_line(tmp_path):
    msg = _error(tmp_path, "rules:\n  - {name: x, when: 'fires(f1)'}\n  - {name: x, when: 'fires(f2)'}\n")
    assert "pack.yaml:3: rule 'x' is defined twice (first at line 2)" in msg
    msg = _error(tmp_path, "rules:\n  - name: x\n    when: fires(f1)\n    action: delete\n")
    assert "pack.yaml:4: rule 'x': rules.0.action" in msg and "drop" in msg
    msg = _error(tmp_path, "rules:\n  - name: x\n    wen: fires(f1)\n")
    assert "rule 'x':" in msg and "unknown key 'wen'" in msg
    msg = _error(tmp_path, "rules:\n  - name: bad-name\n    when: fires(f1)\n")
    assert "must be an identifier" in msg
    msg = _error(tmp_path, "rules: [\n")
    assert "pack.yaml:2:1: not valid YAML" in msg
    msg = _error(tmp_path, "features: {f12: 3}\nrules:\n  - {name: x, when: 'fires(f1)'}\n")
    assert "feature name 'f12'" in msg


def test_bare_yaml_scalars_stay_expressions(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - name: always\n    when: true\n  - name: number\n    when: 1\n")
    loaded = load_rule_file(path)
    assert loaded.rules[0].model.when == "true"
    assert loaded.rules[1].model.when == "1"
