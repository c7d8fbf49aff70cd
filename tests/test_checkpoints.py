"""Checkpoint files: atomic writes, corrupt files refused with one line, aliases."""

import os

import pytest
import torch

from finlight.core.checkpoints import (AtomicCheckpointIO, BackgroundCheckpointIO, check_finlight_checkpoint, load_checkpoint,
                                      resolve_checkpoint_alias)
from finlight.errors import FinlightError


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, handle):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(str(path))["step"] == 1


def test_background_writes_snapshot_the_state_and_keep_saves_and_removals_in_order(tmp_path, monkeypatch):
    """The loop may change the weights as soon as save returns: the file holds the values at the call. A removal
    queued right after a slow write still finds the file (it runs after it), and each write is recorded."""
    io = BackgroundCheckpointIO()
    real_save = torch.save

    def slow_save(obj, handle):
        import time
        time.sleep(0.3)
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", slow_save)
    weights = torch.ones(4)
    old, new = tmp_path / "epoch00.ckpt", tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": weights}, "global_step": 7}, old)
    io.save_checkpoint({"state_dict": {"w": weights}, "optimizer_states": [{}], "global_step": 7}, new)
    weights.mul_(5)  # the next optimizer step, while both writes are still queued
    io.remove_checkpoint(old)
    assert not new.exists()  # still being written
    io.teardown()  # waits for the queue
    monkeypatch.undo()
    assert not old.exists() and not list(tmp_path.glob("*.tmp"))
    assert torch.equal(load_checkpoint(str(new))["state_dict"]["w"], torch.ones(4))
    records = io.take_written()
    assert [(os.path.basename(r["path"]), r["weights_only"], r["step"]) for r in records] == [
        ("epoch00.ckpt", True, 7), ("last.ckpt", False, 7)]
    assert records[1]["mb"] == pytest.approx(os.path.getsize(new) / 1e6) and records[1]["seconds"] >= 0.3
    assert io.take_written() == []


def test_a_failed_background_write_is_raised_not_lost(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    io = BackgroundCheckpointIO()
    with pytest.raises(OSError):  # on the save itself when the thread failed at once, else at teardown
        io.save_checkpoint({"w": torch.ones(1)}, blocker / "last.ckpt")  # its folder cannot be created
        io.teardown()


def test_truncated_foreign_and_missing_checkpoints_are_one_line_errors(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}, "finlight": {}}, good)
    assert check_finlight_checkpoint(str(good))["finlight"] == {}
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(FinlightError, match="truncated.ckpt: not a readable checkpoint"):
        check_finlight_checkpoint(str(truncated))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {}}, foreign)
    with pytest.raises(FinlightError, match="not written by a finlight model"):
        check_finlight_checkpoint(str(foreign))
    with pytest.raises(FinlightError, match="no such checkpoint file"):
        check_finlight_checkpoint(str(tmp_path / "nope.ckpt"))


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, path)
    with pytest.raises(FinlightError, match="not a readable checkpoint"):
        load_checkpoint(str(path))
    assert not (tmp_path / "pwned").exists()


def test_aliases_pick_the_newest_run(tmp_path):
    for version, best in ((0, "a.ckpt"), (2, "b.ckpt")):
        folder = tmp_path / "exp" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / best).write_bytes(b"x")
        torch.save({"callbacks": {"RunCheckpoint{...}": {"best_model_path": str(folder / best)}}}, folder / "last.ckpt")
    assert resolve_checkpoint_alias("last", str(tmp_path), "exp") == str(tmp_path / "exp" / "version_2" / "last.ckpt")
    assert resolve_checkpoint_alias("best", str(tmp_path), "exp") == str(tmp_path / "exp" / "version_2" / "b.ckpt")


def test_best_holds_weights_only_last_the_full_state_and_both_serve_their_use(in_tmp, capsys):
    """Best files carry what evaluation needs (weights + the module's own entries), last.ckpt what a resume needs;
    the sizes and write times are logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from finlight.cli import main, run_cli
    from helpers import tiny_config

    config = tiny_config(in_tmp)
    fit = run_cli(["fit", "--config", config])
    callback = fit.trainer.checkpoint_callback
    best, last = load_checkpoint(callback.best_model_path), load_checkpoint(callback.last_model_path)
    assert {"optimizer_states", "lr_schedulers", "callbacks"} <= set(last)
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & set(best)
    assert {"state_dict", "finlight", "hyper_parameters", "epoch", "global_step"} <= set(best)
    assert best["finlight"].keys() == last["finlight"].keys() and best["finlight"]["label_names"]
    assert best["state_dict"].keys() == last["state_dict"].keys()
    assert os.path.getsize(callback.best_model_path) < 0.5 * os.path.getsize(callback.last_model_path)  # AdamW: 2 moments

    events = EventAccumulator(fit.trainer.log_dir).Reload()
    assert {"checkpoint/best_mb", "checkpoint/best_write_s", "checkpoint/last_mb", "checkpoint/last_write_s"} <= set(
        events.Tags()["scalars"])
    assert events.Scalars("checkpoint/last_mb")[-1].value == pytest.approx(
        os.path.getsize(callback.last_model_path) / 1e6, rel=1e-3)

    # evaluation from the weights-only file reproduces the score that selected it
    tested = run_cli(["validate", "--config", config, "--ckpt_path", "best"])
    assert float(tested.trainer.callback_metrics["val/macro_f1"]) == pytest.approx(float(callback.best_model_score), abs=1e-6)
    # a fit cannot resume from it: one line pointing to last
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--ckpt_path", callback.best_model_path])
    assert "holds weights only" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # last.ckpt as a link to a weights-only file could never resume
        main(["fit", "--config", config, "--checkpoint.save_last", "link"])
    assert "save_last=link" in capsys.readouterr().err
