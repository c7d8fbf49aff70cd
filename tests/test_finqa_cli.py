"""FinQA end to end through the CLI with tiny models: a from-scratch decoder learns a program and is scored by
executing it; the two shipped configs run with their backbone swapped for a tiny local Llama (QLoRA fit, test,
predict, export; evaluation of a layer-dropped directory); oracle context renames the metrics."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from finlight.cli import run_cli
from finlight.errors import FinlightError

from conftest import save_tiny_llama
from helpers import FINQA_SENTENCES as SENTENCES, finqa_bpe_tokenizer as bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
METRIC_NAMES = {"exec_acc", "prog_acc", "prog_acc_symbolic", "unparseable_rate", "nonexecutable_rate", "loss",
                "generation_tokens_per_s", "prompt_tokens_per_generate_s"}
TINY_TRAINER = {"trainer.max_epochs": 1, "trainer.precision": "32-true", "trainer.accelerator": "cpu",
                "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
                "trainer.accumulate_grad_batches": 1, "trainer.log_every_n_steps": 1}


def finqa_record(i: int, program: str, answer: float) -> dict:
    """A record in the original FinQA format, written for these tests."""
    return {"id": f"T/2020/page_{i}.pdf-1", "pre_text": SENTENCES[:2], "post_text": SENTENCES[2:],
            "table": [["", "2015", "2014"], ["net revenue", "$ 5829", "$ 5735"]],
            "qa": {"question": f"what is the value asked in question {i}?", "program": program, "exe_ans": answer,
                   "answer": str(answer), "gold_inds": {"text_0": SENTENCES[0], "table_1": "net revenue is 5829 ;"}}}


def write_data(folder: Path) -> dict:
    """Train: 24 questions, all answered by add(1, 2). Eval: 4 questions, half add(1, 2) = 3, half
    subtract(5, 1) = 4 — a model that learnt the constant program scores exactly 0.5."""
    train = [finqa_record(i, "add(1, 2)", 3.0) for i in range(24)]
    evaluation = [finqa_record(100 + i, "add(1, 2)", 3.0) if i % 2 == 0 else
                  finqa_record(100 + i, "subtract(5, 1)", 4.0) for i in range(4)]
    paths = {"train": folder / "train.json", "eval": folder / "eval.json"}
    paths["train"].write_text(json.dumps(train))
    paths["eval"].write_text(json.dumps(evaluation))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("finqa_llama"), bpe_tokenizer(), max_position_embeddings=512)


def swapped_config(folder: Path, config: str, overrides: dict) -> str:
    loaded = yaml.safe_load((REPO / "configs" / config).read_text())
    for dotted, value in overrides.items():
        node = loaded
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = folder / config
    path.write_text(yaml.safe_dump(loaded))
    return str(path)


def metrics_of(cli, stage: str = "test") -> dict:
    return json.loads((Path(cli.trainer.log_dir) / f"{stage}_metrics.json").read_text())["metrics"]


def test_scratch_decoder_learns_the_program_and_is_scored_by_executing_it(in_tmp):
    data = write_data(in_tmp)
    config = {
        "seed_everything": 7,
        "trainer": {"max_epochs": 12, "deterministic": True, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0},
        "checkpoint": {"monitor": "val/exec_acc", "mode": "max"},  # files named after the monitor by default
        "report": {"write_predictions": False},
        "model": {"class_path": "finlight.finqa.FinQAGenerator", "init_args": {
            "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                        "intermediate_size": 64, "vocab_size": 300},
            "learning_rate": 1e-2, "warmup_ratio": 0.0, "max_new_tokens": 12}},
        "data": {"class_path": "finlight.finqa.FinQADataModule", "init_args": {
            "train_path": data["train"], "val_path": data["eval"], "test_path": data["eval"],
            "context_tokens": 24, "batch_size": 8}},
    }
    path = in_tmp / "finqa_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run_cli(["fit", "--config", str(path)])
    tested = run_cli(["test", "--config", str(path), "--ckpt_path", "best"])  # selected on val/exec_acc
    assert Path(tested.trainer.ckpt_path).name.endswith("-val_exec_acc0.5000.ckpt")
    metrics = metrics_of(tested)
    assert {k.split("/")[1] for k in metrics} == METRIC_NAMES
    # the model writes add(1, 2) for every question (its WordPiece decodes "add ( 1, 2 )": still parsed)
    assert metrics["test/exec_acc"] == 0.5 and metrics["test/prog_acc"] == metrics["test/prog_acc_symbolic"] == 0.5
    assert metrics["test/unparseable_rate"] == 0.0 and metrics["test/nonexecutable_rate"] == 0.0
    rows = [json.loads(line) for line in (Path(tested.trainer.log_dir) / "test_generations.jsonl").open()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert [(r["parsed"], r["executed"], r["correct"]) for r in rows] == [("add(1, 2)", 3.0, c)
                                                                          for c in (True, False, True, False)]
    assert [r["gold_program"] for r in rows] == ["add(1, 2)", "subtract(5, 1)"] * 2

    predicted = run_cli(["predict", "--config", str(path), "--ckpt_path", "last"])
    with open(Path(predicted.trainer.log_dir) / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == [f"what is the value asked in question {100 + i}?" for i in range(4)]
    assert set(rows[0]) == {"text", "id", "generated", "parsed", "executed", "gold_answer", "gold_program",
                            "correct", "status"}
    assert [r["correct"] for r in rows] == ["True", "False", "True", "False"]


@pytest.mark.slow
def test_qlora_config_fits_tests_predicts_and_exports_on_a_tiny_llama(in_tmp, tiny_llama_dir):
    from finlight.deploy.export import export_hf

    data = write_data(in_tmp)
    config = swapped_config(in_tmp, "finqa_llama32_qlora.yaml", {
        **TINY_TRAINER, "trainer.limit_train_batches": 3, "model.init_args.backbone": str(tiny_llama_dir),
        "model.init_args.dtype": "float32", "model.init_args.quantization.compute_dtype": "float32",
        "model.init_args.lora.r": 4, "model.init_args.max_new_tokens": 6,
        "data.init_args.train_path": data["train"], "data.init_args.val_path": data["eval"],
        "data.init_args.test_path": data["eval"], "data.init_args.context_tokens": 16,
        "data.init_args.batch_size": 4, "data.init_args.eval_batch_size": 4})
    run_cli(["fit", "--config", config])
    ckpt = next((in_tmp / "checkpoints" / "finqa_llama32_qlora").glob("version_*/last.ckpt"))
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["finlight"]["task"] == "finqa-generator" and checkpoint["finlight"]["target"] == "program"
    assert checkpoint["state_dict"] and all(".lora_" in k for k in checkpoint["state_dict"])  # adapters only
    tested = run_cli(["test", "--config", config, "--ckpt_path", "last"])
    metrics = metrics_of(tested)
    assert {k.split("/")[1] for k in metrics} == METRIC_NAMES
    rates = metrics["test/unparseable_rate"] + metrics["test/nonexecutable_rate"]
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items()
               if k != "test/loss" and "tokens_per_" not in k) and rates <= 1.0
    lines = (Path(tested.trainer.log_dir) / "test_generations.jsonl").read_text().splitlines()
    assert len(lines) == 4
    merged = export_hf(str(ckpt), str(in_tmp / "merged"), merged=True)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert not any("lora" in k for k in model.state_dict())


def test_eval_config_scores_a_layer_dropped_directory(in_tmp, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finlight.prune.surgery import drop_layers

    pruned_dir = in_tmp / "pruned"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    drop_layers(model, [1]).save_pretrained(pruned_dir)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(pruned_dir)
    data = write_data(in_tmp)
    config = swapped_config(in_tmp, "finqa_eval.yaml", {
        **TINY_TRAINER, "model.init_args.backbone": str(pruned_dir), "model.init_args.dtype": "float32",
        "model.init_args.max_new_tokens": 4, "data.init_args.val_path": data["eval"],
        "data.init_args.test_path": data["eval"], "data.init_args.context_tokens": 16})
    tested = run_cli(["test", "--config", config])
    assert tested.model.model.config.num_hidden_layers == 1
    assert {k.split("/")[1] for k in metrics_of(tested)} == METRIC_NAMES

    # answer target: the value itself, so no program metrics
    answers = run_cli(["validate", "--config", config, "--data.init_args.target", "answer"])
    names = {k for k in answers.trainer.callback_metrics if k.startswith("val/")}
    assert names == {"val/exec_acc", "val/unparseable_rate", "val/loss", "val/generation_tokens_per_s",
                     "val/prompt_tokens_per_generate_s"}


def test_oracle_context_renames_the_metrics_and_a_stale_monitor_is_refused(in_tmp, tiny_llama_dir):
    data = write_data(in_tmp)
    paths = {"data.init_args.train_path": data["train"], "data.init_args.val_path": data["eval"],
             "data.init_args.test_path": data["eval"], "data.init_args.oracle_context": True}
    fit_config = swapped_config(in_tmp, "finqa_llama32_qlora.yaml", {
        **TINY_TRAINER, **paths, "model.init_args.backbone": str(tiny_llama_dir)})
    with pytest.raises(FinlightError, match=r"monitors 'val/exec_acc'.*checkpoint.monitor: val/exec_acc_oracle"):
        run_cli(["fit", "--config", fit_config])  # refused before any weights load or train
    config = swapped_config(in_tmp, "finqa_eval.yaml", {
        **TINY_TRAINER, **paths, "model.init_args.backbone": str(tiny_llama_dir), "model.init_args.dtype": "float32",
        "model.init_args.max_new_tokens": 4})
    oracle = run_cli(["validate", "--config", config])
    names = {k for k in oracle.trainer.callback_metrics if k.startswith("val/")}
    assert names == {"val/exec_acc_oracle", "val/prog_acc_oracle", "val/prog_acc_symbolic_oracle",
                     "val/unparseable_rate_oracle", "val/nonexecutable_rate_oracle", "val/loss",
                     "val/generation_tokens_per_s", "val/prompt_tokens_per_generate_s"}  # speeds: no score

    simplified = in_tmp / "simplified.json"  # the flattened format has no gold_inds
    simplified.write_text(json.dumps([{"id": "S-1", "question": "q?", "pre_text": [], "post_text": [],
                                       "table": [["a", "1"]], "answer": 1.0, "program": "add(0, 1)"}]))
    with pytest.raises(FinlightError, match=r"simplified.json#0: data.oracle_context needs gold_inds"):
        run_cli(["validate", "--config", config, "--data.init_args.val_path", str(simplified)])


@pytest.mark.slow
@pytest.mark.integration
def test_shipped_finqa_subsets_run_through_fit_and_test(in_tmp):
    """The real files (original format for train/dev, flattened for test) through a few steps of a tiny
    from-scratch decoder: every page's context is cut to the budget, the metrics come out named."""
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "finqa"
    config = {
        "seed_everything": 42,
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1, "limit_test_batches": 1,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False},
        "checkpoint": {"monitor": "val/exec_acc", "mode": "max", "filename": "epoch{epoch:02d}"},
        "report": {"write_predictions": False},
        "model": {"class_path": "finlight.finqa.FinQAGenerator", "init_args": {
            "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                        "intermediate_size": 64, "vocab_size": 1500}, "max_new_tokens": 8}},
        "data": {"class_path": "finlight.finqa.FinQADataModule", "init_args": {
            "train_path": str(folder / "train_100.json"), "val_path": str(folder / "dev_200.json"),
            "test_path": str(folder / "test_500_simplified.json"), "context_tokens": 48, "batch_size": 8,
            "eval_batch_size": 8}},
    }
    path = in_tmp / "finqa_real.yaml"
    path.write_text(yaml.safe_dump(config))
    fit = run_cli(["fit", "--config", str(path)])
    report = json.loads((Path(fit.trainer.log_dir) / "data_report.json").read_text())
    assert report["sizes"] == {"train": 100, "val": 200, "test": 500}
    assert report["context_cut"] == {"train": 100, "val": 200}  # every real page is longer than 48 tokens
    tested = run_cli(["test", "--config", str(path), "--ckpt_path", "last"])
    metrics = metrics_of(tested)
    assert {k.split("/")[1] for k in metrics} == METRIC_NAMES
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "test/loss" and "tokens_per_" not in k)
