"""The CUDA code paths, end to end (skipped without a GPU): what differs on a GPU is where tensors live (batches,
teachers, quantized weights, restored snapshots, random-number states) and how time and memory are measured."""

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from finlight.cli import run_cli
from helpers import tiny_config

pytestmark = pytest.mark.gpu
GPU = {"accelerator": "gpu", "devices": 1}
RECORD = ["--trainer.callbacks+=test_gpu.RecordDevices"]


class RecordDevices(pl.Callback):
    """Where the trained and the optimised parameters live at the end of each training epoch (Lightning moves
    the module back to the CPU when ``fit`` returns, so this cannot be read afterwards)."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module):
        optimised = [p for o in trainer.optimizers for g in o.param_groups for p in g["params"]]
        self.seen.append({"module": {p.device.type for p in pl_module.parameters()},
                          "optimizer": {p.device.type for p in optimised},
                          "optimised_are_trainable": {id(p) for p in optimised}
                          == {id(p) for p in pl_module.parameters() if p.requires_grad}})


def devices(trainer) -> list[dict]:
    return next(c for c in trainer.callbacks if isinstance(c, RecordDevices)).seen


def val_numbers(trainer) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def test_fit_is_reproducible_on_gpu_and_checkpoints_test_on_cpu(in_tmp):
    """Same seed → same numbers on the GPU (deterministic mode), and a GPU checkpoint scores the same on CPU."""
    config = tiny_config(in_tmp, "gpu", trainer=GPU)
    first = run_cli(["fit", "--config", config, *RECORD])
    assert devices(first.trainer)[-1] == {"module": {"cuda"}, "optimizer": {"cuda"}, "optimised_are_trainable": True}
    second = run_cli(["fit", "--config", config])
    assert val_numbers(first.trainer) == val_numbers(second.trainer)  # bit for bit
    on_gpu = run_cli(["test", "--config", config, "--ckpt_path", "best"]).trainer.callback_metrics
    on_cpu = run_cli(["test", "--config", config, "--ckpt_path", "best", "--trainer.accelerator", "cpu"])
    assert next(on_cpu.model.parameters()).device.type == "cpu"
    for key in ("test/macro_f1", "test/acc", "test/loss"):
        assert float(on_cpu.trainer.callback_metrics[key]) == pytest.approx(float(on_gpu[key]), abs=1e-4), key


def test_resume_on_gpu_restores_the_cuda_random_state(in_tmp):
    """Dropout draws from the CUDA generator: a crash-and-resume must continue its stream, not restart it."""
    from conftest import InterruptAtEpoch  # noqa: F401  (class_path below)

    model = {"scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                         "vocab_size": 600, "max_position_embeddings": 128},
             "learning_rate": 3e-3, "warmup_ratio": 0.1}
    config = tiny_config(in_tmp, "gpu_resume", model=model, trainer={**GPU, "max_epochs": 3})
    straight = run_cli(["fit", "--config", config]).trainer
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", "--config", config, "--experiment", "crashed",
                 "--trainer.callbacks+=conftest.InterruptAtEpoch", "--trainer.callbacks.epoch=2"])
    resumed = run_cli(["fit", "--config", config, "--experiment", "crashed", "--ckpt_path", "last"]).trainer
    for key, value in val_numbers(straight).items():
        assert val_numbers(resumed)[key] == pytest.approx(value, abs=1e-6), key


def test_layer_drop_on_gpu_optimizes_cuda_parameters_and_reloads(in_tmp):
    from helpers import drop_config

    config = drop_config(in_tmp, "gpu_drop")
    fit = run_cli(["fit", "--config", config, "--checkpoint.save_top_k", "-1", "--trainer.accelerator", "gpu",
                   "--trainer.devices", "1", *RECORD])
    module, trainer = fit.model, fit.trainer
    assert module.model.config.num_hidden_layers == 1
    # after each drop the rebuilt optimizer holds exactly the remaining parameters, on the GPU
    assert devices(trainer) == [{"module": {"cuda"}, "optimizer": {"cuda"}, "optimised_are_trainable": True}] * 3
    drops = json.loads((in_tmp / "logs" / "gpu_drop" / "version_0" / "layer_drop.json").read_text())["drops"]
    assert [d["layers_after"] for d in drops] == [2, 1]
    in_memory = float(trainer.callback_metrics["val/macro_f1"])
    again = run_cli(["validate", "--config", config, "--ckpt_path", "last", "--trainer.accelerator", "gpu",
                     "--trainer.devices", "1"])
    assert again.model.model.config.num_hidden_layers == 1
    assert float(again.trainer.callback_metrics["val/macro_f1"]) == pytest.approx(in_memory, abs=1e-6)


def test_latency_profile_on_gpu_reports_cuda_memory(tiny_hf_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finlight.core.callbacks.latency import profile_model

    model = AutoModelForSequenceClassification.from_pretrained(tiny_hf_dir).cuda()
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    texts = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "Sales fell sharply in the quarter."] * 8
    result = profile_model(model, tokenizer, texts, batch_sizes=(1, 8), warmup=2, iterations=5, max_length=32,
                           device=torch.device("cuda"))
    assert result["memory"]["peak_cuda_allocated_mb"] > 0
    for row in result["batches"].values():
        assert row["calls"] == 5 and 0 < row["ms_min"] <= row["ms_p50"] <= row["ms_max"]


def test_predictor_on_cuda_equals_cpu(tiny_hf_dir):
    from finlight.deploy.predictor import Predictor

    texts = ["Operating profit rose to EUR 13.1 mn.", "Net sales decreased.", "The company is based in Espoo."]
    cpu = Predictor.load(str(tiny_hf_dir), backend="torch", device="cpu").predict_proba(texts)
    cuda = Predictor.load(str(tiny_hf_dir), backend="torch", device="cuda").predict_proba(texts)
    assert cuda.shape == cpu.shape == (3, cpu.shape[1])
    assert abs(cuda - cpu).max() < 1e-4


def test_distillation_teacher_follows_the_student_to_the_gpu(tiny_hf_dir, in_tmp):
    from finlight.distill.pseudo_label import pseudo_label
    from helpers import student_args, write_data

    write_data(in_tmp)
    pseudo_label(str(tiny_hf_dir), ["corpus"], "pl.jsonl", progress_bar=False, device="cuda")
    pseudo_label(str(tiny_hf_dir), ["corpus"], "cpu.jsonl", progress_bar=False, device="cpu")
    on_gpu, on_cpu = ([json.loads(line) for line in Path(name).read_text().splitlines()]
                      for name in ("pl.jsonl", "cpu.jsonl"))
    assert len(on_gpu) == len(on_cpu) > 0  # the teacher's soft targets do not depend on where it ran
    assert max(abs(a["logits"][k] - b["logits"][k]) for a, b in zip(on_gpu, on_cpu) for k in a["logits"]) < 1e-4
    cli = run_cli(["fit", *student_args("gpu_pkd"), "--trainer.accelerator", "gpu", "--trainer.devices", "1",
                   "--model.init_args.loss", "pkd", "--model.init_args.teacher", str(tiny_hf_dir),
                   "--model.init_args.pkd_layers", "{1: 1}", "--model.init_args.beta", "0.5", *RECORD])
    module = cli.model
    assert devices(cli.trainer)[-1]["module"] == {"cuda"}  # the projection too
    assert torch.isfinite(cli.trainer.callback_metrics["val/kl_teacher"])
    assert next(module.teacher.model.parameters()).device.type == "cpu"  # followed the student back at teardown


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_lora_sequence_classifier_fits_and_retests_on_gpu(in_tmp, tiny_hf_dir, bits):
    import bitsandbytes as bnb

    model = {"backbone": str(tiny_hf_dir), "lora": {"r": 4, "target_modules": ["query", "value"]},
             "quantization": {"bits": bits, "compute_dtype": "bfloat16"}, "learning_rate": 3e-3}
    config = tiny_config(in_tmp, f"q{bits}", model=model, trainer={**GPU, "precision": "bf16-mixed"})
    fit = run_cli(["fit", "--config", config])
    quantized = [m for m in fit.model.model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    assert quantized and all(m.weight.device.type == "cuda" for m in quantized)
    best = fit.trainer.checkpoint_callback
    again = run_cli(["validate", "--config", config, "--ckpt_path", "best"])
    assert float(again.trainer.callback_metrics["val/macro_f1"]) == pytest.approx(float(best.best_model_score),
                                                                                   abs=1e-6)


def test_dendritic_fit_restructures_on_gpu(in_tmp):
    pytest.importorskip("perforatedai")
    from finlight.dendrites.tracker import PAITracker, optimizer_parameter_ids
    from helpers import dendritic_config

    fit = run_cli(["fit", "--config", dendritic_config(in_tmp), "--trainer.accelerator", "gpu",
                   "--trainer.devices", "1", *RECORD])
    tracker = next(c for c in fit.trainer.callbacks if isinstance(c, PAITracker))
    assert tracker.switch_epochs == [0, 1, 2]
    # each restructure adds dendrites on the GPU and the optimizer is rebuilt over them
    assert all(d == {"module": {"cuda"}, "optimizer": {"cuda"}, "optimised_are_trainable": True}
               for d in devices(fit.trainer)[1:])
    assert optimizer_parameter_ids(fit.trainer) == {id(p) for p in fit.model.parameters() if p.requires_grad}
    scored = float(fit.trainer.callback_metrics["val/loss"])
    again = run_cli(["validate", "--config", dendritic_config(in_tmp), "--ckpt_path", "last",
                     "--trainer.accelerator", "gpu", "--trainer.devices", "1"])
    assert float(again.trainer.callback_metrics["val/loss"]) == pytest.approx(scored, abs=1e-5)


def test_layer_drop_snapshot_waits_in_cpu_memory_and_a_revert_restores_it_to_the_gpu(in_tmp):
    from transformers import LlamaConfig, LlamaForCausalLM

    from finlight.prune.layer_drop import offloaded_copy
    from helpers import drop_config

    model = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512,
                                         num_hidden_layers=4, num_attention_heads=4)).cuda()
    before = torch.cuda.memory_allocated()
    snapshot = offloaded_copy(model)
    assert torch.cuda.memory_allocated() == before  # not one byte more on the GPU
    assert {p.device.type for p in snapshot.parameters()} == {"cpu"}

    config = drop_config(in_tmp, "gpu_collapse", epochs=4, tolerance=0.5, method="block_influence",
                         monitor="val/probe", extra_callbacks=[{"class_path": "helpers.ProbeMetric"}])
    fit = run_cli(["fit", "--config", config, "--trainer.accelerator", "gpu", "--trainer.devices", "1", *RECORD])
    assert fit.trainer.current_epoch == 2 and fit.model.model.config.num_hidden_layers == 3  # restored
    # the epoch that reverted ended with the restored model on the GPU and an optimizer over exactly its weights
    assert devices(fit.trainer)[-1] == {"module": {"cuda"}, "optimizer": {"cuda"}, "optimised_are_trainable": True}


def test_sublayer_pruned_decoder_on_gpu_and_in_4bit_keeps_its_kv_cache_exact(tmp_path):
    """Attention of layer 0 and MLP of layer 2 removed: on the GPU the KV cache gives the full forward's
    logits; saved and reloaded in 4-bit on the GPU with no missing key, cached == uncached generation."""
    from finlight.prune.surgery import RemovedAttention, layer_list
    from helpers import cache_gap, load_4bit, save_pruned_llama

    model = save_pruned_llama(tmp_path, hidden=128)
    assert cache_gap(model.to("cuda").eval()) < 1e-4  # fp32 on the GPU; a wrong cache slot: ~1e-3 and more
    quantized = load_4bit(tmp_path, 0, torch.bfloat16)
    assert isinstance(layer_list(quantized)[0].self_attn, RemovedAttention)
    prompt = torch.tensor([[5, 6, 7, 8]], device="cuda")
    with torch.no_grad():
        cached = quantized.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True)
        uncached = quantized.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_sublayer_schedule_on_gpu(in_tmp):
    from helpers import sublayer_run_config

    config = sublayer_run_config(in_tmp, "gpu_trim", extra_callback="test_gpu.RecordDevices")
    fit = run_cli(["fit", "--config", config, "--trainer.accelerator", "gpu", "--trainer.devices", "1"])
    drops = json.loads((in_tmp / "logs" / "gpu_trim" / "version_0" / "layer_drop.json").read_text())["drops"]
    assert [d["sublayers_after"] for d in drops] == [5, 4, 3]
    assert all(d == {"module": {"cuda"}, "optimizer": {"cuda"}, "optimised_are_trainable": True}
               for d in devices(fit.trainer))
    in_memory = float(fit.trainer.callback_metrics["val/macro_f1"])
    again = run_cli(["validate", "--config", config, "--ckpt_path", "last", "--trainer.accelerator", "gpu",
                     "--trainer.devices", "1"])
    assert float(again.trainer.callback_metrics["val/macro_f1"]) == pytest.approx(in_memory, abs=1e-6)
