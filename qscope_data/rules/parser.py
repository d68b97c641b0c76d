"""The rule expression language: a lark grammar, the AST it produces, and a renderer back to text.

Expressions are parsed, never `eval`'d. The AST is the one thing the compiler (→ polars), the rule-case runner and
the tests' reference interpreter all walk, so they cannot disagree about what a rule says.

Grammar, loosest binding first::

    or  >  and  >  not  >  comparison (< <= > >= == !=, in [...], not in [...])  >  + -  >  * /  >  unary -

Atoms: numbers, 'single' or "double" quoted strings, true / false, names (a feature id ``f123``, a feature name
declared in the rule file, or a metadata field), calls ``func(arg, …)``, parentheses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lark import Lark, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

GRAMMAR = r"""
?start: expr

?expr: or_expr
?or_expr: and_expr ("or" and_expr)*       -> or_
?and_expr: not_expr ("and" not_expr)*     -> and_
?not_expr: "not" not_expr                  -> not_
         | cmp_expr
?cmp_expr: sum_expr
         | sum_expr CMP_OP sum_expr        -> compare
         | sum_expr "in" list_lit          -> in_
         | sum_expr "not" "in" list_lit    -> not_in
?sum_expr: prod_expr
         | sum_expr PLUS prod_expr         -> arith
         | sum_expr NEG prod_expr          -> arith
?prod_expr: unary
          | prod_expr MUL_OP unary         -> arith
?unary: NEG unary                          -> neg
      | atom
?atom: NUMBER                              -> number
     | STRING                              -> string
     | "true"                              -> true
     | "false"                             -> false
     | NAME "(" [expr ("," expr)*] ")"     -> call
     | NAME                                -> name
     | "(" expr ")"

list_lit: LBRACKET [literal ("," literal)*] "]"
literal: NUMBER                            -> number
       | NEG NUMBER                        -> neg_number
       | STRING                            -> string

