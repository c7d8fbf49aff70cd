"""Readers: every supported source becomes a list of `Record`s with a ``file:line`` origin.

Formats: ``phrasebank`` (``sentence@label``, split on the LAST ``@``, latin-1), ``lines`` (one text a line,
unlabeled), ``csv``/``tsv`` (real CSV parser: quoted fields may hold newlines), ``jsonl``, ``parquet`` and
``hub`` (a Hugging Face dataset id through ``datasets.load_dataset``). ``demo`` names the demo set shipped
inside the package.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

from finlight.core.data.records import DropLog, Record
from finlight.errors import FinlightError

log = logging.getLogger("finlight.data")
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
    malformed, a missing or repeated column, an empty file, a wrong encoding (see `file_encoding`: byte-order
    marks are read) or a binary file raise `FinlightError`. CSV fields may be of any size.
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
        encoding = file_encoding(path, encoding, "latin-1" if fmt == "phrasebank" else "utf-8")
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
    if malformed > MAX_MALFORMED_SHARE * max(lines_seen, 1) and (malformed > 1 or not records):
        raise FinlightError(
            f"{path}: {malformed} of {lines_seen} lines are malformed (first: "
            f"{next(iter(drops.by_reason.values()))[0]}); is data.format ({fmt}) right for this file?"
        )
    return records


# UTF-32 LE before UTF-16 LE: its mark starts with UTF-16 LE's.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "utf-32"), (codecs.BOM_UTF32_BE, "utf-32", "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig", "utf-8"), (codecs.BOM_UTF16_LE, "utf-16", "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16", "utf-16"))


def file_encoding(path: str, encoding: Optional[str], default: str) -> str:
    """The encoding to read ``path`` with: a byte-order mark (UTF-8 / 16 / 32) decides when ``data.encoding``
    is unset or of the same family; one that contradicts the mark, or NUL bytes in a file read as 8-bit text
    (UTF-16 without a BOM, garbage otherwise), stop with the setting to use."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise FinlightError(f"data.encoding={encoding!r} is not an encoding Python knows; use e.g. utf-8, "
                                f"latin-1, utf-16 or cp1252") from None
    with open(path, "rb") as handle:
        head = handle.read(4096)
    for magic, what in ((b"\x1f\x8b", "gzip-compressed"), (b"PK\x03\x04", "a zip archive (an Excel .xlsx?)"),
                        (b"PAR1", "a Parquet file")):
        if head.startswith(magic):
            raise FinlightError(f"{path}: the file is {what}, not text; decompress or convert it (to CSV, JSONL or "
                                f"Parquet), or set data.format to its real format")
    marked, family = next(((name, family) for mark, name, family in _BOMS if head.startswith(mark)), (None, None))
    if marked is not None:
        if encoding is None or codecs.lookup(encoding).name.startswith(family):
            if encoding is None and marked != "utf-8-sig":
                log.info("%s: %s byte-order mark: reading it as %s", path, family.upper(), marked)
            return marked
        raise FinlightError(f"{path}: this file is {family.upper()} (it starts with a byte-order mark) but "
                            f"data.encoding is {encoding!r}; set data.encoding: {marked} (or leave it unset)")
    wide = codecs.lookup(encoding or default).name.startswith(("utf-16", "utf-32"))
    if b"\x00" in head and not wide:
        odd = head[1::2].count(0) > head[0::2].count(0)
        guess = "utf-16-le" if odd else "utf-16-be"
        raise FinlightError(f"{path}: the file holds NUL bytes and no byte-order mark: it looks like {guess.upper()}; "
                            f"set data.encoding: {guess}")
    return encoding or default


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
    # no field of a file is longer than the file: any valid CSV reads, whatever its field sizes (default 128 KiB)
    csv.field_size_limit(max(csv.field_size_limit(), min(os.path.getsize(path) + 1, 2**31 - 1)))
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
        spans = reader.line_num - start + 1
        if len(row) != len(header) and spans > 2 and any(field.count("\n") >= 2 for field in row):
            raise FinlightError(f"{origin}: a quoted field opened here runs over {spans} lines (to line "
                                f"{reader.line_num}): an unclosed quote? Close it, or double quotes inside a "
                                f"quoted field (\"\")")
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
            hint = ""
            if len(columns) == 1:  # a whole header in one column: another delimiter
                found = next((d for d in ("\t", ";", "|") if d in str(columns[0])), None)
                hint = {"\t": "; the header is tab-separated: set data.format: tsv",
                        None: ""}.get(found, f"; the header is {found!r}-separated: save the file comma-separated")
            raise FinlightError(f"{path}: {role}={column!r} is not in {where}; columns are {list(columns)}{hint}")
        if column is not None and list(columns).count(column) > 1:
            raise FinlightError(f"{path}: column {column!r} appears {list(columns).count(column)} times in {where}; "
                                f"rename the duplicates so {role} names one column")


def _record(text, label, origin, label_column) -> Record:
    if text is not None and not isinstance(text, str):
        text = str(text)
    if label_column is not None and (label is None or (isinstance(label, float) and label != label)
                                     or str(label).strip() == ""):
        raise FinlightError(f"{origin}: empty label in column {label_column!r}; fix the row or remove it")
    return Record(text or "", None if label is None else str(label), origin)
