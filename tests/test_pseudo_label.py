"""`pseudo-label`: corpus reading, the output file round trip, resume after an interruption, refusals."""

import json

import pytest
import torch

import finlight.distill.pseudo_label as pl
from finlight.cli import main
from finlight.distill.data import read_pseudo_labels
from finlight.errors import FinlightError
from finlight.distill.teacher import load_classifier

from conftest import SENTENCES

TEXTS = [f"{t[:-1]} in period {r}." for r in range(4) for ts in SENTENCES.values() for t in ts]  # 72 distinct


def write_corpus(folder, texts=TEXTS):
    """Two .txt files, one text a line, with an empty line and a repeated text that must be dropped."""
    folder.mkdir()
    half = len(texts) // 2
    (folder / "a.txt").write_text("\n".join(texts[:half]) + "\n\n" + texts[0] + "\n", encoding="utf-8")
    (folder / "b.txt").write_text("\n".join(texts[half:]) + "\n", encoding="utf-8")
    return folder


def rows_of(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_round_trip_rows_match_unpadded_teacher_and_reorder_by_name(tiny_hf_dir, in_tmp):
    corpus = write_corpus(in_tmp / "corpus")
    main(["pseudo-label", "--teacher", str(tiny_hf_dir), "--input", str(corpus), "--output", "out/pl.jsonl",
          "--batch_size", "8", "--chunk_size", "20", "--no_progress_bar"])
    rows = rows_of("out/pl.jsonl")
    assert [r["text"] for r in rows] == TEXTS  # input order, duplicate and empty line dropped
    assert rows[0]["source"].endswith("a.txt:1") and rows[-1]["source"].endswith("b.txt:36")
    teacher = load_classifier(str(tiny_hf_dir))
    names = ["positive", "negative", "neutral"]  # the head's own order
    assert teacher.label_names == names
    for row in rows[:: 7]:  # each row against an unpadded, one-at-a-time forward
        enc = teacher.tokenizer(row["text"], return_tensors="pt")
        expected = teacher.model(**enc).logits[0]
        got = torch.tensor([row["logits"][n] for n in names])
        assert torch.allclose(got, expected, atol=1e-5)
        probs = [row[f"prob_{n}"] for n in names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert probs == pytest.approx(expected.softmax(-1).tolist(), abs=1e-6)
        assert row["label"] == names[int(expected.argmax())]
        assert row["teacher"].startswith("hf-directory:") and "@" in row["teacher"]
    progress = json.loads(open("out/pl.jsonl.progress.json").read())
    assert progress["complete"] and progress["rows_done"] == len(TEXTS)
    assert progress["corpus_counts"] == {"files": 2, "read": 73, "empty": 0, "duplicates": 1}

    data = read_pseudo_labels("out/pl.jsonl", ["negative", "neutral", "positive"])
    first = rows[0]["logits"]
    assert data.logits[0].tolist() == pytest.approx([first["negative"], first["neutral"], first["positive"]])
    assert data.labels[0] == ["negative", "neutral", "positive"].index(rows[0]["label"])
    with pytest.raises(FinlightError, match=r"pl.jsonl:1: the teacher's labels .* are not data.label_names"):
        read_pseudo_labels("out/pl.jsonl", ["bearish", "neutral", "bullish"])


@pytest.mark.slow
def test_interrupted_run_resumes_without_lost_or_duplicated_rows(tiny_hf_dir, in_tmp, monkeypatch):
    corpus = write_corpus(in_tmp / "corpus")
    args = dict(batch_size=4, chunk_size=10, progress_bar=False)
    pl.pseudo_label(str(tiny_hf_dir), [str(corpus)], "reference.jsonl", **args)

    real_chunk, calls, crash = pl.classify_chunk, [], [True]

    def interrupted(*a, **k):
        calls.append(len(a[1]))
        if len(calls) == 4 and crash:
            crash.clear()
            raise RuntimeError("simulated crash")
        return real_chunk(*a, **k)

    monkeypatch.setattr(pl, "classify_chunk", interrupted)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pl.pseudo_label(str(tiny_hf_dir), [str(corpus)], "run.jsonl", **args)
    assert len(rows_of("run.jsonl")) == 30
    with open("run.jsonl", "a", encoding="utf-8") as handle:  # a chunk torn by the interruption
        handle.write('{"text": "Quarterly profit rose sharply on strong dem')

    calls.clear()
    state = pl.pseudo_label(str(tiny_hf_dir), [str(corpus)], "run.jsonl", **args)
    assert calls == [10, 10, 10, 10, 2]  # only rows 30..71 were labelled again
    assert state["complete"] and state["rows_done"] == 72
    assert rows_of("run.jsonl") == rows_of("reference.jsonl")

    # a completed file is left alone; another corpus / a foreign file are refused with one line
    assert pl.pseudo_label(str(tiny_hf_dir), [str(corpus)], "run.jsonl", **args)["rows_done"] == 72
    (corpus / "c.txt").write_text("A new sentence about margins.\n")
    state = json.loads(open("run.jsonl.progress.json").read())
    state["complete"] = False
    open("run.jsonl.progress.json", "w").write(json.dumps(state))
    with pytest.raises(FinlightError, match="corpus_sha256"):
        pl.pseudo_label(str(tiny_hf_dir), [str(corpus)], "run.jsonl", **args)
    with pytest.raises(FinlightError, match="incomplete"):
        read_pseudo_labels("run.jsonl", ["negative", "neutral", "positive"])
    open("foreign.jsonl", "w").write("{}\n")
    with pytest.raises(FinlightError, match="without a progress record"):
        pl.pseudo_label(str(tiny_hf_dir), [str(corpus)], "foreign.jsonl", **args)


def test_text_column_of_csv_and_jsonl_with_limit(tiny_hf_dir, in_tmp):
    (in_tmp / "news.csv").write_text('id,headline\n1,"Profit rose, again."\n2,Sales fell.\n3,Sales fell.\n')
    (in_tmp / "news.jsonl").write_text('{"headline": "Orders grew."}\n{"headline": "The plant closed."}\n')
    texts, origins, counts = pl.read_corpus([str(in_tmp / "news.csv"), str(in_tmp / "news.jsonl")],
                                            text_column="headline", limit=3)
    assert texts == ["Profit rose, again.", "Sales fell.", "Orders grew."]
    assert origins[2].endswith("news.jsonl:1") and counts["duplicates"] == 1
    with pytest.raises(FinlightError, match="'text' is not in the header"):
        pl.read_corpus([str(in_tmp / "news.csv")])
    with pytest.raises(FinlightError, match="no such file, folder or pattern"):
        pl.read_corpus([str(in_tmp / "missing")])
    with pytest.raises(FinlightError, match=r"\*.jsonl"):
        pl.pseudo_label(str(tiny_hf_dir), [str(in_tmp / "news.csv")], "out.csv", text_column="headline")


def test_cli_reports_bad_teacher_in_one_line(in_tmp, capsys):
    (in_tmp / "c.txt").write_text("Profit rose.\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["pseudo-label", "--teacher", "./no/such/dir", "--input", "c.txt", "--output", "o.jsonl"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such checkpoint file or directory" in err[0]
