"""What study 2 (reports/distill_minilm/) added: a seeded random corpus subsample for `pseudo-label`, the
pseudo-label class balance of `PseudoLabelledDataModule`, and `report`'s KL(teacher ‖ run) and confusion tables."""

import json
import math
from collections import Counter

import numpy as np
import pytest

import finlight.distill.pseudo_label as pl
from finlight.distill.data import PseudoLabelledDataModule, balanced_subsample
from finlight.errors import FinlightError
from finlight.report.compare import build_report

from helpers import DISTILL_CORPUS, RUN_LABELS, RUN_TRUTH, write_data, write_run

LABELS = ["negative", "neutral", "positive"]


# ---------------------------------------------------------------------------------------------- pseudo-label --sample
def test_sample_is_a_seeded_subsample_in_corpus_order_and_resumes(tiny_hf_dir, in_tmp):
    write_data(in_tmp)
    texts, origins = DISTILL_CORPUS, [f"o{i}" for i in range(len(DISTILL_CORPUS))]
    picked, picked_origins = pl.sample_corpus(list(texts), origins, 10, seed=1)
    assert len(picked) == 10 and len(set(picked)) == 10
    positions = [texts.index(t) for t in picked]
    assert positions == sorted(positions) and picked_origins == [f"o{i}" for i in positions]  # corpus order
    assert pl.sample_corpus(list(texts), origins, 10, seed=1)[0] == picked                      # same seed, same texts
    assert pl.sample_corpus(list(texts), origins, 10, seed=2)[0] != picked
    assert pl.sample_corpus(list(texts), origins, 10_000, seed=1)[0] == list(texts)             # fewer texts: all

    state = pl.pseudo_label(str(tiny_hf_dir), ["corpus"], "s.jsonl", sample=10, sample_seed=1, progress_bar=False)
    rows = [json.loads(line) for line in open("s.jsonl", encoding="utf-8")]
    assert [r["text"] for r in rows] == picked and state["total_rows"] == 10 and state["complete"]
    assert state["settings"]["sample"] == 10 and state["corpus_counts"]["sampled_from"] == len(texts)
    again = pl.pseudo_label(str(tiny_hf_dir), ["corpus"], "s.jsonl", sample=10, sample_seed=1, progress_bar=False)
    assert again["rows_done"] == 10  # already complete: nothing relabelled
    with pytest.raises(FinlightError, match="recorded corpus_sha256 differs"):  # another subsample ≠ a resume
        pl.pseudo_label(str(tiny_hf_dir), ["corpus"], "s.jsonl", sample=10, sample_seed=2, progress_bar=False)
    with pytest.raises(FinlightError, match="--limit .* --sample"):
        pl.pseudo_label(str(tiny_hf_dir), ["corpus"], "t.jsonl", sample=5, limit=5, progress_bar=False)


# ---------------------------------------------------------------------------------------------- class balance
def test_balanced_subsample_keeps_the_limiting_class_and_hits_the_shares():
    labels = [0] * 3 + [1] * 50 + [2] * 20
    keep = balanced_subsample(labels, [0.1, 0.6, 0.3], seed=0)
    # n = min(3 / 0.1, 50 / 0.6, 20 / 0.3) = 30 → 3, 18, 9 rows
    assert Counter(labels[i] for i in keep) == {0: 3, 1: 18, 2: 9}
    assert set(range(3)) <= set(keep) and keep == sorted(keep)
    assert keep == balanced_subsample(labels, [0.1, 0.6, 0.3], seed=0)
    assert keep != balanced_subsample(labels, [0.1, 0.6, 0.3], seed=1)
    assert Counter(labels[i] for i in balanced_subsample(labels, [1, 6, 3])) == {0: 3, 1: 18, 2: 9}  # shares normalised
    assert Counter(labels[i] for i in balanced_subsample(labels, [0, 1, 1])) == {1: 20, 2: 20}        # share 0 drops it
    with pytest.raises(FinlightError, match="no pseudo-labelled row"):
        balanced_subsample([1, 1, 2], [0.2, 0.4, 0.4])
    with pytest.raises(FinlightError, match="non-negative"):
        balanced_subsample(labels, [-1, 1, 1])


