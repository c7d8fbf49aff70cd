"""``seeds --select``: the choice of the checkpoint to test (pure function on hand-built lists) and, end to end, a
layer-dropping run whose overall best is a deeper model than the one it ends with."""

from __future__ import annotations

import json
import os

import lightning.pytorch as pl
import pytest
import torch

from finlight.prune.checkpoint_selection import (Architecture, Candidate, architecture_of_config, candidates_from_callback,
                                                select_checkpoint, select_in_run)
from finlight.errors import FinlightError

DEEP, MID, SHALLOW = Architecture(3), Architecture(2), Architecture(1)


def _candidates(*rows) -> list[Candidate]:
    """(score, architecture[, is_last]) per checkpoint, one step apart, in the order written."""
    return [Candidate(f"epoch{i:02d}.ckpt" if not (row[2:] and row[2]) else "last.ckpt", row[0], row[1], step=10 * i,
                      is_last=bool(row[2:] and row[2])) for i, row in enumerate(rows)]


def test_best_last_and_final_depth_in_max_mode():
    run = _candidates((0.90, DEEP), (0.60, MID), (0.70, SHALLOW), (0.65, SHALLOW), (0.65, SHALLOW, True))
    assert select_checkpoint(run, "max", "best").path == "epoch00.ckpt"                # the deep model
    assert select_checkpoint(run, "max", "final_depth", SHALLOW).path == "epoch02.ckpt"  # best at the final depth
    assert select_checkpoint(run, "max", "final_depth", MID).path == "epoch01.ckpt"
    assert select_checkpoint(run, "max", "last").path == "last.ckpt"


def test_min_mode_and_ties_go_to_the_earlier_checkpoint():
    run = _candidates((0.30, DEEP), (0.50, SHALLOW), (0.40, SHALLOW), (0.40, SHALLOW), (0.40, SHALLOW, True))
    assert select_checkpoint(run, "min", "best").path == "epoch00.ckpt"
    # 0.40 three times (epochs 2, 3 and last.ckpt of epoch 3's step): the earliest, as Lightning's best_model_path
    assert select_checkpoint(run, "min", "final_depth", SHALLOW).path == "epoch02.ckpt"
    tied = _candidates((0.8, SHALLOW), (0.8, SHALLOW))
    assert select_checkpoint(tied, "max", "best").path == "epoch00.ckpt"
    assert select_checkpoint(list(reversed(tied)), "max", "best").path == "epoch00.ckpt"  # by step, not list order
    # unranked (score None) and NaN never win over a ranked score
    odd = _candidates((float("nan"), SHALLOW), (None, SHALLOW), (0.1, SHALLOW))
    assert select_checkpoint(odd, "max", "final_depth", SHALLOW).path == "epoch02.ckpt"
    assert select_checkpoint(odd, "min", "best").path == "epoch02.ckpt"


def test_missing_final_depth_and_bad_arguments_raise():
    run = _candidates((0.9, DEEP), (0.8, MID), (None, SHALLOW, True))  # save_top_k kept only older ones
    with pytest.raises(FinlightError, match=r"architecture \(1 layer;.*kept: 2 layers; 3 layers\).*save_top_k: -1"):
        select_checkpoint(run, "max", "final_depth", SHALLOW, monitor="val/macro_f1")
    with pytest.raises(FinlightError, match="save_last: true"):
        select_checkpoint(run[:2], "max", "last")
    with pytest.raises(FinlightError, match="--select 'worst'"):
        select_checkpoint(run, "max", "worst")
    with pytest.raises(FinlightError, match="mode='up'"):
        select_checkpoint(run, "up", "best")
    with pytest.raises(FinlightError, match="no checkpoint was ranked"):
        select_checkpoint(run[2:], "max", "best")
    # sub-layer drops: same depth, other removed sub-layers → another architecture
    one = architecture_of_config({"num_hidden_layers": 2, "removed_sublayers": [["mlp"], []]})
    assert one != architecture_of_config({"num_hidden_layers": 2}) and one.layers == 2
    assert one != architecture_of_config({"num_hidden_layers": 2, "removed_sublayers": [[], ["mlp"]]})
    assert one == architecture_of_config({"num_hidden_layers": 2, "removed_sublayers": [("mlp",), ()]})
    assert architecture_of_config({"num_hidden_layers": 2, "removed_sublayers": [[], []]}) == Architecture(2)
    with pytest.raises(FinlightError, match="final architecture"):
        select_checkpoint([Candidate("a.ckpt", 0.5, Architecture(2))], "max", "final_depth", one)


