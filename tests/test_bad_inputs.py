"""The bad-input table: every malformed input stops with ONE line naming the culprit, exit code 2, no
traceback, and nothing an earlier run wrote is touched. Inputs finlight may drop are in `WARNED`: the run goes
on, and one warning counts what was dropped and where.

Each row: (id, how to break things, argv, text the error line must contain).
"""

import gzip
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from finlight.cli import main, run_cli

from helpers import tiny_config

NAMES = ["negative", "neutral", "positive"]
GOOD_ROWS = "text,label\n" + "".join(f"Sentence number {i} about results.,{NAMES[i % 3]}\n" for i in range(30))
PB_ROWS = "".join(f"Sentence number {i} about results .@{NAMES[i % 3]}\n" for i in range(30))


def data_config(folder, name, data_path, **data):
    return tiny_config(folder, name=name, data={"path": data_path, "label_names": NAMES, **data})


def model_config(folder, name, **model):
    return tiny_config(folder, name=name, model=model)


def write(folder, name, text, encoding="utf-8"):
    (folder / name).write_bytes(text.encode(encoding))
    return name


def cases():
    """(id, setup(folder) -> argv, expected fragment of the one-line error)."""
    def fit(config_maker):
        return lambda f: ["fit", "--config", config_maker(f)]

    return [
        # --- data files
        ("missing data file", fit(lambda f: data_config(f, "c", "nowhere.csv")), "nowhere.csv: no such file"),
        ("wrong encoding", fit(lambda f: data_config(f, "c", write(f, "latin.csv", GOOD_ROWS + "Caf\u00e9 up,positive\n", "latin-1"))),
         "latin.csv: not valid utf-8"),
        ("missing text column", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS), text_column="sentence")),
         "data.text_column='sentence' is not in the header"),
        ("missing label column", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS), label_column="sentiment")),
         "data.label_column='sentiment' is not in the header"),
        ("unknown label", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS + "Profit fell,bearish\n"))),
         "d.csv:32: unknown label 'bearish'"),
        ("empty file", fit(lambda f: data_config(f, "c", write(f, "empty.csv", ""))), "empty.csv: the file is empty"),
        ("label NaN / empty", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS + "Profit fell,\n"))),
         "d.csv:32: empty label in column 'label'"),
        ("jsonl null label", fit(lambda f: data_config(f, "c", write(f, "d.jsonl", '{"text": "a", "label": null}\n'))),
         "d.jsonl:1: empty label"),
        ("csv read as PhraseBank", fit(lambda f: data_config(f, "c", write(f, "d.txt", GOOD_ROWS.replace(",", ";")))),
         "lines are malformed"),
        ("directory as data path", fit(lambda f: (os.makedirs(f / "adir", exist_ok=True), data_config(f, "c", "adir"))[1]),
         "adir: is a directory"),
        ("unknown file type", fit(lambda f: data_config(f, "c", write(f, "d.xlsx", "x"))), "cannot tell the format"),
        ("unknown format name", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS), format="excel")),
         "data format 'excel' is unknown"),
        ("unreachable hub dataset", fit(lambda f: data_config(f, "c", "nobody/no-such-data", format="hub")),
         "hub dataset 'nobody/no-such-data'"),
        ("split ratios", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS), split_ratios=[0.8, 0.3, 0.1])),
         "split_ratios must be three non-negative numbers summing to 1"),
        ("class weights length", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS), class_weights=[1.0])),
         "class_weights has 1 values for 3 labels"),
        ("label map target", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS), label_map={"x": "up"})),
         "label_map maps 'x' to 'up'"),
        ("path and train_path", fit(lambda f: data_config(f, "c", "demo", train_path="demo")), "not both"),
        ("max_length too small", fit(lambda f: data_config(f, "c", "demo", max_length=2)), "max_length=2 is too small"),
        # --- configs
        ("config typo in YAML", lambda f: ["fit", "--config", typo(f)], "max_epoch"),
        ("model option typo", lambda f: ["fit", "--config", tiny_config(f), "--model.init_args.learning_rat", "1"],
         "Option 'learning_rat' is not accepted"),
        ("bad choice", lambda f: ["fit", "--config", tiny_config(f), "--model.init_args.scheduler", "cosinus"],
         "model.scheduler: 'cosinus' is not one of linear, cosine, constant, step"),
        ("missing config file", lambda f: ["fit", "--config", "nope.yaml"], "nope.yaml"),
        ("backbone and scratch", fit(lambda f: model_config(f, "c", backbone="x", scratch={"hidden_size": 32})),
         "set exactly one of model.backbone"),
        ("warmup ratio", fit(lambda f: model_config(f, "c", scratch={"hidden_size": 32}, warmup_ratio=1.5)),
         "warmup_ratio=1.5"),
        ("heads do not divide hidden", fit(lambda f: model_config(f, "c", scratch={"hidden_size": 30, "num_heads": 4})),
         "not divisible by num_heads=4"),
        ("unreachable hub model", fit(lambda f: model_config(f, "c", backbone="nobody/no-such-model")),
         "model.backbone='nobody/no-such-model'"),
        ("missing local model dir", fit(lambda f: model_config(f, "c", backbone="./models/missing")), "no such directory"),
        # --- checkpoints and CLI arguments
        ("missing checkpoint", lambda f: ["test", "--config", tiny_config(f), "--ckpt_path", "gone.ckpt"],
         "gone.ckpt: no such checkpoint file"),
        ("truncated checkpoint", lambda f: ["test", "--config", tiny_config(f), "--ckpt_path", truncated(f)],
         "half.ckpt: not a readable checkpoint"),
        ("foreign checkpoint", lambda f: ["test", "--config", tiny_config(f), "--ckpt_path", foreign(f)],
         "foreign.ckpt: not a Lightning checkpoint"),
        ("checkpoint with other labels", lambda f: ["test", "--config", reordered(f), "--ckpt_path", earlier_best(f)],
         "trained on labels ['negative', 'neutral', 'positive']"),
        ("best without a run", lambda f: ["test", "--config", tiny_config(f, name="never"), "--ckpt_path", "best"],
         "no finished run of experiment 'never'"),
        ("unknown subcommand", lambda f: ["train", "--config", tiny_config(f)], "invalid choice: 'train'"),
        ("unknown argument", lambda f: ["fit", "--config", tiny_config(f), "--epochs", "3"], "unrecognized arguments: --epochs"),
        ("export into a non-empty folder", lambda f: ["export", "--ckpt_path", earlier_best(f), "--output_dir", "logs"],
         "logs: exists and is not empty"),
        # ================= round 2 (issue 19) =================
        # --- data: encodings and byte-order marks
        ("UTF-16 file, data.encoding utf-8", fit(lambda f: data_config(f, "c", write(f, "u16.csv", GOOD_ROWS, "utf-16"),
                                                                        encoding="utf-8")),
         "u16.csv: this file is UTF-16 (it starts with a byte-order mark) but data.encoding is 'utf-8'; set data.encoding: utf-16"),
        ("UTF-16 PhraseBank read as latin-1", fit(lambda f: data_config(f, "c", write(f, "pb16.txt", PB_ROWS, "utf-16"),
                                                                         encoding="latin-1")),
         "pb16.txt: this file is UTF-16"),
        ("UTF-32 file, data.encoding cp1252", fit(lambda f: data_config(f, "c", write(f, "u32.csv", GOOD_ROWS, "utf-32"),
                                                                         encoding="cp1252")),
         "set data.encoding: utf-32"),
        ("UTF-8 BOM read as latin-1", fit(lambda f: data_config(f, "c", write(f, "bom8.csv", GOOD_ROWS, "utf-8-sig"),
                                                                 encoding="latin-1")),
         "bom8.csv: this file is UTF-8 (it starts with a byte-order mark)"),
        ("UTF-16 without BOM", fit(lambda f: data_config(f, "c", write(f, "le.csv", GOOD_ROWS, "utf-16-le"))),
         "le.csv: the file holds NUL bytes and no byte-order mark: it looks like UTF-16-LE; set data.encoding: utf-16-le"),
        ("unknown encoding name", fit(lambda f: data_config(f, "c", write(f, "d.csv", GOOD_ROWS), encoding="klingon")),
         "data.encoding='klingon' is not an encoding Python knows"),
        ("gzip file named .csv", fit(lambda f: data_config(f, "c", gzipped(f))), "gz.csv: the file is gzip-compressed"),
        ("Excel file renamed .csv", fit(lambda f: data_config(f, "c", write(f, "sheet.csv", "PK\x03\x04rest"))),
         "sheet.csv: the file is a zip archive (an Excel .xlsx?)"),
        # --- data: delimiters, quoting, headers, sizes
        ("semicolon-separated CSV", fit(lambda f: data_config(f, "c", write(f, "semi.csv", GOOD_ROWS.replace(",", ";")))),
         "the header is ';'-separated: save the file comma-separated"),
        ("tab-separated file named .csv", fit(lambda f: data_config(f, "c", write(f, "tabs.csv", GOOD_ROWS.replace(",", "\t")))),
         "the header is tab-separated: set data.format: tsv"),
        ("duplicated header column", fit(lambda f: data_config(f, "c", write(f, "dup.csv", "text,text,label\n" + "".join(
            f"a {i},b {i},{NAMES[i % 3]}\n" for i in range(30))))), "dup.csv: column 'text' appears 2 times in the header"),
        ("header only", fit(lambda f: data_config(f, "c", write(f, "head.csv", "text,label\n"))), "head.csv: the file holds no records"),
        ("unclosed quote swallows the file", fit(lambda f: data_config(f, "c", write(f, "quote.csv", GOOD_ROWS.replace(
            "Sentence number 3 about", '"Sentence number 3 about')))),
         "quote.csv:5: a quoted field opened here runs over 27 lines (to line 31): an unclosed quote?"),
        ("enormous line without '@'", fit(lambda f: data_config(f, "c", write(f, "huge.txt", "x" * 3_000_000))),
         "huge.txt: 1 of 1 lines are malformed"),
        ("JSON arrays instead of objects", fit(lambda f: data_config(f, "c", write(f, "arr.jsonl", '["a", "positive"]\n' * 20))),
         "arr.jsonl: 20 of 20 lines are malformed"),
        # --- data: labels and texts
        ("labels are floats", fit(lambda f: data_config(f, "c", write(f, "fl.csv", GOOD_ROWS.replace(",negative", ",0.0")
                                                                     .replace(",neutral", ",1.0").replace(",positive", ",2.0")))),
         "fl.csv:2: unknown label '0.0'"),
        ("labels are booleans", fit(lambda f: data_config(f, "c", write(f, "b.jsonl", "".join(
            f'{{"text": "Row {i} of the report.", "label": {str(i % 2 == 0).lower()}}}\n' for i in range(30))))),
         "b.jsonl:1: unknown label 'True'"),
        ("only one class in train", fit(lambda f: data_config(f, "c", write(f, "one.csv", "text,label\n" + "".join(
            f"Sentence {i} on the quarter.,neutral\n" for i in range(60))))),
         "the training split holds only label 'neutral' (48 rows) of the declared labels"),
        ("few distinct texts repeated", fit(lambda f: data_config(f, "c", write(f, "rep.csv", "text,label\n" + "".join(
            f"Sentence {i % 3} on the quarter.,{NAMES[i % 3]}\n" for i in range(60))))),
         "the val split is empty: rep.csv has 60 rows but only 3 distinct texts"),
        ("every text whitespace", fit(lambda f: data_config(f, "c", write(f, "ws.csv", "text,label\n" + '" \t ",neutral\n' * 30))),
         "data: nothing left to train on: every record was dropped (30 empty texts)"),
        ("duplicate label names", fit(lambda f: tiny_config(f, name="c", data={"path": "demo", "label_names": ["neutral", "Neutral", "positive"]})),
         "data.label_names has duplicates"),
        ("val file with another vocabulary", fit(lambda f: data_config(f, "c", None, train_path=write(f, "tr.csv", GOOD_ROWS),
                                                                       val_path=write(f, "va.csv", "text,label\nUp,bullish\n"))),
         "va.csv:2: unknown label 'bullish'"),
        # --- configs: types and ranges
        ("negative learning rate", lambda f: ["fit", "--config", tiny_config(f), "--model.init_args.learning_rate=-1e-3"],
         "model.learning_rate: -1e-3 is out of range (must be v>0"),
        ("batch size 0", lambda f: ["fit", "--config", tiny_config(f), "--data.init_args.batch_size", "0"],
         "data.batch_size: 0 is out of range (must be v>0"),
        ("learning rate as a word", lambda f: ["fit", "--config", tiny_config(f), "--model.init_args.learning_rate", "fast"],
         "model.learning_rate"),
        ("label smoothing above 1", lambda f: ["fit", "--config", tiny_config(f), "--model.init_args.label_smoothing", "1.5"],
         "model.label_smoothing: 1.5 is out of range (must be v>=0 and v<=1"),
        ("negative eval batch size", lambda f: ["fit", "--config", tiny_config(f), "--data.init_args.eval_batch_size", "-4"],
         "data.eval_batch_size: -4 is out of range"),
        ("negative num_workers", lambda f: ["fit", "--config", tiny_config(f), "--data.init_args.num_workers", "-1"],
         "data.num_workers: -1 is out of range (must be v>=0"),
        ("negative data seed", lambda f: ["fit", "--config", tiny_config(f), "--data.init_args.seed", "-3"],
         "data.seed: -3 is out of range"),
        ("negative class weight", fit(lambda f: data_config(f, "c", "demo", class_weights=[1.0, -1.0, 1.0])),
         "data.class_weights"),
        ("split ratios with two numbers", fit(lambda f: data_config(f, "c", "demo", split_ratios=[0.9, 0.1])),
         "data.split_ratios"),
        ("max_length a list", fit(lambda f: data_config(f, "c", "demo", max_length=[64, 128])), "data.max_length"),
        ("null batch size", fit(lambda f: data_config(f, "c", "demo", batch_size=None)),
         "data.batch_size is null, but it takes PositiveInt"),
        ("LoRA rank 0", fit(lambda f: model_config(f, "c", backbone="x", lora={"r": 0})),
         "model.lora.r: 0 is out of range (must be v>0"),
        ("negative warm-up", fit(lambda f: model_config(f, "c", scratch={"hidden_size": 32}, warmup_ratio=-0.1)),
         "model.warmup_ratio=-0.1: must be in [0, 1)"),
        ("step scheduler step_size 0", lambda f: ["fit", "--config", tiny_config(f), "--model.init_args.step_size", "0"],
         "model.step_size: 0 is out of range"),
        # --- configs: unknown keys at every level, callbacks
        ("unknown top-level key", lambda f: ["fit", "--config", edited(f, lambda c: c.update(trainr={"max_epochs": 1}))],
         "trainr"),
        ("unknown model key in YAML", lambda f: ["fit", "--config", edited(f, lambda c: c["model"]["init_args"].update(lr=1e-3))],
         "lr"),
        ("unknown data key in YAML", lambda f: ["fit", "--config", edited(f, lambda c: c["data"]["init_args"].update(batchsize=8))],
         "batchsize"),
        ("unknown key inside model.lora", fit(lambda f: model_config(f, "c", backbone="x", lora={"rank": 8})), "rank"),
        ("unknown key inside model.scratch", fit(lambda f: model_config(f, "c", scratch={"hidden": 32})), "hidden"),
        ("unknown checkpoint option", lambda f: ["fit", "--config", tiny_config(f), "--checkpoint.monitr", "val/acc"],
         "checkpoint.monitr"),
        ("callback with a wrong argument", lambda f: ["fit", "--config", edited(f, lambda c: c["trainer"].update(callbacks=[
            {"class_path": "finlight.core.callbacks.latency.LatencyProfiler", "init_args": {"iteration": 5}}]))],
         "iteration"),
        ("callback argument out of range", lambda f: ["fit", "--config", edited(f, lambda c: c["trainer"].update(callbacks=[
            {"class_path": "finlight.core.callbacks.latency.LatencyProfiler", "init_args": {"iterations": 0}}]))],
         "iterations: 0 is out of range"),
        ("callback class that does not exist", lambda f: ["fit", "--config", edited(f, lambda c: c["trainer"].update(callbacks=[
            {"class_path": "finlight.core.callbacks.NoSuchCallback"}]))], "NoSuchCallback"),
        ("YAML syntax error", lambda f: ["fit", "--config", write(f, "broken.yaml", "trainer: {max_epochs: 2\nmodel: [\n")],
         "broken.yaml:2: not valid YAML"),
        ("config file is a list", lambda f: ["fit", "--config", write(f, "list.yaml", "- trainer\n- model\n")],
         "list.yaml: a config is a mapping of keys (trainer:, model:, data: …), but the file holds a list"),
        # --- checkpoints
        ("checkpoint from another finlight module", lambda f: ["test", "--config", causal_config(f), "--ckpt_path", earlier_best(f)],
         "written by finlight.core.SequenceClassifier, but model.class_path is finlight.causal_lm.CausalLMClassifier"),
        ("checkpoint with fewer labels", lambda f: ["test", "--config", binary_config(f), "--ckpt_path", earlier_best(f)],
         "trained on labels ['negative', 'neutral', 'positive']"),
        ("LoRA checkpoint whose base is gone", lambda f: ["test", "--config", str(f / "lora.yaml"), "--ckpt_path", lora_best(f)],
         "holds only the trained adapters; their base model './base_model' is gone"),
        ("export of a LoRA checkpoint whose base is gone", lambda f: ["export", "--ckpt_path", lora_best(f), "--output_dir", "out_lora"],
         "their base model './base_model' is gone"),
        ("symlink to nothing", lambda f: ["test", "--config", tiny_config(f), "--ckpt_path", dangling(f)],
         "dangling.ckpt: a symbolic link to 'checkpoints/never/gone.ckpt', which does not exist"),
        ("checkpoint path is a folder", lambda f: ["test", "--config", tiny_config(f), "--ckpt_path", "checkpoints"],
         "checkpoints: is a directory"),
        ("empty checkpoint file", lambda f: ["test", "--config", tiny_config(f), "--ckpt_path", write(f, "zero.ckpt", "")],
         "zero.ckpt: not a readable checkpoint"),
        ("YAML file as checkpoint", lambda f: ["validate", "--config", tiny_config(f), "--ckpt_path", tiny_config(f, name="y")],
         "y.yaml: not a readable checkpoint"),
        # --- extra commands with wrong arguments
        ("export without --output_dir", lambda f: ["export", "--ckpt_path", earlier_best(f)], "export: missing --output_dir"),
        ("export with an unknown flag", lambda f: ["export", "--ckpt_path", earlier_best(f), "--out", "x"],
         "export: unrecognized arguments: --out"),
        ("export settings file with a typo", lambda f: ["export", "--config", write(f, "e.yaml", "ckpt: a.ckpt\noutput_dir: o\n")],
         "ckpt"),
        ("export of a foreign file", lambda f: ["export", "--ckpt_path", foreign(f), "--output_dir", "out_foreign"],
         "foreign.ckpt: not a finlight checkpoint"),
        ("export-onnx with both sources", lambda f: ["export-onnx", "--model", "m", "--ckpt_path", earlier_best(f),
                                                     "--output_dir", "o"], "give exactly one of --model"),
        ("export-onnx negative atol", lambda f: ["export-onnx", "--ckpt_path", earlier_best(f), "--output_dir", "o",
                                                 "--atol", "-1"], "export-onnx: --atol: -1 is out of range (must be v>0"),
        ("export-onnx opset a word", lambda f: ["export-onnx", "--ckpt_path", earlier_best(f), "--output_dir", "o",
                                                "--opset", "latest"], "export-onnx: --opset"),
        ("export-onnx into a run folder", lambda f: ["export-onnx", "--ckpt_path", earlier_best(f), "--output_dir",
                                                     "logs/earlier"], "logs/earlier: exists and is not empty"),
        ("quantize unknown method", lambda f: ["quantize", "--model_dir", "m", "--method", "gptq5", "--output_dir", "q"],
         "quantize: --method: 'gptq5' is not one of bnb4, bnb8, gptq4"),
        ("quantize group size 0", lambda f: ["quantize", "--model_dir", "m", "--method", "gptq4", "--output_dir", "q",
                                             "--group_size", "0"], "quantize: --group_size: 0 is out of range"),
        ("quantize a checkpoint folder", lambda f: ["quantize", "--model_dir", "checkpoints", "--method", "bnb8",
                                                    "--output_dir", "q"], "--model_dir checkpoints: not a saved Hugging Face model"),
        ("quantize into a run folder", lambda f: ["quantize", "--model_dir", "m", "--method", "bnb4", "--output_dir", "logs"],
         "--output_dir logs: exists and is not empty"),
        ("pseudo-label batch size 0", lambda f: ["pseudo-label", "--teacher", "t", "--input", "c.txt", "--output", "o.jsonl",
                                                 "--batch_size", "0"], "pseudo-label: --batch_size: 0 is out of range"),
        ("pseudo-label output not JSONL", lambda f: ["pseudo-label", "--teacher", "t", "--input", "c.txt", "--output", "o.csv"],
         "--output o.csv: pseudo-labels are written as JSONL"),
        ("pseudo-label missing corpus", lambda f: ["pseudo-label", "--teacher", earlier_best(f), "--input", "nope/*.txt",
                                                   "--output", "o.jsonl"], "nope/*.txt: the pattern matches no file"),
        ("pseudo-label over an earlier output", lambda f: ["pseudo-label", "--teacher", earlier_best(f), "--input", "c.txt",
                                                           "--output", "logs/earlier/pl.jsonl"],
         "logs/earlier/pl.jsonl: exists without a progress record"),
        ("pseudo-label without --teacher", lambda f: ["pseudo-label", "--input", "c.txt", "--output", "o.jsonl"],
         "pseudo-label: missing --teacher"),
        ("report without paths", lambda f: ["report"], "report: missing paths"),
        ("report resamples 0", lambda f: ["report", "logs", "--resamples", "0"], "report: --resamples: 0 is out of range"),
        ("report resamples 50", lambda f: ["report", "logs", "--resamples", "50"], "--resamples 50: use at least 100"),
        ("report negative seed", lambda f: ["report", "logs", "--seed", "-1"], "report: --seed: -1 is out of range"),
        ("seeds without --seeds", lambda f: ["seeds", "--config", tiny_config(f)], "seeds: missing --seeds"),
        ("seeds negative seed", lambda f: ["seeds", "--config", tiny_config(f), "--seeds", "1", "-2"],
         "seeds: --seeds: -2 is out of range (must be v>=0"),
        ("seeds unknown selection", lambda f: ["seeds", "--config", tiny_config(f), "--seeds", "1", "--select", "median"],
         "seeds: --select: 'median' is not one of best, last, final_depth"),
        ("seeds missing config", lambda f: ["seeds", "--config", "nope.yaml", "--seeds", "1"], "--config nope.yaml: no such file"),
        ("seeds bad fit option", lambda f: ["seeds", "--config", tiny_config(f), "--seeds", "1", "--trainer.max_epoch", "3"],
         "max_epoch"),
    ]


