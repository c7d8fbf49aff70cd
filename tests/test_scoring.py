"""Constrained label scoring, answer parsing and the answer-only loss, against hand-computed values."""

import math

import pytest
import torch

from finlight.errors import FinlightError
from finlight.core.losses import answer_only_lm_loss, answer_prediction_mask
from finlight.causal_lm.scoring import (cached_label_log_probs, check_label_tokens, class_log_probs,
                                       first_token_log_probs, label_continuations, parse_answer, sequence_log_prob,
                                       unparseable_rate)

WORDS = ["Negative", "Neutral", "Positive"]


def test_first_token_scores_are_a_softmax_over_the_label_tokens_only():
    logits = torch.tensor([[1.0, 2.0, 0.5, 3.0, 9.0]])  # token 4 is no label: it must not matter
    log_probs = first_token_log_probs(logits, [3, 1])
    # log softmax([3, 2]) = [-log(1 + e^-1), -log(1 + e^1)]
    expected = torch.tensor([[-math.log1p(math.exp(-1)), -math.log1p(math.exp(1))]])
    torch.testing.assert_close(log_probs, expected)
    assert log_probs.exp().sum().item() == pytest.approx(1.0)


def test_sequence_log_prob_sums_the_marked_next_token_log_probs():
    # vocab 3; logits at t=0 give p = [.25, .5, .25], at t=1 p = [.6, .2, .2]
    logits = torch.log(torch.tensor([[[1.0, 2.0, 1.0], [3.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]))
    input_ids = torch.tensor([[2, 1, 0]])
    both = sequence_log_prob(logits, input_ids, torch.tensor([[0, 1, 1]]))
    assert both.item() == pytest.approx(math.log(0.5) + math.log(0.6), abs=1e-6)
    last = sequence_log_prob(logits, input_ids, torch.tensor([[0, 0, 1]]))
    assert last.item() == pytest.approx(math.log(0.6), abs=1e-6)
    with pytest.raises(ValueError, match="position 0"):
        sequence_log_prob(logits, input_ids, torch.tensor([[1, 0, 0]]))


def test_class_log_probs_normalise_sequence_scores():
    scores = torch.tensor([[math.log(0.1), math.log(0.3)]])
    torch.testing.assert_close(class_log_probs(scores).exp(), torch.tensor([[0.25, 0.75]]))


def test_label_token_checks_choose_the_mode_and_refuse_ambiguous_labels():
    assert check_label_tokens([[5], [6], [7]], WORDS) == "first_token"
    assert check_label_tokens([[5, 9], [6], [7]], WORDS) == "sequence"
    with pytest.raises(FinlightError, match="share a first token"):
        check_label_tokens([[5], [5], [7]], WORDS)
    with pytest.raises(FinlightError, match="prefix"):
        check_label_tokens([[5], [5, 8], [7]], WORDS)
    with pytest.raises(FinlightError, match="no tokens"):
        check_label_tokens([[], [6], [7]], WORDS)


@pytest.mark.parametrize("answer, expected", [
    ("Positive", 2), (" negative.", 0), ("NEUTRAL\n", 1), ("**Positive**", 2), ('"Neutral" because', 1),
    ("Positively", None), ("I think positive", None), ("", None), ("  ", None), ("Pos", None),
])
def test_parse_answer_reads_the_label_word_the_answer_starts_with(answer, expected):
    assert parse_answer(answer, WORDS) == expected


def test_parse_prefers_the_longer_label_word_and_counts_unparseable():
    assert parse_answer("very positive", ["very", "very positive"]) == 1
    assert unparseable_rate([0, None, 2, None]) == 0.5
    assert unparseable_rate([]) == 0.0


def test_answer_only_loss_is_the_mean_over_answer_tokens():
    # two rows, vocab 2, uniform logits except where noted; labels -100 on prompt and padding
    logits = torch.zeros(2, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # predicts position 2 of row 0: p(1) = .75
    lm_labels = torch.tensor([[-100, -100, 1], [-100, 0, -100]])
    # row 0 position 2: -log .75; row 1 position 1 (from logits[1, 0], uniform): -log .5
    expected = (-math.log(0.75) - math.log(0.5)) / 2
    assert answer_only_lm_loss(logits, lm_labels).item() == pytest.approx(expected, abs=1e-6)


def test_cached_scores_add_the_first_token_from_the_prompt_and_the_rest_from_the_continuation():
    labels = [[5, 9, 2], [6], [7, 3]]
    inputs, targets, mask = label_continuations(labels)
    assert inputs.tolist() == [[5, 9], [0, 0], [7, 0]] and targets.tolist() == [[9, 2], [0, 0], [3, 0]]
    assert mask.tolist() == [[True, True], [False, False], [True, False]]
    torch.manual_seed(0)
    n, vocab = 2, 11
    prompt = torch.randn(n, vocab)
    continuation = torch.randn(n * 3, 2, vocab)  # row i*3 + j: prompt i, label j
    got = cached_label_log_probs(prompt, continuation, labels)
    p, c = prompt.log_softmax(-1), continuation.log_softmax(-1)
    for i in range(n):
        expected = [p[i, 5] + c[3 * i, 0, 9] + c[3 * i, 1, 2], p[i, 6], p[i, 7] + c[3 * i + 2, 0, 3]]
        torch.testing.assert_close(got[i], torch.stack(expected))
    torch.testing.assert_close(cached_label_log_probs(prompt, None, [[5], [6]]), p[:, [5, 6]])


def test_answer_prediction_mask_marks_the_positions_that_predict_answer_tokens():
    lm_labels = torch.tensor([[-100, -100, 1], [-100, 0, -100]])
    assert answer_prediction_mask(lm_labels).tolist() == [[False, True, False], [True, False, False]]
