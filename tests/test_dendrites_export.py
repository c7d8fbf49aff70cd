"""Export from a dendritic checkpoint: ONNX keeps the dendrites and matches the Lightning model; a Hugging Face
directory (which would silently drop them) is refused."""

import numpy as np
import pytest
import torch

pytest.importorskip("perforatedai", reason="the dendrites extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from finlight.errors import FinlightError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_onnx_export_of_a_dendritic_checkpoint_matches_the_lightning_model(in_tmp):
    from helpers import dendritic_config

    from finlight.cli import run_cli
    from finlight.dendrites.perforate import dendrite_count
    from finlight.deploy.export import export_hf
    from finlight.core.restore import restore_from_checkpoint
    from finlight.deploy.onnx import _encode, _session, export_onnx

    # smoke mode: switches after epochs 0, 1, 2; epoch 3 trains the third set and its checkpoint is the last
    fit = run_cli(["fit", "--config", dendritic_config(in_tmp, max_epochs=4)])
    assert dendrite_count() == 3
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    module = fit.model.eval()
    texts = ["Profit rose sharply.", "The company cut its forecast after weak orders in the quarter.", "Flat."]
    batch = _encode(module.tokenizer, texts, 48)
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    with torch.inference_mode():
        expected = module(ids, mask).numpy()

    model, _, labels, _ = restore_from_checkpoint(ckpt)  # no Lightning: rebuilt with its three dendrite sets
    assert labels == ["negative", "neutral", "positive"]
    deepest = [n for n, _ in model.named_modules() if n.endswith("dendrite_module.layers.2")]
    assert len(deepest) == 6  # the third dendrite on each of the six encoder linear layers
    with torch.inference_mode():
        restored = model(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(restored, expected, atol=1e-6)

    manifest = export_onnx(ckpt, str(in_tmp / "onnx"), max_length=48)
    assert manifest["exporter"] == "torchscript"  # torch.export cannot trace perforatedai's modules: fallback
    assert manifest["check"]["fp32"]["max_abs_diff"] < 1e-4
    onnx_logits = _session(str(in_tmp / "onnx" / "model.onnx")).run(["logits"], batch)[0]
    np.testing.assert_allclose(onnx_logits, expected, atol=1e-4)  # the dendrites are in the graph

    with pytest.raises(FinlightError, match="not a plain Hugging Face model.*export-onnx"):
        export_hf(ckpt, str(in_tmp / "hf"))
