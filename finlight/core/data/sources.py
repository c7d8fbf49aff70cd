"""Readers: every supported source becomes a list of `Record`s with a ``file:line`` origin.

Formats: ``phrasebank`` (``sentence@label``, split on the LAST ``@``, latin-1), ``lines`` (one text a line,
unlabeled), ``csv``/``tsv`` (real CSV parser: quoted fields may hold newlines), ``jsonl``, ``parquet`` and
``hub`` (a Hugging Face dataset id through ``datasets.load_dataset``). ``demo`` names the demo set shipped
inside the package.
"""

from __future__ import annotations

import csv
import json
import os
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

from finlight.core.data.records import DropLog, Record
from finlight.errors import FinlightError

FORMATS = ("auto", "phrasebank", "lines", "csv", "tsv", "jsonl", "parquet", "hub")
_BY_SUFFIX = {".txt": "phrasebank", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
              ".parquet": "parquet"}
# Above this share of malformed lines the file is probably in another format (or delimiter): stop, don't guess.
MAX_MALFORMED_SHARE = 0.05
DEMO = "demo"


def demo_path() -> Path:
    """The demo set written for finlight (420 original sentences; see finlight/core/data/demo/README.md)."""
    return Path(str(resources.files("finlight.core.data") / "demo" / "financial_demo.csv"))


