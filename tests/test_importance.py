"""Layer-importance scores against hand computations on tiny tensors."""

import math
from contextlib import contextmanager

import pytest
import torch

from finlight.prune.importance import (ablation_scores, angular_distance, angular_distances, block_influence,
                                 block_influences, least_important, token_cosines, weighted_mean)


def two_tokens_and_a_pad(pad_in, pad_out):
    """One sequence: token 1 unchanged (cos 1), token 2 turned by 45° (cos 1/√2), then a padding token."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], pad_in]])
    y = torch.tensor([[[2.0, 0.0], [1.0, 1.0], pad_out]])
    mask = torch.tensor([[1, 1, 0]])
    return x, y, mask


def test_block_influence_by_hand():
    x, y, mask = two_tokens_and_a_pad([3.0, 4.0], [-3.0, -4.0])
    assert block_influence(x, y, mask) == pytest.approx(1 - (1 + 1 / math.sqrt(2)) / 2)
    # unmasked, the pad token (cos −1) counts: (1 + 0.7071 − 1) / 3
    assert block_influence(x, y) == pytest.approx(1 - (1 / math.sqrt(2)) / 3)


def test_padding_does_not_change_the_scores():
    first = two_tokens_and_a_pad([3.0, 4.0], [-3.0, -4.0])
    second = two_tokens_and_a_pad([0.1, -7.0], [5.0, 5.0])
    assert block_influence(*first) == block_influence(*second)
    assert angular_distance(*first) == angular_distance(*second)
    # and the same text padded further in a longer batch scores the same
    x, y, mask = first
    longer = [torch.cat([t, torch.full((1, 2, 2), 9.0)], dim=1) for t in (x, y)]
    assert block_influence(*longer, torch.tensor([[1, 1, 0, 0, 0]])) == pytest.approx(block_influence(x, y, mask))


def test_angular_distance_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    y = torch.tensor([[[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]])
    # cos 1 → 0, cos 0 → 1/2, cos −1 → 1
    assert angular_distance(x, y) == pytest.approx((0 + 0.5 + 1) / 3)
    assert angular_distance(x, y, torch.tensor([[0, 1, 0]])) == pytest.approx(0.5)


def test_per_layer_lists_pair_the_right_states():
    e = torch.tensor([[[1.0, 0.0]]])
    rot = lambda deg: torch.tensor([[[math.cos(math.radians(deg)), math.sin(math.radians(deg))]]])  # noqa: E731
    states = [e, rot(0), rot(90), rot(180)]  # layer 0 keeps, layer 1 turns 90°, layer 2 turns 90° more
    assert block_influences(states) == pytest.approx([0.0, 1.0, 1.0], abs=1e-12)
    assert angular_distances(states, 1) == pytest.approx([0.0, 0.5, 0.5])
    assert angular_distances(states, 2) == pytest.approx([0.5, 1.0])
    assert angular_distances(states, 3) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="n=4"):
        angular_distances(states, 4)


def test_bad_inputs_raise():
    x = torch.ones(1, 2, 3)
    with pytest.raises(ValueError, match="shapes differ"):
        token_cosines(x, torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="mask shape"):
        block_influence(x, x, torch.ones(2, 2))
    with pytest.raises(ValueError, match="no token"):
        block_influence(x, x, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="no weight"):
        weighted_mean([])


def test_weighted_mean():
    assert weighted_mean([(0.2, 3), (0.6, 1)]) == pytest.approx((0.6 + 0.6) / 4)


def test_ablation_scores_bypass_each_unit_once_and_restore():
    """A toy 'model' whose accuracy is the sum of its units' contributions."""
    contribution = {"a": 0.30, "b": 0.05, "c": -0.02}
    active = set(contribution)
    calls = []

    def evaluate():
        calls.append(frozenset(active))
        return 0.5 + sum(contribution[u] for u in active)

    @contextmanager
    def bypass(unit):
        active.discard(unit)
        try:
            yield
        finally:
            active.add(unit)

    baseline, scores = ablation_scores(["a", "b", "c"], evaluate, bypass)
    assert baseline == pytest.approx(0.83)
    assert scores == pytest.approx({"a": 0.30, "b": 0.05, "c": -0.02})
    assert least_important(scores) == "c"  # the model does better without it
    assert active == {"a", "b", "c"} and len(calls) == 4
    assert least_important({"x": 0.1, "y": 0.1}) == "x"
    with pytest.raises(ValueError):
        least_important({})