def test_candidates_from_callback_state_read_depth_and_match_last_to_its_step(tmp_path):
    def save(name, layers, step):
        state = {"model.w": torch.zeros(layers, 4)}
        torch.save({"state_dict": state, "global_step": step,
                    "finlight": {"backbone": {"config": {"num_hidden_layers": layers}}}}, tmp_path / name)
        return str(tmp_path / name)

    first, second = save("epoch00.ckpt", 3, 10), save("epoch01.ckpt", 2, 20)
    last = save("last.ckpt", 2, 20)
    found = candidates_from_callback({second: torch.tensor(0.7), first: torch.tensor(0.9)}, last)
    assert [(c.path, c.architecture.layers, c.step, c.is_last, c.saved_parameters) for c in found] == [
        (first, 3, 10, False, 12), (second, 2, 20, False, 8), (last, 2, 20, True, 8)]
    assert found[2].score == pytest.approx(0.7)  # the ranked file of the same step
    with pytest.raises(FinlightError, match="no such checkpoint"):
        candidates_from_callback({str(tmp_path / "gone.ckpt"): torch.tensor(0.5)}, None)


def test_report_reads_runs_with_and_without_a_recorded_selection(in_tmp):
    from finlight.report.compare import build_report
    from helpers import write_run

    write_run("logs/a/version_0", 1, {"test/macro_f1": 0.7}, [0] * 10)  # tested before selections were recorded
    write_run("logs/a/version_1", 2, {"test/macro_f1": 0.8}, [0] * 10)
    path = in_tmp / "logs" / "a" / "version_1" / "test_metrics.json"
    report = json.loads(path.read_text())
    report["selected"] = {"how": "final_depth", "path": "x.ckpt", "monitor": "val/macro_f1", "mode": "max",
                          "value": 0.75, "layers": 2}
    path.write_text(json.dumps(report))
    result = build_report(["logs"], "out", resamples=200)
    old, new = result["runs"]
    assert old["selected"] is None and old["selected_by"] is None
    assert new["selected"] == "final_depth (2 layers)" and new["selected_by"] == "val/macro_f1 0.7500"
    assert "| a | logs/a/version_0 | 1 | — |" in result["markdown"]
    assert result["groups"][0]["selected"] == "final_depth (2 layers)"
    assert any("mixes checkpoint selections (final_depth (2 layers), not recorded)" in n for n in result["notes"])


# ---------------------------------------------------------------------------------------------- end to end
class ScriptedScore(pl.Callback):
    """Logs ``val/probe`` from a script per epoch: the checkpoint monitor of the end-to-end test, so that the
    overall best is the deep epoch-0 model and the final depth ties between two epochs."""

    def __init__(self, values: list[float]):
        self.values = values

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            pl_module.log("val/probe", self.values[trainer.current_epoch])


PROBE = [0.9, 0.5, 0.7, 0.7]  # 3 layers, 2, 1, 1


def _drop_config(folder) -> str:
    from helpers import tiny_config

    scratch = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64, "vocab_size": 600,
               "max_position_embeddings": 128}
    callbacks = [{"class_path": "finlight.prune.SuccessiveLayerDrop",
                  "init_args": {"every_n_epochs": 1, "target_layers": 1, "calibration_examples": 16,
                                "method": "block_influence", "tolerance": 1.0}},
                 {"class_path": "test_checkpoint_selection.ScriptedScore", "init_args": {"values": PROBE}}]
    return tiny_config(folder, "drop", model={"scratch": scratch, "learning_rate": 3e-3},
                       trainer={"max_epochs": len(PROBE), "callbacks": callbacks})


def _seeds(config, select, capsys):
    from finlight.cli import main

    main(["seeds", "--config", config, "--seeds", "1", "--select", select, "--checkpoint.monitor", "val/probe",
          "--checkpoint.save_top_k", "-1"])
    return capsys.readouterr().out


