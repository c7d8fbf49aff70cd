"""Checkpoint files: atomic writes, corrupt files refused with one line, aliases."""

import os

import pytest
import torch

from finlight.core.checkpoints import AtomicCheckpointIO, check_finlight_checkpoint, load_checkpoint, resolve_checkpoint_alias
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
