"""FinQA's program language: parse a program into steps, execute the steps against a table.

A program is a comma-separated sequence of steps ``op(arg1, arg2)``, e.g.
``subtract(5829, 5735), divide(#0, 5735)``. Arguments are numbers (``5829``, ``-3.2``, ``5,829``, ``$ 45``),
percentages (``5%`` → 0.05), constants (``const_100``, ``const_m1`` → -1) or ``#n``, the result of step *n*.
Table operations (``table_max``, ``table_min``, ``table_sum``, ``table_average``) take a row name and ``none``
and reduce the numeric cells of that row.

Semantics follow upstream FinQA's ``eval_program`` (czyssrs/FinQA, code/evaluate/evaluate.py): the same
number parsing (``str_to_num``: commas dropped, ``%`` divides by 100, ``const_m1`` is -1), ``greater`` gives
``"yes"``/``"no"``, a table row is looked up by its first cell (the last row of that name wins) and every other
cell must parse after ``$`` is removed and anything from ``(`` on is cut (``-32 ( 32 )`` → -32). Upstream
rounds the final value to 5 decimals; here the value is returned unrounded and the metrics compare with a
tolerance (`finlight.finqa.metrics`). Deliberate leniencies, which only make more programs executable:
``$`` is accepted in arguments, a row name may itself contain ``, `` (the last separator splits the
arguments), whitespace inside numbers and around brackets is ignored (some tokenizers decode ``5.93`` as
``5. 93``), and a row name that matches no row exactly is matched ignoring whitespace.

Written by hand because no maintained library implements this small language; upstream's function is a
script, not an importable package.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

ARITHMETIC_OPS = ("add", "subtract", "multiply", "divide", "exp", "greater")
TABLE_OPS = ("table_max", "table_min", "table_sum", "table_average")
OPS = ARITHMETIC_OPS + TABLE_OPS
Value = Union[float, str]  # a number, or "yes" / "no" from greater

_STEP = re.compile(r"\s*([A-Za-z]+(?:\s*_\s*[A-Za-z]+)*)\s*\(([^()]*)\)\s*(,|$)")  # "table _ max" too
_REF = re.compile(r"#\s*(\d+)")


class ProgramError(ValueError):
    """A program that gives no value."""


class ProgramParseError(ProgramError):
    """The text is not a program: not a sequence of ``op(arg1, arg2)`` steps with known ops."""


class ProgramExecutionError(ProgramError):
    """A well-formed program that cannot run: bad number, ``#n`` to no earlier step, missing or non-numeric
    table row, division by zero, a yes/no used as a number, a complex or infinite result."""


@dataclass(frozen=True)
class Step:
    op: str
    arg1: str
    arg2: str

    def __str__(self) -> str:
        return f"{self.op}({self.arg1}, {self.arg2})"


def parse_program(text: str) -> list[Step]:
    """Steps of a program; raises `ProgramParseError` for anything else (including an empty text)."""
    if not isinstance(text, str) or not text.strip():
        raise ProgramParseError("empty program")
    text = text.strip().removesuffix("EOF").strip()
    steps, position = [], 0
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise ProgramParseError(f"not a step at character {position}: {text[position:position + 40]!r}")
        op = re.sub(r"\s+", "", match.group(1)).lower()
        if op not in OPS:
            raise ProgramParseError(f"unknown operation {op!r}")
        steps.append(Step(op, *_split_args(match.group(2), op)))
        position = match.end()
        if match.group(3) == "," and position >= len(text):
            raise ProgramParseError("program ends with a comma")
    return steps


def _split_args(args: str, op: str) -> tuple[str, str]:
    parts = [p.strip() for p in re.split(r"\s*,\s+", args.strip())]
    if len(parts) == 1:  # "a,b" without a space
        parts = [p.strip() for p in args.split(",")]
    if len(parts) > 2 and op in TABLE_OPS:  # a row name that contains ", "
        parts = [", ".join(parts[:-1]), parts[-1]]
    if len(parts) != 2 or not all(parts):
        raise ProgramParseError(f"{op} takes two arguments, got {args!r}")
    return parts[0], parts[1]


def normalize_program(text: str) -> str:
    """Canonical text of a program (for program accuracy): ``op(arg1, arg2), …`` with single spaces, lower-case
    ops, numbers without spaces. Raises `ProgramParseError` when it does not parse."""
    steps = parse_program(text)
    return ", ".join(str(Step(s.op, _canonical_arg(s.arg1, s.op), _canonical_arg(s.arg2, s.op))) for s in steps)


def _canonical_arg(arg: str, op: str) -> str:
    squeezed = re.sub(r"\s+", "", arg)
    if _REF.fullmatch(arg.strip()) or to_number(squeezed) is not None:
        return squeezed
    return " ".join(arg.split())


def to_number(text: str) -> Optional[float]:
    """Upstream's ``str_to_num`` (None for its ``"n/a"``), plus ``$`` and spaces removed: ``5,829`` → 5829.0,
    ``5%`` → 0.05, ``const_100`` → 100.0, ``const_m1`` → -1.0."""
    text = re.sub(r"\s+", "", text).replace(",", "").replace("$", "")
    try:
        return float(text)
    except ValueError:
        pass
    if "%" in text:
        try:
            return float(text.replace("%", "")) / 100.0
        except ValueError:
            return None
    if text.startswith("const_"):
        name = text[len("const_"):]
        try:
            return -1.0 if name == "m1" else float(name)
        except ValueError:
            return None
    return None


def table_row_values(table: Sequence[Sequence[str]], row_name: str) -> list[float]:
    """The numeric cells of the row named ``row_name`` (upstream ``process_row``)."""
    rows = {str(row[0]): row[1:] for row in table if row}
    if row_name not in rows:
        loose = {re.sub(r"\s+", "", name): cells for name, cells in rows.items()}
        key = re.sub(r"\s+", "", row_name)
        if key not in loose:
            raise ProgramExecutionError(f"no table row named {row_name!r}")
        cells = loose[key]
    else:
        cells = rows[row_name]
    values = []
    for cell in cells:
        number = to_number(str(cell).replace("$", "").strip().split("(")[0].strip())
        if number is None:
            raise ProgramExecutionError(f"table row {row_name!r}: cell {cell!r} is not a number")
        values.append(number)
    if not values:
        raise ProgramExecutionError(f"table row {row_name!r} has no cells")
    return values


def execute_steps(steps: Sequence[Step], table: Sequence[Sequence[str]] = ()) -> Value:
    """The value of the last step. Raises `ProgramExecutionError` when a step cannot run."""
    if not steps:
        raise ProgramExecutionError("no steps")
    results: list[Value] = []
    for index, step in enumerate(steps):
        if step.op in TABLE_OPS:
            if _REF.fullmatch(step.arg1.strip()):
                raise ProgramExecutionError(f"step {index}: {step.op} needs a row name, not {step.arg1!r}")
            row = table_row_values(table, step.arg1)
            value: Value = {"table_max": max, "table_min": min, "table_sum": math.fsum,
                            "table_average": lambda v: math.fsum(v) / len(v)}[step.op](row)
        else:
            a, b = (_argument(arg, results, index) for arg in (step.arg1, step.arg2))
            value = _arithmetic(step.op, a, b, index)
        results.append(value)
    return results[-1]


def _argument(arg: str, results: list[Value], index: int) -> float:
    ref = _REF.fullmatch(arg.strip())
    if ref:
        n = int(ref.group(1))
        if n >= len(results):
            raise ProgramExecutionError(f"step {index}: #{n} refers to no earlier step")
        value = results[n]
        if isinstance(value, str):
            raise ProgramExecutionError(f"step {index}: #{n} is {value!r}, not a number")
        return value
    number = to_number(arg)
    if number is None:
        raise ProgramExecutionError(f"step {index}: {arg!r} is not a number")
    return number


def _arithmetic(op: str, a: float, b: float, index: int) -> Value:
    if op == "greater":
        return "yes" if a > b else "no"
    try:
        value = {"add": lambda: a + b, "subtract": lambda: a - b, "multiply": lambda: a * b,
                 "divide": lambda: a / b, "exp": lambda: a ** b}[op]()
    except (ZeroDivisionError, OverflowError) as err:
        raise ProgramExecutionError(f"step {index}: {op}({a}, {b}): {err}") from None
    if isinstance(value, complex) or not math.isfinite(value):
        raise ProgramExecutionError(f"step {index}: {op}({a}, {b}) gives {value}")
    return float(value)


def execute_program(text: str, table: Sequence[Sequence[str]] = ()) -> Value:
    """Parse and execute; `ProgramParseError` / `ProgramExecutionError` say which way it failed."""
    return execute_steps(parse_program(text), table)
