"""FinQA examples from either file format, as one record type.

* original (czyssrs/FinQA ``dataset/*.json``): ``{id, pre_text[], post_text[], table[[…]], qa: {question,
  program, exe_ans, answer, gold_inds, …}}``;
* simplified / flattened: ``{id, question, pre_text[], post_text[], table, answer, program}`` where ``answer``
  is upstream's ``exe_ans`` (a number, or ``yes``/``no``) and ``gold_inds`` is gone.

Both are JSON arrays; the format is decided per record (``qa`` present or not).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from finlight.errors import FinlightError

GoldValue = Union[float, str]


@dataclass(frozen=True)
class FinQARecord:
    """One question over one report page.

    ``answer`` is the executed gold value (upstream ``exe_ans``); ``answer_text`` the annotators' string
    (``"34.7%"``, original format only); ``gold_inds`` maps ``text_<i>`` / ``table_<i>`` to the supporting
    facts (original format only).
    """

    id: str
    question: str
    pre_text: tuple[str, ...]
    post_text: tuple[str, ...]
    table: tuple[tuple[str, ...], ...]
    program: Optional[str] = None
    answer: Optional[GoldValue] = None
    answer_text: Optional[str] = None
    gold_inds: Optional[dict[str, str]] = field(default=None, hash=False, compare=False)
    origin: str = ""

    @property
    def table_text(self) -> str:
        return table_as_text(self.table)


def table_as_text(table) -> str:
    """One row per line, cells joined by `` | `` (empty cells stay visible as empty columns)."""
    return "\n".join(" | ".join(str(cell).strip() for cell in row) for row in table)


def load_finqa(path: str, require_gold: bool = True) -> list[FinQARecord]:
    """Every record of a FinQA JSON file (either format). With ``require_gold`` each needs a program and an
    answer. Any problem → `FinlightError` naming the file, the record index (and id) and the key."""
    if not os.path.isfile(path):
        raise FinlightError(f"{path}: no such FinQA file")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FinlightError(f"{path}: not a JSON file ({err}); FinQA files are JSON arrays of records") from None
    if not isinstance(data, list):
        raise FinlightError(f"{path}: expected a JSON array of FinQA records, got {type(data).__name__}")
    if not data:
        raise FinlightError(f"{path}: no records in it")
    return [_record(raw, path, i, require_gold) for i, raw in enumerate(data)]


def _record(raw: Any, path: str, index: int, require_gold: bool) -> FinQARecord:
    where = f"{path}: record {index}"
    if not isinstance(raw, dict):
        raise FinlightError(f"{where}: expected an object, got {type(raw).__name__}")
    if raw.get("id"):
        where += f" (id {raw['id']})"

    def need(container: dict, key: str, label: str, kind: type | tuple, required: bool = True):
        if key not in container or container[key] is None:
            if required:
                raise FinlightError(f"{where}: missing key {label!r}")
            return None
        value = container[key]
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise FinlightError(f"{where}: key {label!r} should be {names}, got {type(value).__name__}")
        return value

    original = "qa" in raw
    qa = need(raw, "qa", "qa", dict) if original else raw
    prefix = "qa." if original else ""
    question = need(qa, "question", prefix + "question", str)
    program = need(qa, "program", prefix + "program", str, require_gold)
    answer_key = "exe_ans" if original else "answer"
    answer = need(qa, answer_key, prefix + answer_key, (int, float, str), require_gold)
    if isinstance(answer, bool):
        raise FinlightError(f"{where}: key {prefix + answer_key!r} should be a number or yes/no, got a boolean")
    if isinstance(answer, str):
        answer = _gold_string(answer, where, prefix + answer_key)
    elif answer is not None:
        answer = float(answer)
    table = need(raw, "table", "table", list)
    for r, row in enumerate(table):
        if not isinstance(row, list):
            raise FinlightError(f"{where}: key 'table' row {r} should be a list of cells, got {type(row).__name__}")
    gold_inds = need(qa, "gold_inds", "qa.gold_inds", dict, required=False) if original else None
    answer_text = need(qa, "answer", "qa.answer", (str, int, float), required=False) if original else None
    return FinQARecord(
        id=str(raw.get("id", index)), question=question.strip(),
        pre_text=tuple(str(s) for s in need(raw, "pre_text", "pre_text", list)),
        post_text=tuple(str(s) for s in need(raw, "post_text", "post_text", list)),
        table=tuple(tuple(str(c) for c in row) for row in table),
        program=program, answer=answer, answer_text=None if answer_text is None else str(answer_text),
        gold_inds=dict(gold_inds) if gold_inds is not None else None, origin=f"{path}#{index}",
    )


def _gold_string(value: str, where: str, key: str) -> GoldValue:
    """Gold answers are numbers or yes/no; a numeric string (rare) becomes its number."""
    text = value.strip().lower()
    if text in ("yes", "no"):
        return text
    try:
        return float(text.replace(",", ""))
    except ValueError:
        raise FinlightError(f"{where}: key {key!r} is {value!r}, neither a number nor yes/no") from None
