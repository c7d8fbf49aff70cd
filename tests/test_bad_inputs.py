"""The bad-input table: every malformed input stops with ONE line naming the culprit, exit code 2, no
traceback, and nothing an earlier run wrote is touched.

Each row: (id, how to break things, argv, text the error line must contain).
"""

import os
from pathlib import Path

import pytest
import torch

from finlight.cli import main, run_cli

from test_cli import tiny_config

NAMES = ["negative", "neutral", "positive"]
GOOD_ROWS = "text,label\n" + "".join(f"Sentence number {i} about results.,{NAMES[i % 3]}\n" for i in range(30))


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
         "model.scheduler: Expected a typing.Literal"),
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
    ]


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
def earlier_run(tmp_path_factory):
    """A finished run whose files must survive every bad input untouched."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        run_cli(["fit", "--config", tiny_config(folder, name="earlier",
                                                trainer={"max_epochs": 1, "limit_train_batches": 2})])
    finally:
        os.chdir(cwd)
    return folder


def snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for root in ("logs", "checkpoints")
            for p in (folder / root).rglob("*") if p.is_file()}


CASES = cases()


def test_the_table_has_at_least_25_rows():
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


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