def edited(folder, change, name="edited"):
    """The tiny config with ``change(config_dict)`` applied."""
    path = Path(tiny_config(folder, name=name))
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def causal_config(folder):
    def change(config):
        config["model"] = {"class_path": "finlight.causal_lm.CausalLMClassifier", "init_args": {
            "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}}}
        config["data"]["class_path"] = "finlight.causal_lm.InstructionDataModule"
    return edited(folder, change, "causal")


def binary_config(folder):
    return tiny_config(folder, name="binary", data={"path": "demo", "label_names": ["negative", "positive"],
                                                     "unknown_labels": "drop", "max_length": 48})


def gzipped(folder):
    (folder / "gz.csv").write_bytes(gzip.compress(GOOD_ROWS.encode()))
    return "gz.csv"


def dangling(folder):
    link = folder / "dangling.ckpt"
    if not link.is_symlink():
        os.symlink("checkpoints/never/gone.ckpt", link)
    return "dangling.ckpt"


def lora_best(folder):
    return str(next((folder / "checkpoints" / "lora").rglob("epoch*.ckpt")))


def typo(folder):
    path = Path(tiny_config(folder, name="typo"))
    path.write_text(path.read_text().replace("max_epochs", "max_epoch"))
    return str(path)


def truncated(folder):
    data = Path(earlier_best(folder)).read_bytes()
    (folder / "half.ckpt").write_bytes(data[: len(data) // 2])
    return str(folder / "half.ckpt")


def foreign(folder):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, folder / "foreign.ckpt")
    return str(folder / "foreign.ckpt")


def reordered(folder):
    return tiny_config(folder, name="reordered", data={"path": "demo", "label_names": NAMES[::-1], "max_length": 48})


def earlier_best(folder):
    return str(next((folder / "checkpoints" / "earlier").rglob("epoch*.ckpt")))


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, tiny_hf_dir):
    """Finished runs whose files must survive every bad input untouched: a tiny classifier, a LoRA run whose
    base model has since moved away, and a pseudo-label output without its progress record."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        short = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}
        run_cli(["fit", "--config", tiny_config(folder, name="earlier", trainer=short)])
        shutil.copytree(tiny_hf_dir, folder / "base_model")
        lora = {"backbone": "./base_model", "learning_rate": 1e-3,
                "lora": {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["query", "value"]}}
        run_cli(["fit", "--config", tiny_config(folder, name="lora", model=lora, trainer=short)])
        os.rename(folder / "base_model", folder / "base_model.moved")
        (folder / "logs" / "earlier" / "pl.jsonl").write_text('{"text": "Profit rose.", "label": "positive"}\n')
    finally:
        os.chdir(cwd)
    return folder


def snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for root in ("logs", "checkpoints")
            for p in (folder / root).rglob("*") if p.is_file()}


CASES = cases()


def test_the_table_has_at_least_75_rows():
    assert len(CASES) >= 75  # 35 before issue 19, 40 or more added by it
    assert len({c[0] for c in CASES}) == len(CASES)
    assert all(len(c) == 3 for c in CASES)


@pytest.mark.parametrize("name, make_argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(name, make_argv, expected, earlier_run, monkeypatch, capsys):
    folder = earlier_run
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = make_argv(folder)
    before = snapshot(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("finlight: error:")]
    assert len(error_lines) == 1, err
    assert expected in error_lines[0], error_lines[0]
    after = snapshot(folder)
    assert {p: v for p, v in after.items() if p in before} == before  # nothing earlier changed or vanished


# ---------------------------------------------------------------------------------------------- dropped, counted
PARTIAL = "text,label\n" + "".join(f"Sentence number {i} about results.,{['neutral', 'positive'][i % 2]}\n"
                                   for i in range(30))
WARNED = [
    # (id, file name, content, data options, fragment of the one warning, reason counted in data_report)
    ("whitespace-only texts", "d.csv", GOOD_ROWS + '"   ",neutral\n" \t ",positive\n', {},
     "dropped 2 empty texts: d.csv:32, d.csv:33", "empty texts"),
    ("unknown labels dropped", "d.csv", GOOD_ROWS + "Profit fell,bearish\n", {"unknown_labels": "drop"},
     "dropped 1 rows with unknown labels: d.csv:32 ('bearish')", "rows with unknown labels"),
    ("row with an extra field", "d.csv", GOOD_ROWS + "Profit fell,again,negative\n", {},
     "dropped 1 rows with more fields than the header: d.csv:32", "rows with more fields than the header"),
    ("duplicates dropped", "d.csv", GOOD_ROWS + "Sentence number 1 about results.,neutral\n" * 3, {"duplicates": "drop"},
     "dropped 3 duplicate rows (data.duplicates=drop): d.csv:32, d.csv:33, d.csv:34", "duplicate rows (data.duplicates=drop)"),
    ("stray PhraseBank line", "d.txt", PB_ROWS + "1\n", {}, "dropped 1 malformed lines (no '@label'): d.txt:31",
     "malformed lines (no '@label')"),
    ("declared label without examples", "d.csv", PARTIAL, {},
     "declared label(s) without examples: 'negative' in train, val, test", None),
]


@pytest.fixture
def finlight_warnings(caplog, monkeypatch):
    """Once the CLI ran, finlight's logger has its own handler and does not propagate: let caplog hear it."""
    monkeypatch.setattr(logging.getLogger("finlight"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="finlight")
    return caplog


@pytest.mark.parametrize("name, filename, content, options, expected, reason", WARNED, ids=[w[0] for w in WARNED])
def test_droppable_input_is_dropped_with_one_counted_warning(name, filename, content, options, expected, reason,
                                                              in_tmp, finlight_warnings):
    from finlight.core.data.datamodule import ClassificationDataModule

    (in_tmp / filename).write_text(content)
    module = ClassificationDataModule(path=filename, label_names=NAMES, **options)
    module.setup("fit")
    warnings = [r.getMessage() for r in finlight_warnings.records if r.levelno == logging.WARNING]
    assert sum(expected in w for w in warnings) == 1, warnings
    if reason is not None:
        count = int(expected.split("dropped ")[1].split()[0])
        assert module.report["dropped"][reason]["count"] == count
    assert sum(module.report["sizes"].values()) > 0


def test_the_warned_table_covers_each_kind_once():
    assert len({w[0] for w in WARNED}) == len(WARNED) >= 6


# ---------------------------------------------------------------------------------------------- read, not refused
@pytest.mark.parametrize("encoding, filename", [("utf-8-sig", "d.csv"), ("utf-16", "d.csv"), ("utf-32", "d.csv"),
                                                ("utf-16", "d.txt")])
def test_a_file_with_a_byte_order_mark_reads_as_its_encoding(encoding, filename, in_tmp):
    from finlight.core.data.sources import read_records

    text = (GOOD_ROWS if filename.endswith(".csv") else PB_ROWS).replace("Sentence", "Café sentence")
    (in_tmp / filename).write_bytes(text.encode(encoding))
    (in_tmp / ("plain_" + filename)).write_text(text, encoding="utf-8")
    records = read_records(filename)
    expected = read_records("plain_" + filename, encoding="utf-8")
    assert [(r.text, r.label) for r in records] == [(r.text, r.label) for r in expected]
    assert records[0].text.startswith("Café sentence number 0") and len(records) == 30


def test_a_csv_with_a_one_megabyte_field_reads(in_tmp):
    from finlight.core.data.sources import read_records

    long_text = "Revenue grew " + "strongly " * 120_000  # ~1.1 MB in one cell (csv's default limit is 128 KiB)
    (in_tmp / "long.csv").write_text(GOOD_ROWS + f'"{long_text}",positive\n')
    records = read_records("long.csv")
    assert len(records) == 31 and records[-1].text == long_text and records[-1].label == "positive"
