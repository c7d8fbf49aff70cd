"""Pure functions against hand-computed values and reference implementations."""

import math

import numpy as np

import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight

from finlight.core import ClassificationDataModule
from finlight.core.losses import weighted_cross_entropy
from finlight.core.metrics import classification_metrics, flatten_metrics
from finlight.core.optim import adamw_param_groups, build_scheduler


def test_weighted_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    weights = torch.tensor([1.0, 3.0])
    nll = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.e / (1 + math.e)), math.log(2)]
    expected_plain = sum(nll) / 3
    expected_weighted = (1 * nll[0] + 3 * nll[1] + 1 * nll[2]) / (1 + 3 + 1)
    assert weighted_cross_entropy(logits, labels).item() == pytest.approx(expected_plain, rel=1e-6)
    assert weighted_cross_entropy(logits, labels, weights).item() == pytest.approx(expected_weighted, rel=1e-6)


def test_metrics_match_sklearn_and_flatten_per_class():
    torch.manual_seed(0)
    logits = torch.randn(50, 3)
    labels = torch.randint(0, 3, (50,))
    metrics = classification_metrics(3)
    metrics.update(logits, labels)
    flat = flatten_metrics(metrics.compute(), ["neg", "neu", "pos"], "test")
    preds = logits.argmax(-1)
    assert flat["test/macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-6)
    assert flat["test/acc"] == pytest.approx((preds == labels).float().mean().item(), abs=1e-6)
    per_class = f1_score(labels, preds, average=None)
    assert [flat[f"test/f1_{n}"] for n in ("neg", "neu", "pos")] == pytest.approx(list(per_class), abs=1e-6)
    assert "test/confusion" not in flat


def test_balanced_class_weights_equal_sklearn(in_tmp):
    rows = ["text,label"] + [f"pos {i},positive" for i in range(30)] + [f"neg {i},negative" for i in range(10)] \
        + [f"neu {i},neutral" for i in range(60)]
    (in_tmp / "d.csv").write_text("\n".join(rows) + "\n")
    dm = ClassificationDataModule(path="d.csv", label_names=["negative", "neutral", "positive"],
                                  class_weights="balanced")
    dm.setup("fit")
    train = dm.labels["train"]
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=np.array(train))
    assert dm.class_weights == pytest.approx(list(expected))


def test_no_weight_decay_on_bias_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    decay, no_decay = adamw_param_groups(model, 0.01)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_tied_weights_are_listed_once():
    """A decoder ties its input embedding to its output layer: listed twice, AdamW would step it twice."""
    embedding, head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = torch.nn.ModuleDict({"embed": embedding, "head": head})
    decay, no_decay = adamw_param_groups(model, 0.01)
    assert [id(p) for p in decay["params"]] == [id(embedding.weight)] and no_decay["params"] == []


def test_linear_warmup_schedule_and_step_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = build_scheduler(optimizer, "linear", total_steps=10, warmup_ratio=0.2)
    assert scheduler["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler["scheduler"].step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0]) and lrs[-1] == pytest.approx(0.125)
    optimizer = torch.optim.AdamW([param], lr=1.0)
    step = build_scheduler(optimizer, "step", total_steps=10, warmup_ratio=0.0, step_size=1, gamma=0.1)
    assert step["interval"] == "epoch"
    optimizer.step()
    step["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_adamw_is_fused_on_cpu_and_steps_like_the_for_loop_one():
    from types import SimpleNamespace

    from finlight.core.optim import adamw_with_schedule

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    hparams = SimpleNamespace(learning_rate=1e-2, weight_decay=0.01, scheduler="constant", warmup_ratio=0.0,
                              get=lambda key, default=None: default)
    fused = adamw_with_schedule(models[0], hparams, lambda: 10)["optimizer"]
    assert fused.defaults["fused"] is True
    reference = torch.optim.AdamW(adamw_param_groups(models[1], 0.01), lr=1e-2)  # the for-loop implementation
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(5):
        for model, optimizer in ((models[0], fused), (models[1], reference)):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