def _write_pseudo_labels(path, texts, labels):
    with open(path, "w", encoding="utf-8") as handle:
        for i, (text, label) in enumerate(zip(texts, labels)):
            logits = {n: (2.0 if n == LABELS[label] else -1.0) + 0.01 * i for n in LABELS}
            handle.write(json.dumps({"text": text, "source": f"c:{i}", "label": LABELS[label], "logits": logits,
                                     "teacher": "t"}) + "\n")


def test_data_module_balances_pseudo_labels_to_the_labelled_shares(in_tmp):
    write_data(in_tmp)
    texts = [f"Corpus sentence number {i} about margins." for i in range(60)]
    labels = [0] * 4 + [1] * 44 + [2] * 12  # the teacher starves "negative"
    _write_pseudo_labels("pl.jsonl", texts, labels)
    common = dict(path="labelled.csv", label_names=LABELS, max_length=32, batch_size=8)
    plain = PseudoLabelledDataModule(pseudo_label_path="pl.jsonl", **common)
    plain.setup("fit")
    assert len(plain.splits["train"]) == 60

    data = PseudoLabelledDataModule(pseudo_label_path="pl.jsonl", pseudo_label_balance="labelled", **common)
    data.setup("fit")
    labelled = PseudoLabelledDataModule(**common)
    labelled.setup("fit")
    counts = Counter(labelled.labels["train"])
    shares = [counts[c] / sum(counts.values()) for c in range(3)]
    expected = balanced_subsample(labels, shares, seed=42)
    assert [r.text for r in data.splits["train"]] == [texts[i] for i in expected]
    assert data.labels["train"] == [labels[i] for i in expected]
    assert Counter(data.labels["train"])[0] == 4  # every negative kept
    # soft targets stay aligned with their texts
    for row, i in enumerate(expected):
        assert data.teacher_logits["train"][row][labels[i]].item() == pytest.approx(2.0 + 0.01 * i)
    balance = data.report["pseudo_labels"]["balance"]
    assert balance["before"] == {"negative": 4, "neutral": 44, "positive": 12}
    assert balance["after"] == {n: Counter(data.labels["train"])[c] for c, n in enumerate(LABELS)}
    assert data.report["pseudo_labels"]["used"] == len(expected)

    explicit = PseudoLabelledDataModule(pseudo_label_path="pl.jsonl", pseudo_label_balance=[1, 2, 1], **common)
    explicit.setup("fit")
    assert Counter(explicit.labels["train"]) == {0: 4, 1: 8, 2: 4}
    with pytest.raises(FinlightError, match="pseudo_label_balance='even'"):
        PseudoLabelledDataModule(pseudo_label_path="pl.jsonl", pseudo_label_balance="even", **common)
    with pytest.raises(FinlightError, match="2 shares for 3 labels"):
        PseudoLabelledDataModule(pseudo_label_path="pl.jsonl", pseudo_label_balance=[1, 1], **common).setup("fit")


# ---------------------------------------------------------------------------------------------- report
def _add_confusion(folder, truth, predicted):
    path = f"{folder}/test_metrics.json"
    report = json.load(open(path))
    matrix = np.zeros((3, 3), int)
    for y, p in zip(truth, predicted):
        matrix[y, p] += 1
    report["confusion_matrix"] = matrix.tolist()
    json.dump(report, open(path, "w"))


