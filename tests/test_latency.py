"""Latency profiler: real timings, consistent figures, footprint, the callback's JSON / TensorBoard output."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from conftest import SENTENCES
from finlight.core.callbacks.latency import latency_summary, model_footprint, profile_model, speedups, time_calls
from finlight.errors import FinlightError

TEXTS = [t for ts in SENTENCES.values() for t in ts]


def test_time_calls_times_every_call_after_untimed_warmup():
    calls = []

    def forward(input_ids, attention_mask):
        calls.append(input_ids)
        time.sleep(0.004)

    batches = [(torch.zeros(1, 3), torch.ones(1, 3))] * 5
    seconds = time_calls(forward, batches, warmup=2, device=torch.device("cpu"))
    assert len(calls) == 7 and len(seconds) == 5
    assert seconds.min() >= 0.004 and np.median(seconds) < 0.2


def test_latency_summary_by_hand():
    row = latency_summary(np.array([0.010, 0.020, 0.030, 0.040]), batch_size=8)
    assert row["ms_mean"] == pytest.approx(25.0) and row["ms_std"] == pytest.approx(np.std([10, 20, 30, 40], ddof=1))
    assert (row["ms_min"], row["ms_p50"], row["ms_max"]) == pytest.approx((10.0, 25.0, 40.0))
    assert row["ms_p95"] == pytest.approx(38.5)  # linear interpolation between 30 and 40
    assert row["samples_per_s"] == pytest.approx(8 * 4 / 0.1) and row["ms_per_sample"] == pytest.approx(25 / 8)


def test_profile_model_figures_are_positive_and_consistent(tiny_hf_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    threads = torch.get_num_threads()
    result = profile_model(model, tokenizer, TEXTS, batch_sizes=(1, 4), warmup=1, iterations=6, max_length=32,
                           num_threads=1)
    assert torch.get_num_threads() == threads and result["setup"]["torch_threads"] == 1
    for b, row in result["batches"].items():
        assert row["calls"] == 6 and row["batch_size"] == int(b)
        assert 0 < row["ms_min"] <= row["ms_p50"] <= row["ms_p95"] <= row["ms_max"]
        assert row["ms_min"] <= row["ms_mean"] <= row["ms_max"]
        assert row["samples_per_s"] == pytest.approx(int(b) / (row["ms_mean"] / 1000), rel=1e-9)
    params = sum(p.numel() for p in model.parameters())
    assert result["parameters"] == result["trainable_parameters"] == params
    assert result["disk_size_mb"] == pytest.approx(params * 4 / 1e6, rel=0.1)  # fp32 safetensors + header
    assert result["memory"]["peak_process_rss_mb"] > 0 and result["setup"]["mean_tokens_per_text"] > 3
    assert not model.training  # from_pretrained gives eval mode, and the profiler restores what it found
    model.train()
    profile_model(model, tokenizer, TEXTS[:2], batch_sizes=(2,), warmup=0, iterations=2)
    assert model.training


def test_speedups_and_errors():
    ours = {"batches": {"1": {"ms_mean": 2.0}, "32": {"ms_mean": 10.0}}}
    reference = {"batches": {"1": {"ms_mean": 40.1}, "32": {"ms_mean": 300.0}}}
    assert speedups(ours, reference) == pytest.approx({"bs1": 20.05, "bs32": 30.0})
    with pytest.raises(FinlightError, match="no texts"):
        profile_model(torch.nn.Linear(2, 2), None, [])
    with pytest.raises(FinlightError, match="iterations"):
        profile_model(torch.nn.Linear(2, 2), None, ["x"], iterations=1)


def test_footprint_of_a_plain_module():
    info = model_footprint(torch.nn.Linear(100, 10))
    assert info["parameters"] == 1010 and 0.004 < info["disk_size_mb"] < 0.01


@pytest.mark.slow
def test_callback_after_test_writes_json_tensorboard_and_reference_speedup(binary_run_config, tiny_hf_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from finlight.cli import run_cli

    config = binary_run_config(
        trainer_yaml="  callbacks:\n  - class_path: finlight.core.callbacks.LatencyProfiler\n"
                     f"    init_args: {{batch_sizes: [1, 4], warmup: 1, iterations: 4, num_threads: 1, "
                     f"reference: {tiny_hf_dir}}}\n", max_epochs=1)
    run_cli(["fit", "--config", config])
    cli = run_cli(["test", "--config", config, "--ckpt_path", "best"])
    folder = cli.trainer.log_dir
    result = json.load(open(os.path.join(folder, "latency.json")))
    assert set(result["batches"]) == {"1", "4"} and result["model"] == "BertForSequenceClassification"
    assert result["setup"]["texts"] == 18 and result["setup"]["max_length"] == 32
    assert result["parameters"] == sum(p.numel() for p in cli.model.model.parameters())
    assert result["reference"]["model"] == str(tiny_hf_dir)
    for b in ("1", "4"):
        ratio = result["reference"]["batches"][b]["ms_mean"] / result["batches"][b]["ms_mean"]
        assert result["speedup"][f"bs{b}"] == pytest.approx(ratio)
    events = EventAccumulator(folder)
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"latency/ms_mean_bs1", "latency/samples_per_s_bs4", "latency/speedup_bs1", "latency/parameters"} <= scalars
    logged = events.Scalars("latency/ms_mean_bs1")[-1].value
    assert logged == pytest.approx(result["batches"]["1"]["ms_mean"], rel=1e-5)