def resolve_format(path: str, fmt: str, labelled: bool) -> str:
    if fmt not in FORMATS:
        raise FinlightError(f"data format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in _BY_SUFFIX:
        found = _BY_SUFFIX[suffix]
        return "lines" if (found == "phrasebank" and not labelled) else found
    if not os.path.exists(path) and "/" in path and not path.startswith((".", "/")):
        return "hub"
    raise FinlightError(
        f"{path}: cannot tell the format from the name; set data.format to one of {', '.join(FORMATS[1:])}"
    )


def read_records(
    path: str,
    fmt: str = "auto",
    *,
    text_column: str = "text",
    label_column: Optional[str] = "label",
    encoding: Optional[str] = None,
    hub_config: Optional[str] = None,
    hub_split: str = "train",
    drops: Optional[DropLog] = None,
) -> list[Record]:
    """Read every record of ``path``. ``label_column=None`` reads unlabeled text (labels are None).

    Malformed lines are dropped into ``drops`` (reason + origin), never silently; a file that is mostly
    malformed, a missing column, an empty file or a wrong encoding raise `FinlightError`.
    """
    drops = drops if drops is not None else DropLog()
    if path == DEMO:
        path = str(demo_path())
    if os.path.isdir(path) and fmt != "hub":
        raise FinlightError(f"{path}: is a directory; point the data path at a file (or set data.format: hub "
                            f"for a Hugging Face dataset folder)")
    fmt = resolve_format(path, fmt, labelled=label_column is not None)
    if fmt == "hub":
        return _read_hub(path, hub_config, hub_split, text_column, label_column)
    if not os.path.exists(path):
        raise FinlightError(f"{path}: no such file (check the data path in your config; it is relative to "
                            f"the working directory {os.getcwd()})")
    n_malformed_before = drops.total()
    if fmt == "parquet":
        records = _read_parquet(path, text_column, label_column)
        lines_seen = len(records)
    else:
        encoding = encoding or ("latin-1" if fmt == "phrasebank" else "utf-8")
        try:
            with open(path, encoding=encoding, newline="") as handle:
                if fmt in ("csv", "tsv"):
                    records, lines_seen = _read_delimited(handle, path, "," if fmt == "csv" else "\t",
                                                          text_column, label_column, drops)
                else:
                    reader = {"phrasebank": _read_phrasebank, "lines": _read_lines, "jsonl": _read_jsonl}[fmt]
                    records, lines_seen = [], 0
                    for lines_seen, record in reader(handle, path, text_column, label_column, drops):
                        if record is not None:
                            records.append(record)
        except UnicodeDecodeError as err:
            raise FinlightError(
                f"{path}: not valid {encoding} (byte {err.start}: {err.reason}); set data.encoding "
                f"(PhraseBank files are latin-1)"
            ) from None
    malformed = drops.total() - n_malformed_before
    if lines_seen == 0 or not records and malformed == 0:
        raise FinlightError(f"{path}: the file holds no records")
    if malformed > MAX_MALFORMED_SHARE * max(lines_seen, 1) and malformed > 1:
        raise FinlightError(
            f"{path}: {malformed} of {lines_seen} lines are malformed (first: "
            f"{next(iter(drops.by_reason.values()))[0]}); is data.format ({fmt}) right for this file?"
        )
    return records


def _read_phrasebank(handle, path, text_column, label_column, drops) -> Iterator[tuple[int, Optional[Record]]]:
    for number, line in enumerate(handle, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            yield number, None
            continue
        text, sep, label = line.rpartition("@")
        if not sep or not label.strip():
            drops.add("malformed lines (no '@label')", f"{path}:{number}")
            yield number, None
            continue
        yield number, Record(text, label, f"{path}:{number}")


def _read_lines(handle, path, text_column, label_column, drops) -> Iterator[tuple[int, Optional[Record]]]:
    for number, line in enumerate(handle, start=1):
        line = line.rstrip("\r\n")
        yield number, (Record(line, None, f"{path}:{number}") if line.strip() else None)


def _read_jsonl(handle, path, text_column, label_column, drops) -> Iterator[tuple[int, Optional[Record]]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            yield number, None
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            drops.add("malformed JSON lines", f"{path}:{number} ({err.msg})")
            yield number, None
            continue
        if not isinstance(row, dict):
            drops.add("JSON lines that are not objects", f"{path}:{number}")
            yield number, None
            continue
        _check_columns(path, list(row), text_column, label_column, where=f"line {number}")
        yield number, _record(row.get(text_column), row.get(label_column) if label_column else None,
                              f"{path}:{number}", label_column)


def _read_delimited(handle, path, delimiter, text_column, label_column, drops) -> tuple[list[Record], int]:
    reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise FinlightError(f"{path}: the file is empty") from None
    except csv.Error as err:
        raise FinlightError(f"{path}:1: unreadable header ({err})") from None
    _check_columns(path, header, text_column, label_column, where="the header")
    text_at = header.index(text_column)
    label_at = header.index(label_column) if label_column else None
    records, rows_seen, start = [], 0, 2
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise FinlightError(f"{path}:{reader.line_num}: broken CSV ({err})") from None
        rows_seen += 1
        origin = f"{path}:{start}"
        start = reader.line_num + 1
        if not row:
            continue
        if len(row) != len(header):
            drops.add(f"rows with {'fewer' if len(row) < len(header) else 'more'} fields than the header",
                      origin)
            continue
        records.append(_record(row[text_at], row[label_at] if label_at is not None else None, origin,
                               label_column))
    return records, rows_seen


def _read_parquet(path, text_column, label_column) -> list[Record]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    _check_columns(path, table.column_names, text_column, label_column, where="the schema")
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist() if label_column else [None] * len(texts)
    return [_record(t, l, f"{path}:row {i + 1}", label_column) for i, (t, l) in enumerate(zip(texts, labels))]


def _read_hub(name, config, split, text_column, label_column) -> list[Record]:
    import datasets

    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError …)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise FinlightError(
            f"hub dataset {name!r} (config {config!r}, split {split!r}) could not be loaded"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: {type(err).__name__}: {str(err).splitlines()[0][:200]}. "
            f"Download it on a connected machine and point data.train_path at a local file"
        ) from None
    _check_columns(name, data.column_names, text_column, label_column, where=f"split {split!r}")
    names = getattr(data.features.get(label_column), "names", None) if label_column else None
    records = []
    for i, row in enumerate(data):
        label = row[label_column] if label_column else None
        if names is not None and isinstance(label, int):
            label = names[label]  # ClassLabel ints → their names, so label_names/label_map work on words
        records.append(_record(row[text_column], label, f"{name}[{split}]:row {i + 1}", label_column))
    return records


def _check_columns(path, columns, text_column, label_column, where) -> None:
    for role, column in (("data.text_column", text_column), ("data.label_column", label_column)):
        if column is not None and column not in columns:
            raise FinlightError(f"{path}: {role}={column!r} is not in {where}; columns are {list(columns)}")


def _record(text, label, origin, label_column) -> Record:
    if text is not None and not isinstance(text, str):
        text = str(text)
    if label_column is not None and (label is None or (isinstance(label, float) and label != label)
                                     or str(label).strip() == ""):
        raise FinlightError(f"{origin}: empty label in column {label_column!r}; fix the row or remove it")
    return Record(text or "", None if label is None else str(label), origin)
