"""OptimizerRestart (the warm-restart control of a dendrite switch): the LR schedule starts again after the given
epoch with fresh AdamW moments, the run otherwise matches the plain one, and a resume across the restart is exact."""

import pytest
import torch

import lightning.pytorch as pl

from finlight.core.callbacks.optimizer_restart import OptimizerRestart
from finlight.errors import FinlightError

from conftest import scratch_fit_config


class StepProbe(pl.Callback):
    """Per optimizer step: the LR it uses, the optimizer object and whether AdamW already holds moments."""

    def __init__(self):
        self.rows = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        weights = sum(float(p.detach().double().abs().sum()) for p in pl_module.parameters())
        self.rows.append({"epoch": trainer.current_epoch, "lr": optimizer.param_groups[0]["lr"],
                          "optimizer": id(optimizer), "moments": len(optimizer.state), "weights": weights})


def restart_config(folder, after_epochs, name: str) -> str:
    callbacks = [{"class_path": "finlight.core.callbacks.OptimizerRestart",
                  "init_args": {"after_epochs": after_epochs}}] if after_epochs else []
    return scratch_fit_config(folder, name, 3, callbacks)


def _fit(config, *extra):
    from finlight.cli import run_cli

    cli = run_cli(["fit", "--config", config, "--trainer.callbacks+=test_optimizer_restart.StepProbe", *extra])
    return cli, next(c for c in cli.trainer.callbacks if isinstance(c, StepProbe)).rows


def test_restart_starts_the_schedule_again_with_fresh_moments(in_tmp, one_thread):
    _, plain = _fit(restart_config(in_tmp, [], "plain"))
    cli, rows = _fit(restart_config(in_tmp, [0], "restart"))
    assert len(rows) == len(plain) == 9
    # linear decay without warm-up over 3 epochs x 3 steps; after epoch 0 it starts from step 0 again
    assert [r["lr"] for r in plain] == pytest.approx([3e-3 * (1 - s / 9) for s in range(9)], rel=1e-9)
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * (1 - s / 9) for s in [0, 1, 2, 0, 1, 2, 3, 4, 5]],
                                                    rel=1e-9)
    assert rows[3]["optimizer"] != rows[2]["optimizer"] and rows[3]["moments"] == 0 < rows[2]["moments"]
    assert len({r["optimizer"] for r in plain}) == 1
    assert next(c for c in cli.trainer.callbacks if isinstance(c, OptimizerRestart)).restarts == [0]
    # epoch 0 is the plain run's, value for value; the restart changes what follows
    assert [r["weights"] for r in rows[:4]] == [r["weights"] for r in plain[:4]]
    assert rows[4]["weights"] != plain[4]["weights"]


def test_resume_across_a_restart_matches_an_uninterrupted_run(in_tmp, one_thread):
    from finlight.cli import run_cli

    config = restart_config(in_tmp, [1], "restart")
    straight, _ = _fit(config, "--experiment", "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(["fit", "--config", config, "--experiment", "crashed",
                 "--trainer.callbacks+=conftest.InterruptAtEpoch", "--trainer.callbacks.epoch=2"])
    resumed = run_cli(["fit", "--config", config, "--experiment", "crashed", "--ckpt_path", "last"])
    assert next(c for c in resumed.trainer.callbacks if isinstance(c, OptimizerRestart)).restarts == [1]
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    for key in want:
        assert torch.equal(want[key], got[key]), key


@pytest.mark.parametrize("after_epochs", [[], [-1], ["1"]])
def test_bad_epochs_are_refused(after_epochs):
    with pytest.raises(FinlightError, match="after_epochs"):
        OptimizerRestart(after_epochs)


def test_a_restart_with_no_epoch_left_is_refused(in_tmp, one_thread):
    from finlight.cli import run_cli

    with pytest.raises(FinlightError, match="no epoch left"):
        run_cli(["fit", "--config", restart_config(in_tmp, [2], "late")])
