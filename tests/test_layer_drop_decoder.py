"""SuccessiveLayerDrop on the decoder path: a tiny from-scratch Llama `CausalLMClassifier` (label words) on data
written by the test; ablation scores with the class probabilities the module itself evaluates with."""

import json

import pytest
import torch

from finlight.prune.layer_drop import calibration_metric, first_examples
from finlight.cli import run_cli
from helpers import decoder_config


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ablation", "block_influence"])
def test_decoder_drops_to_target_renumbers_layers_and_reloads(in_tmp, method, one_thread):
    config = decoder_config(in_tmp, method)
    fit = run_cli(["fit", "--config", config])
    module = fit.model
    layers = module.model.model.layers
    assert module.model.config.num_hidden_layers == len(layers) == 1
    assert layers[0].self_attn.layer_idx == 0  # the KV cache index follows the new position
    drops = json.loads((in_tmp / "logs" / f"decoder_{method}" / "version_0" / "layer_drop.json").read_text())["drops"]
    assert [d["layers_after"] for d in drops] == [2, 1] and len(drops[0]["scores"]) == 3
    if method == "ablation":
        for d in drops:  # the scores are the module's class metric (minus cross-entropy of label-word probs)
            assert d["metric_before"] - d["metric_after"] == pytest.approx(d["score"], abs=1e-5)
            assert d["metric_before"] < 0
    tested = run_cli(["test", "--config", config, "--ckpt_path", "last"])
    assert tested.model.model.config.num_hidden_layers == 1
    assert 0.0 <= float(tested.trainer.callback_metrics["test/acc"]) <= 1.0


def test_calibration_metric_of_a_causal_classifier_uses_its_label_probabilities():
    class Stub(torch.nn.Module):
        """label_probs only: a decoder's forward returns vocabulary logits, which must not be scored."""

        def label_probs(self, batch):
            return batch["probs"]

        def forward(self, *args):
            raise AssertionError("a causal-LM classifier's forward is not a class score")

    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 2, 1])
    loader = [{"probs": probs[:2], "labels": labels[:2], "prompt_lengths": torch.tensor([3, 4]), "name": "x"},
              {"probs": probs[2:], "labels": labels[2:], "prompt_lengths": torch.tensor([5]), "name": "y"}]
    batches = first_examples(loader, 3, "cpu")
    assert set(batches[0]) == {"probs", "labels", "prompt_lengths"}  # per-example tensors kept, the rest not
    expected = -(torch.log(torch.tensor(0.7)) + torch.log(torch.tensor(0.6)) + torch.log(torch.tensor(0.4))) / 3
    assert calibration_metric(Stub(), batches, "loss") == pytest.approx(-float(expected), abs=1e-6)
    assert calibration_metric(Stub(), batches, "acc") == pytest.approx(2 / 3)