def test_report_adds_kl_to_the_teacher_and_row_normalised_confusion(in_tmp):
    teacher_pred = list(RUN_TRUTH)
    student_pred = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    write_run("logs/teacher/version_0", 1, {"test/acc": 1.0, "test/macro_f1": 1.0}, teacher_pred)
    for seed in (1, 2):
        write_run(f"logs/student/version_{seed}", seed, {"test/acc": 0.9, "test/macro_f1": 0.9}, student_pred)
        _add_confusion(f"logs/student/version_{seed}", RUN_TRUTH, student_pred)
    result = build_report(["logs"], "out", baseline="teacher", resamples=200, teacher="logs/teacher/version_0")

    # write_run's probabilities: 0.8 on the predicted class, 0.1 elsewhere (normalised by the report: ÷ 1.0)
    p, q = np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.8, 0.1])
    disagree = sum(a != b for a, b in zip(teacher_pred, student_pred))
    expected = disagree * float(np.sum(p * np.log(p / q))) / len(RUN_TRUTH)
    runs = {r["group"] + str(r["seed"]): r for r in result["runs"]}
    assert runs["teacher1"]["kl_teacher"] == pytest.approx(0.0, abs=1e-12)
    assert runs["student1"]["kl_teacher"] == pytest.approx(expected) and disagree > 0
    groups = {g["group"]: g for g in result["groups"]}
    assert groups["student"]["kl_teacher_mean"] == pytest.approx(expected)

    rows = {r["true"]: r for r in result["confusion"] if r["group"] == "student"}
    for c, name in enumerate(RUN_LABELS):
        truth_c = [i for i, y in enumerate(RUN_TRUTH) if y == c]
        assert rows[name]["n"] == 2 * len(truth_c) and rows[name]["runs"] == 2
        for k, other in enumerate(RUN_LABELS):
            share = sum(student_pred[i] == k for i in truth_c) / len(truth_c)
            assert rows[name][f"pred_{other}"] == pytest.approx(share)
        assert math.isclose(sum(rows[name][f"pred_{o}"] for o in RUN_LABELS), 1.0)
    assert "Confusion matrices" in result["markdown"] and "KL(teacher‖run)" in result["markdown"]
    assert open("out/confusion.csv").read().startswith("group,runs,true,n,pred_")
    with pytest.raises(FinlightError, match="--teacher logs/nowhere: no test_predictions.csv"):
        build_report(["logs"], "out", resamples=200, teacher="logs/nowhere")


# ---------------------------------------------------------------------------------------------- the study's configs
STUDY_CONFIGS = {"distill_minilm_tiny_ce": "loss: ce", "distill_minilm_tiny_kd_t2": "temperature: 2.0",
                 "distill_minilm_tiny_kd_t5": "temperature: 5.0", "distill_minilm_tiny_kd_t9": "temperature: 9.0",
                 "distill_minilm_tiny_pkd": "loss: pkd", "distill_minilm_tiny_fresh": "loss: ce",
                 "distill_minilm_cut3_kd": "keep_layers:", "distill_minilm_cut3_fresh": "keep_layers:"}


@pytest.mark.parametrize("name", sorted(STUDY_CONFIGS))
def test_study_configs_parse_and_name_their_command(name, capsys):
    from pathlib import Path

    from finlight.cli import run_cli

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    assert path.read_text().startswith(f"# python -m finlight seeds --config configs/{name}.yaml --seeds 1 2 3")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "DistillationStudent" in printed and "Sentences_AllAgree.txt" in printed and STUDY_CONFIGS[name] in printed
    assert ("minilm_ect_train_25k.jsonl" in printed) == ("fresh" not in name)


def test_stage_two_runs_from_their_own_stage_one_checkpoints_are_one_configuration(in_tmp):
    import yaml

    for seed in (1, 2):
        folder = f"logs/stage2/version_{seed}"
        write_run(folder, seed, {"test/macro_f1": 0.8}, [0] * 10)
        config = yaml.safe_load(open(f"{folder}/config.yaml"))
        config["model"]["init_args"]["init_from"] = f"checkpoints/stage1/version_{seed}/best.ckpt"
        yaml.safe_dump(config, open(f"{folder}/config.yaml", "w"))
    result = build_report(["logs"], "out", resamples=200)
    assert not any("mixes configurations" in n for n in result["notes"])
