"""Label mapping, cleaning, duplicates, and the grouped stratified split."""

from collections import Counter

import pytest

from finlight.core.data.cleaning import clean_text, find_duplicates, resolve_duplicates
from finlight.core.data.labels import LabelSpace
from finlight.core.data.splits import grouped_stratified_split
from finlight.core.data.sources import read_records
from finlight.errors import FinlightError

from conftest import KAGGLE_CSV


def test_label_space_normalises_case_and_maps_other_vocabularies():
    space = LabelSpace(["negative", "neutral", "positive"], {"0": "negative", "Bullish": "positive"})
    assert [space.index(x) for x in ["Negative", " POSITIVE ", "neutral", "0", "bullish", "bearish"]] == [0, 2, 1, 0, 2, None]
    assert LabelSpace.infer(["Up", "down", "UP", "0"], {"0": "down"}) == ["down", "up"]


def test_label_space_rejects_bad_config():
    with pytest.raises(FinlightError, match="label_map maps 'x' to 'sideways'"):
        LabelSpace(["up", "down"], {"x": "sideways"})
    with pytest.raises(FinlightError, match="duplicates"):
        LabelSpace(["Up", "up"])


def test_clean_text_removes_urls_and_collapses_whitespace():
    assert clean_text("Buy  $XYZ\there https://t.co/abc now www.x.com/y", remove_urls=True) == "Buy $XYZ here now"
    assert clean_text("  a \n b  ", remove_urls=False) == "a b"


def test_duplicate_report_and_policies():
    texts = ["a", "b", "a", "c", "c", "d"]
    labels = [0, 1, 0, 1, 2, 2]
    report = find_duplicates(texts, labels)
    assert (report.duplicated_texts, report.duplicate_rows, report.conflicting_texts) == (2, 2, 1)
    assert resolve_duplicates(texts, labels, "keep") == [0, 1, 2, 3, 4, 5]
    assert resolve_duplicates(texts, labels, "drop") == [0, 1, 5]  # one 'a'; conflicting 'c' removed
    assert resolve_duplicates(texts + ["c"], labels + [2], "majority") == [0, 1, 4, 5]


def test_split_is_stratified_grouped_and_deterministic():
    texts, labels = [], []
    for i in range(300):
        label = 0 if i < 150 else 1 if i < 250 else 2
        texts.append(f"text {i}")
        labels.append(label)
    texts += ["dup"] * 5 + ["conflict"] * 4
    labels += [0] * 5 + [0, 1, 0, 1]
    train, val, test = grouped_stratified_split(texts, labels, (0.8, 0.1, 0.1), seed=7)
    assert sorted(train + val + test) == list(range(len(texts)))
    # label 0 has 150 single texts + 2 groups ('dup', 'conflict': tie → first label), label 1 100, label 2 50
    groups_per_label = {0: 152, 1: 100, 2: 50}
    for part, share in ((val, 0.1), (test, 0.1)):
        groups = Counter(labels[texts.index(t)] for t in {texts[i] for i in part})
        assert groups == {k: round(share * n) for k, n in groups_per_label.items()}
    for text in ("dup", "conflict"):
        homes = [name for name, part in (("train", train), ("val", val), ("test", test))
                 if any(texts[i] == text for i in part)]
        assert len(homes) == 1
    assert grouped_stratified_split(texts, labels, (0.8, 0.1, 0.1), seed=7) == (train, val, test)
    assert grouped_stratified_split(texts, labels, (0.8, 0.1, 0.1), seed=8) != (train, val, test)


def test_split_ratios_are_checked():
    with pytest.raises(FinlightError, match="split_ratios"):
        grouped_stratified_split(["a"], [0], (0.8, 0.3, 0.1), seed=0)


@pytest.mark.integration
def test_kaggle_conflicting_duplicates_never_cross_splits():
    records = read_records(str(KAGGLE_CSV), text_column="Sentence", label_column="Sentiment")
    space = LabelSpace(["negative", "neutral", "positive"])
    texts = [r.text for r in records]
    labels = [space.index(r.label) for r in records]
    report = find_duplicates(texts, labels)
    assert report.conflicting_texts == 514 and report.duplicated_texts == 520
    train, val, test = grouped_stratified_split(texts, labels, (0.8, 0.1, 0.1), seed=42)
    sets = [{texts[i] for i in part} for part in (train, val, test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