@pytest.mark.slow
def test_seeds_select_final_depth_tests_the_pruned_model(in_tmp, one_thread, capsys):
    from finlight.cli import run_cli
    from finlight.report.compare import build_report

    config = _drop_config(in_tmp)
    out = _seeds(config, "final_depth", capsys)
    run = in_tmp / "logs" / "drop" / "version_0"
    report = json.loads((run / "test_metrics.json").read_text())
    selected = report["selected"]
    assert selected["how"] == "final_depth" and selected["monitor"] == "val/probe" and selected["mode"] == "max"
    assert selected["layers"] == 1 and selected["value"] == pytest.approx(0.7)
    assert os.path.basename(selected["path"]).startswith("epoch02-")  # epochs 2 and 3 tie at 0.7: the earlier
    assert report["checkpoint"] == selected["path"] and "final_depth: 1 layer, val/probe 0.7000" in out
    assert "final_depth (1 layer)" in (in_tmp / "reports" / "drop_seeds" / "report.md").read_text()
    saved = torch.load(selected["path"], weights_only=True)
    assert saved["finlight"]["backbone"]["config"]["num_hidden_layers"] == 1 and saved["epoch"] == 2
    assert selected["saved_parameters"] == sum(t.numel() for t in saved["state_dict"].values())

    # an independent test of that file gives the same metrics
    tested = run_cli(["test", "--config", config, "--ckpt_path", selected["path"], "--experiment", "retest",
                      "--checkpoint.monitor", "val/probe"])
    again = json.loads((in_tmp / "logs" / "retest" / "version_0" / "test_metrics.json").read_text())["metrics"]
    assert tested.model.model.config.num_hidden_layers == 1
    assert set(again) == set(report["metrics"])
    for key, value in report["metrics"].items():
        assert again[key] == pytest.approx(value, abs=1e-6), key

    # best (today's default) tests the deep epoch-0 model: exactly what final_depth avoids
    _seeds(config, "best", capsys)
    best = json.loads((in_tmp / "logs" / "drop" / "version_1" / "test_metrics.json").read_text())["selected"]
    assert best["how"] == "best" and best["layers"] == 3 and best["value"] == pytest.approx(0.9)
    assert os.path.basename(best["path"]).startswith("epoch00-")

    # the report says which checkpoint each row is, and that the group mixes selections
    result = build_report(["logs/drop"], "cmp", resamples=200)
    rows = {os.path.basename(r["run"]): r for r in result["runs"]}
    assert (rows["version_0"]["selected"], rows["version_0"]["selected_by"]) == ("final_depth (1 layer)",
                                                                                "val/probe 0.7000")
    assert (rows["version_1"]["selected"], rows["version_1"]["selected_by"]) == ("best (3 layers)", "val/probe 0.9000")
    assert "final_depth (1 layer)" in result["markdown"] and "| selected |" in result["markdown"]
    assert result["groups"][0]["selected"] == "best (3 layers) / final_depth (1 layer)"
    assert any("mixes checkpoint selections" in n for n in result["notes"])


def test_seeds_final_depth_without_a_kept_final_checkpoint_stops_with_the_fix(in_tmp, one_thread, capsys):
    from finlight.cli import main

    config = _drop_config(in_tmp)
    with pytest.raises(SystemExit) as exit_info:  # save_top_k 1: only the deep epoch-0 file and last.ckpt remain
        main(["seeds", "--config", config, "--seeds", "1", "--select", "final_depth",
              "--checkpoint.monitor", "val/probe"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "save_top_k: -1" in err and "final architecture (1 layer;" in err
    assert not (in_tmp / "logs" / "drop" / "version_0" / "test_metrics.json").exists()  # nothing tested instead


def test_select_in_run_ranks_a_finished_runs_checkpoints_at_any_depth(tmp_path):
    def save(name, layers, step, callbacks=None):
        torch.save({"state_dict": {"w": torch.zeros(layers, 2)}, "global_step": step, "callbacks": callbacks or {},
                    "finlight": {"backbone": {"config": {"num_hidden_layers": layers}}}}, tmp_path / name)
        return str(tmp_path / name)

    scores = {save("e0.ckpt", 4, 10): 0.9, save("e1.ckpt", 3, 20): 0.6, save("e2.ckpt", 3, 30): 0.7,
              save("e3.ckpt", 2, 40): 0.4}
    key = "ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0}"
    state = {"monitor": "val/loss", "best_k_models": {p: torch.tensor(v) for p, v in scores.items()}}
    save("last.ckpt", 2, 40, {key: state, "RNGState": {}})
    chosen = select_in_run(str(tmp_path), 3)
    assert (chosen.path, chosen.layers, chosen.how, chosen.mode) == (str(tmp_path / "e1.ckpt"), 3, "depth", "min")
    assert chosen.value == pytest.approx(0.6) and chosen.saved_parameters == 6
    assert select_in_run(str(tmp_path), 2).path == str(tmp_path / "e3.ckpt")
    with pytest.raises(FinlightError, match=r"depth: none of the 5 .*\(5 layers; kept: 2 layers; 3 layers; 4 layers\)"):
        select_in_run(str(tmp_path), 5)
    os.remove(tmp_path / "e0.ckpt")  # deleted since: its depth is unknown, so refused unless allowed
    with pytest.raises(FinlightError, match="deleted since the fit"):
        select_in_run(str(tmp_path), 3)
    assert select_in_run(str(tmp_path), 3, allow_missing=True).path == str(tmp_path / "e1.ckpt")
    os.remove(tmp_path / "last.ckpt")
    with pytest.raises(FinlightError, match="no last.ckpt"):
        select_in_run(str(tmp_path), 3)
