"""FinQA scores of one generated text, and their means over a set (pure functions).

* **execution accuracy**: the predicted value equals the gold value (``exe_ans``): numbers when equal after
  rounding to 5 decimals (upstream's own test: ``round(value, 5) == exe_ans``) or within the relative tolerance
  ``rel_tol``; ``yes`` / ``no`` exactly. With ``target: program`` the value is the predicted program executed on
  the record's table; with ``target: answer`` it is the number (or yes / no) the answer starts with
  (``34.7%`` reads 0.347, as upstream reads percentages; no rescaling by 100 is guessed).
* **program accuracy** (``target: program`` only): ``prog_acc`` — the normalised predicted program
  (`normalize_program`: spacing, case of ops, spaces inside numbers) equals the normalised gold program;
  ``prog_acc_symbolic`` — upstream FinQA's own program accuracy (``equal_program``): each distinct argument of
  the gold program (and each table step) becomes a symbol, the prediction may use only those, and the two
  expressions must simplify to the same one (sympy), so ``add(a, b)`` equals ``add(b, a)``.
* **unparseable rate**: the text is no program (no number / yes / no for answers).
  **non-executable rate** (programs only): it parses but cannot run (`ProgramExecutionError`).
  Both count as wrong in execution and program accuracy; they are reported separately, never hidden.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from finlight.finqa.program import (TABLE_OPS, ProgramExecutionError, ProgramParseError, execute_steps,
                                    normalize_program, parse_program)
from finlight.finqa.prompts import first_line

Value = Union[float, str]
DEFAULT_REL_TOL = 1e-3
MAX_SYMBOLIC_STEPS = 16
_ANSWER = re.compile(r"^(yes|no)\b|^(-?\$?-?\d+(?:\.\d+)?%?)", re.IGNORECASE)


@dataclass(frozen=True)
class Score:
    """How one generated text fared. ``value`` is what it executed / parsed to (None when it did not)."""

    parsed: Optional[str]          # the normalised program, or the answer text read
    value: Optional[Value]
    exec_correct: bool
    prog_correct: Optional[bool]   # None for target=answer
    unparseable: bool
    nonexecutable: bool
    error: str = ""
    prog_equivalent: Optional[bool] = None  # symbolic equivalence (upstream's program accuracy)


def values_match(predicted: Optional[Value], gold: Optional[Value], rel_tol: float = DEFAULT_REL_TOL) -> bool:
    if predicted is None or gold is None:
        return False
    if isinstance(gold, str) or isinstance(predicted, str):
        return str(predicted).strip().lower() == str(gold).strip().lower()
    return round(predicted, 5) == round(gold, 5) or math.isclose(predicted, gold, rel_tol=rel_tol)


def parse_answer_value(text: str) -> Optional[Value]:
    """``yes`` / ``no`` or the number the answer starts with (``$``, commas, ``%`` understood); else None."""
    line = first_line(text).lower()
    # tokenizers that split punctuation decode "5.93" as "5. 93" and "-3" as "- 3": undo that first
    line = re.sub(r"(?<=\d)\s*([.,])\s*(?=\d)", r"\1", line)
    line = re.sub(r"(?<=\d)\s+%", "%", re.sub(r"(-|\$)\s+(?=[\d$])", r"\1", line))
    line = re.sub(r"(?<=\d),(?=\d{3}\b)", "", line)
    match = _ANSWER.match(line)
    if match is None:
        return None
    if match.group(1):
        return match.group(1)
    number = match.group(2).replace("$", "")
    if number.endswith("%"):
        return float(number[:-1]) / 100.0
    return float(number)


def score_prediction(text: str, gold_answer: Optional[Value], table: Sequence[Sequence[str]] = (),
                     gold_program: Optional[str] = None, target: str = "program",
                     rel_tol: float = DEFAULT_REL_TOL) -> Score:
    """Score one generated text against its record's gold value (and gold program for ``target: program``)."""
    if target == "answer":
        value = parse_answer_value(text)
        return Score(first_line(text) if value is not None else None, value,
                     values_match(value, gold_answer, rel_tol), None, value is None, False,
                     "" if value is not None else "no number or yes/no at the start")
    line = first_line(text)
    gold_norm = _normalized_or_none(gold_program)
    try:
        steps = parse_program(line)
    except ProgramParseError as err:
        return Score(None, None, False, False, True, False, str(err), False)
    parsed = normalize_program(line)
    prog_correct = gold_norm is not None and parsed == gold_norm
    equivalent = prog_correct or (gold_norm is not None and programs_equivalent(parsed, gold_norm))
    try:
        value = execute_steps(steps, table)
    except ProgramExecutionError as err:
        return Score(parsed, None, False, prog_correct, False, True, str(err), equivalent)
    return Score(parsed, value, values_match(value, gold_answer, rel_tol), prog_correct, False, False, "",
                 equivalent)