CMP_OP: "<=" | ">=" | "==" | "!=" | "<" | ">"
PLUS: "+"
MUL_OP: "*" | "/"
NEG: "-"
LBRACKET: "["
NUMBER: /(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/
STRING: /"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'/
NAME: /(?!(?:and|or|not|in|true|false)(?![A-Za-z0-9_]))[A-Za-z_][A-Za-z0-9_]*/

%import common.WS
%ignore WS
"""

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})


# --- AST ---------------------------------------------------------------------------------------------------------
# `pos`/`end` are character offsets into the expression text (for error carets); they take no part in equality.


@dataclass(frozen=True)
class Node:
    pos: int = field(default=0, compare=False, kw_only=True)
    end: int = field(default=0, compare=False, kw_only=True)


@dataclass(frozen=True)
class Num(Node):
    value: float


@dataclass(frozen=True)
class Str(Node):
    value: str


@dataclass(frozen=True)
class Bool(Node):
    value: bool


@dataclass(frozen=True)
class Name(Node):
    """An identifier: a feature id (f123), a declared feature name, or a metadata field — resolved by the compiler."""

    name: str


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Neg(Node):
    operand: Node


@dataclass(frozen=True)
class Not(Node):
    operand: Node


@dataclass(frozen=True)
class Arith(Node):
    op: str  # + - * /
    left: Node
    right: Node


@dataclass(frozen=True)
class Compare(Node):
    op: str  # < <= > >= == !=
    left: Node
    right: Node


@dataclass(frozen=True)
class In(Node):
    operand: Node
    values: tuple[Num | Str, ...]
    negated: bool = False


@dataclass(frozen=True)
class Logic(Node):
    op: str  # and / or
    left: Node
    right: Node


class ExprError(Exception):
    """A problem at a character offset of an expression; the rule loader turns it into file:line:column + caret."""

    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.message = message
        self.pos = pos


# --- parsing -----------------------------------------------------------------------------------------------------

_PARSER = Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _unquote(raw: str) -> str:
    body, out, i = raw[1:-1], [], 0
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _span(meta_or_token) -> dict[str, int]:
    """Offsets of a token or a rule's meta (both carry start_pos/end_pos; an empty meta has none)."""
    return {"pos": getattr(meta_or_token, "start_pos", 0) or 0, "end": getattr(meta_or_token, "end_pos", 0) or 0}


@v_args(meta=True)
class _ToAST(Transformer):
    def number(self, meta, children):
        tok = children[0]
        return Num(float(tok), **_span(tok))

    def neg_number(self, meta, children):
        neg, tok = children
        return Num(-float(tok), pos=neg.start_pos, end=tok.end_pos)

    def string(self, meta, children):
        tok = children[0]
        return Str(_unquote(str(tok)), **_span(tok))

    def true(self, meta, children):
        return Bool(True, **_span(meta))

    def false(self, meta, children):
        return Bool(False, **_span(meta))

    def name(self, meta, children):
        tok = children[0]
        return Name(str(tok), **_span(tok))

    def call(self, meta, children):
        func, *args = children
        return Call(str(func), tuple(a for a in args if a is not None), **_span(meta))

    def neg(self, meta, children):
        _, operand = children
        return Neg(operand, **_span(meta))

    def not_(self, meta, children):
        return Not(children[0], **_span(meta))

    def arith(self, meta, children):
        left, op, right = children
        return Arith(str(op), left, right, **_span(meta))

    def compare(self, meta, children):
        left, op, right = children
        return Compare(str(op), left, right, **_span(meta))

    def in_(self, meta, children):
        return In(children[0], children[1], False, **_span(meta))

    def not_in(self, meta, children):
        return In(children[0], children[1], True, **_span(meta))

    def list_lit(self, meta, children):
        return tuple(c for c in children[1:] if c is not None)

    def and_(self, meta, children):
        return _chain("and", children, meta)

    def or_(self, meta, children):
        return _chain("or", children, meta)


LEFT_CHAIN_MAX = 64  # terms of one and/or chain kept left-associative; a longer chain is built balanced


def _chain(op: str, terms: list, meta) -> Node:
    """`a op b op c …` as Logic nodes, without recursion: left-associative (as written) up to LEFT_CHAIN_MAX terms,
    balanced beyond, so a flat OR of thousands of features nests only log2(n) deep (and/or are associative)."""
    def join(left: Node, right: Node) -> Node:
        return Logic(op, left, right, pos=left.pos, end=right.end)

    if len(terms) <= LEFT_CHAIN_MAX:
        node = terms[0]
        for term in terms[1:]:
            node = join(node, term)
    else:
        level = list(terms)
        while len(level) > 1:
            level = [join(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        node = level[0]
    return replace(node, **_span(meta))  # the whole chain's node spans all of it, parentheses included


_PUNCT = {"RPAR": "')'", "LBRACKET": "'['", "RSQB": "']'", "LPAR": "'('"}
_OPERATORS = {"CMP_OP", "PLUS", "MUL_OP", "AND", "OR"}


def _expected(names: set[str]) -> str:
    """Say what could come next in words ("a value", "an operator", "')'") instead of lark's token names."""
    words: list[str] = []
    if "NAME" in names:
        words.append("a value")
    elif names & {"NUMBER", "STRING"}:
        words.append("a number or a string")
    if names & _OPERATORS:
        words.append("an operator")
    words += [_PUNCT[n] for n in ("RPAR", "LBRACKET", "RSQB") if n in names and not (n == "RPAR" and names & _OPERATORS)]
    if not words:
        words = sorted(n.lower() for n in names)
    return " or ".join(words)


def parse(text: str) -> Node:
    """Parse one expression; raise ExprError (message + offset) on a syntax error."""
    if not text or not text.strip():
        raise ExprError("empty expression", 0)
    try:
        tree = _PARSER.parse(text)
    except UnexpectedCharacters as exc:
        raise ExprError(f"syntax error: unexpected character {text[exc.pos_in_stream]!r}", exc.pos_in_stream) from None
    except UnexpectedToken as exc:
        tok = exc.token
        if tok.type == "$END":
            raise ExprError(f"syntax error: expression ends early; expected {_expected(exc.expected)}", len(text)) from None
        raise ExprError(
            f"syntax error: unexpected {str(tok)!r}; expected {_expected(exc.expected)}", tok.start_pos or 0
        ) from None
    except UnexpectedEOF as exc:
        raise ExprError(f"syntax error: expression ends early; expected {_expected(set(exc.expected))}", len(text)) from None
    except UnexpectedInput as exc:  # pragma: no cover - lark's other input errors
        raise ExprError(f"syntax error: {exc}", getattr(exc, "pos_in_stream", 0) or 0) from None
    return _ToAST().transform(tree)


# --- rendering ---------------------------------------------------------------------------------------------------

_PRECEDENCE: dict[type, int] = {Not: 2, Compare: 3, In: 3, Neg: 6}


def _prec(node: Node) -> int:
    if isinstance(node, Logic):
        return 0 if node.op == "or" else 1
    if isinstance(node, Arith):
        return 4 if node.op in "+-" else 5
    return _PRECEDENCE.get(type(node), 7)


def _fmt_num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _fmt_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def render(node: Node) -> str:
    """Text that parses back to the same AST (fully parenthesised only where precedence needs it)."""

    def wrap(child: Node, min_prec: int) -> str:
        text = render(child)
        return f"({text})" if _prec(child) < min_prec else text

    if isinstance(node, Num):
        return f"(-{_fmt_num(-node.value)})" if node.value < 0 else _fmt_num(node.value)
    if isinstance(node, Str):
        return _fmt_str(node.value)
    if isinstance(node, Bool):
        return "true" if node.value else "false"
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Call):
        return f"{node.func}({', '.join(render(a) for a in node.args)})"
    if isinstance(node, Neg):
        return f"-{wrap(node.operand, 6)}"
    if isinstance(node, Not):
        return f"not {wrap(node.operand, 2)}"
    if isinstance(node, Arith):
        p = _prec(node)
        return f"{wrap(node.left, p)} {node.op} {wrap(node.right, p + 1)}"
    if isinstance(node, Compare):
        return f"{wrap(node.left, 4)} {node.op} {wrap(node.right, 4)}"
    if isinstance(node, In):
        items = ", ".join(_fmt_num(v.value) if isinstance(v, Num) else _fmt_str(v.value) for v in node.values)
        return f"{wrap(node.operand, 4)} {'not in' if node.negated else 'in'} [{items}]"
    if isinstance(node, Logic):
        p = _prec(node)
        return f"{wrap(node.left, p)} {node.op} {wrap(node.right, p + 1)}"
    raise TypeError(f"not an expression node: {node!r}")


def walk(node: Node):
    """Every node of the tree, parents first."""
    yield node
    if isinstance(node, Call):
        for a in node.args:
            yield from walk(a)
    elif isinstance(node, (Neg, Not)):
        yield from walk(node.operand)
    elif isinstance(node, (Arith, Compare, Logic)):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, In):
        yield from walk(node.operand)
