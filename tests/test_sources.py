"""Readers on every source type, and on malformed input."""

import json
import time

import pytest

from finlight.core.data.records import DropLog
from finlight.core.data.sources import read_records
from finlight.errors import FinlightError

from conftest import PHRASEBANK_ALL


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_phrasebank_splits_on_last_at_and_reads_latin1(tmp_path):
    path = write(tmp_path / "pb.txt", "Caf\u00e9 sales @ Nordic stores rose .@positive\nProfit fell .@negative\n",
                 encoding="latin-1")
    records = read_records(path)
    assert [(r.text, r.label) for r in records] == [("Caf\u00e9 sales @ Nordic stores rose .", "positive"),
                                                  ("Profit fell .", "negative")]
    assert records[1].origin == f"{path}:2"


def test_malformed_phrasebank_line_is_dropped_and_reported(tmp_path):
    lines = [f"Sentence number {i} .@neutral" for i in range(40)]
    lines.insert(37, "1")  # the stray line of the real AllAgree file, at its line 38
    path = write(tmp_path / "pb.txt", "\n".join(lines) + "\n", encoding="latin-1")
    drops = DropLog()
    records = read_records(path, drops=drops)
    assert len(records) == 40
    assert drops.total() == 1
    assert list(drops.by_reason.values())[0] == [f"{path}:38"]


@pytest.mark.integration
def test_real_phrasebank_allagree_has_one_malformed_line():
    drops = DropLog()
    records = read_records(str(PHRASEBANK_ALL), drops=drops)
    assert len(records) == 2263
    assert [o.rsplit(":", 1)[1] for o in next(iter(drops.by_reason.values()))] == ["38"]
    assert {r.label for r in records} == {"positive", "negative", "neutral"}


def test_csv_with_newlines_in_quoted_fields_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "d.csv", 'id,comment_text,toxic\n1,"first line\nsecond line",0\n2,"plain, with comma",1\n')
    records = read_records(path, text_column="comment_text", label_column="toxic")
    assert [(r.text, r.label) for r in records] == [("first line\nsecond line", "0"), ("plain, with comma", "1")]
    assert [r.origin.rsplit(":", 1)[1] for r in records] == ["2", "4"]


def test_tsv_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tsv = write(tmp_path / "d.tsv", "sentence\tsentiment\nUp .\tpositive\nDown .\tnegative\n")
    assert [r.label for r in read_records(tsv, text_column="sentence", label_column="sentiment")] == ["positive", "negative"]
    jsonl = write(tmp_path / "d.jsonl", json.dumps({"input": "Up .", "output": "Positive"}) + "\n\n"
                  + json.dumps({"input": "Flat .", "output": "Neutral"}) + "\n")
    records = read_records(jsonl, text_column="input", label_column="output")
    assert [(r.text, r.label, r.origin.rsplit(":", 1)[1]) for r in records] == [("Up .", "Positive", "1"),
                                                                                ("Flat .", "Neutral", "3")]
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a b", "c d"], "label": [0, 2]}), parquet)
    assert [(r.text, r.label) for r in read_records(str(parquet))] == [("a b", "0"), ("c d", "2")]


def test_unlabeled_lines(tmp_path):
    path = write(tmp_path / "corpus.txt", "Revenue grew.\n\nMargins held.\n")
    records = read_records(path, label_column=None)
    assert [(r.text, r.label) for r in records] == [("Revenue grew.", None), ("Margins held.", None)]


@pytest.mark.parametrize("content, message", [
    ("sentence,label\nUp,positive\n", "data.text_column='text' is not in the header"),
    ("text,label\nUp,positive\nDown,\n", ":3: empty label in column 'label'"),
    ("", "the file is empty"),
])
def test_bad_csv_raises_naming_the_culprit(tmp_path, content, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(FinlightError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        read_records(path)
    assert str(tmp_path / "bad.csv") in str(err.value) and "\n" not in str(err.value)


def test_wrong_encoding_and_missing_file(tmp_path):
    path = write(tmp_path / "latin.csv", "text,label\nCaf\u00e9 up,positive\n", encoding="latin-1")
    with pytest.raises(FinlightError, match="not valid utf-8.*data.encoding"):
        read_records(path)
    assert read_records(path, encoding="latin-1")[0].text == "Caf\u00e9 up"
    with pytest.raises(FinlightError, match="no such file"):
        read_records(str(tmp_path / "missing.csv"))


def test_mostly_malformed_file_is_an_error_not_a_silent_skip(tmp_path):
    path = write(tmp_path / "semi.txt", "a;positive\nb;negative\nc@neutral\n")
    with pytest.raises(FinlightError, match="2 of 3 lines are malformed"):
        read_records(path)


def test_short_csv_rows_are_counted(tmp_path):
    rows = "\n".join(f"text {i},neutral" for i in range(60))
    path = write(tmp_path / "d.csv", "text,label\n" + rows + "\nonly-one-field\n")
    drops = DropLog()
    assert len(read_records(path, drops=drops)) == 60
    assert drops.total() == 1 and "fewer fields" in next(iter(drops.by_reason))


def test_unreachable_hub_dataset_fails_fast_with_its_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FinlightError, match="hub dataset 'nobody/no-such-dataset'.*local file"):
        read_records("nobody/no-such-dataset", "hub")
    assert time.monotonic() - start < 20