def programs_equivalent(predicted: str, gold: str) -> bool:
    """Upstream ``equal_program``: symbols for the gold program's distinct arguments (``#n`` excepted) and
    table steps; a prediction that uses any other argument is not equivalent; otherwise both programs become
    sympy expressions that must simplify to the same (``greater`` is the relation ``>``, compared as is).
    Predictions longer than `MAX_SYMBOLIC_STEPS` steps count as not equivalent (bounded time)."""
    import sympy

    try:
        gold_steps, predicted_steps = parse_program(gold), parse_program(predicted)
    except ProgramParseError:
        return False
    if len(predicted_steps) > MAX_SYMBOLIC_STEPS:  # simplify time grows fast; gold programs have ≤ 10 steps
        return False
    symbols: dict[str, sympy.Symbol] = {}

    def build(steps, may_add: bool):
        values = []
        for index, step in enumerate(steps):
            if step.op in TABLE_OPS:
                key = normalize_program(str(step))
                if key not in symbols and may_add:
                    symbols[key] = sympy.Symbol(f"a{len(symbols)}")
                if key not in symbols:
                    return None
                values.append(symbols[key])
                continue
            args = []
            for arg in (step.arg1, step.arg2):
                key = re.sub(r"\s+", "", arg)
                if key.startswith("#"):
                    n = int(key[1:]) if key[1:].isdigit() else len(values)
                    if n >= len(values):
                        return None
                    args.append(values[n])
                    continue
                if key not in symbols and may_add:
                    symbols[key] = sympy.Symbol(f"a{len(symbols)}")
                if key not in symbols:
                    return None
                args.append(symbols[key])
            a, b = args
            values.append({"add": lambda: a + b, "subtract": lambda: a - b, "multiply": lambda: a * b,
                           "divide": lambda: a / b, "exp": lambda: a ** b,
                           "greater": lambda: sympy.Gt(a, b, evaluate=False)}[step.op]())
        return values[-1]

    gold_expr = build(gold_steps, True)
    predicted_expr = build(predicted_steps, False)
    if gold_expr is None or predicted_expr is None:
        return False
    relational = [isinstance(e, sympy.core.relational.Relational) for e in (gold_expr, predicted_expr)]
    if any(relational):
        return all(relational) and sympy.simplify(gold_expr) == sympy.simplify(predicted_expr)
    return sympy.simplify(gold_expr - predicted_expr) == 0


def _normalized_or_none(program: Optional[str]) -> Optional[str]:
    if program is None:
        return None
    try:
        return normalize_program(program)
    except ProgramParseError:
        return None


def summarize(scores: Sequence[Score]) -> dict[str, float]:
    """``exec_acc``, ``unparseable_rate``; for programs also ``prog_acc``, ``prog_acc_symbolic``,
    ``nonexecutable_rate``."""
    if not scores:
        return {}
    n = len(scores)
    out = {"exec_acc": sum(s.exec_correct for s in scores) / n,
           "unparseable_rate": sum(s.unparseable for s in scores) / n}
    if all(s.prog_correct is not None for s in scores):
        out["prog_acc"] = sum(bool(s.prog_correct) for s in scores) / n
        out["prog_acc_symbolic"] = sum(bool(s.prog_equivalent) for s in scores) / n
        out["nonexecutable_rate"] = sum(s.nonexecutable for s in scores) / n
    return out
