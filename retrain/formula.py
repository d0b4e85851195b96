"""A multi grader's `calculate_output`: arithmetic over its graders' rewards, parsed once, never `eval`ed.

OpenAI's formula language: numbers, the sub-graders' names, `+ - * /`, `^` for powers, parentheses and
the functions min, max, abs, floor, ceil, exp, sqrt, log. `parse(text, names)` checks a formula against
those rules (FormulaError says what is wrong); `evaluate(tree, values)` computes it for one answer.
"""

from __future__ import annotations

import ast
import math
import operator

FUNCTIONS = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
    "sqrt": math.sqrt, "log": math.log,
}  # fmt: skip
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.Pow: operator.pow}  # fmt: skip
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class FormulaError(ValueError):
    """A formula outside the language, or one that cannot be computed for these rewards."""


def parse(text: str, names: set[str]) -> ast.Expression:
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval")
    except SyntaxError as error:
        raise FormulaError(f"{text!r} is not a formula ({error.msg})") from None
    for node in ast.walk(tree):
        _check(node, names)
    return tree


def _check(node: ast.AST, names: set[str]) -> None:
    if isinstance(node, ast.Expression | ast.Load) or type(node) in BINARY or type(node) in UNARY:
        return
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        if type(node.op) not in BINARY and type(node.op) not in UNARY:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed: use + - * / ^")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"{node.value!r} is not a number")
        return
    if isinstance(node, ast.Name):
        if node.id not in names and node.id not in FUNCTIONS:
            raise FormulaError(f"{node.id!r} names no grader (graders: {', '.join(sorted(names))})")
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise FormulaError(f"only {', '.join(FUNCTIONS)} may be called, with plain arguments")
        return
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")


def evaluate(tree: ast.Expression, values: dict[str, float]) -> float:
    try:
        result = float(_value(tree.body, values))
    except (ArithmeticError, ValueError, TypeError) as error:
        raise FormulaError(f"cannot compute the formula for rewards {values}: {error}") from None
    if not math.isfinite(result):
        raise FormulaError(f"the formula gave {result} for rewards {values}")
    return result


def _value(node: ast.AST, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)](_value(node.left, values), _value(node.right, values))
    if isinstance(node, ast.UnaryOp):
        return UNARY[type(node.op)](_value(node.operand, values))
    assert isinstance(node, ast.Call)  # parse() allowed nothing else
    return FUNCTIONS[node.func.id](*(_value(arg, values) for arg in node.args))
