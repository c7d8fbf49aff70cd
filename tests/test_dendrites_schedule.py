"""`model.dendrites.switch_every`: dendrite sets on a fixed epoch schedule (perforatedai's DOING_FIXED_SWITCH), the
schedule of the MiniLM dendrites study (reports/dendrites_minilm/)."""

import pytest
import yaml

pytest.importorskip("perforatedai", reason="the dendrites extra is not installed")

from finlight.dendrites.perforate import DendriteOptions, as_dendrite_options, import_pai, reset_pai_state  # noqa: E402
from finlight.errors import FinlightError  # noqa: E402
from helpers import dendritic_config, one_line_error  # noqa: E402


def test_switch_every_sets_perforatedais_fixed_schedule():
    GPA = reset_pai_state(as_dendrite_options({"switch_every": 3, "max_dendrites": 1}), "cpu")
    assert GPA.pc.get_switch_mode() == GPA.pc.DOING_FIXED_SWITCH
    assert GPA.pc.get_fixed_switch_num() == 3 and GPA.pc.get_max_dendrites() == 1
    GPA = reset_pai_state(DendriteOptions(), "cpu")  # unset: the score-based default, nothing left over
    assert GPA.pc.get_switch_mode() == GPA.pc.DOING_HISTORY and GPA.pc.get_n_epochs_to_switch() == 3


@pytest.mark.parametrize("value, message", [
    ({"switch_every": 0}, "switch_every=0: use a whole number"),
    ({"switch_every": 1.5}, "switch_every=1.5: use a whole number"),
    ({"switch_every": 2, "smoke_test": True}, "switch_every with smoke_test"),
])
def test_bad_schedules_are_refused(value, message):
    with pytest.raises(FinlightError, match=message):
        as_dendrite_options(value)
    with pytest.raises(FinlightError, match=message):
        as_dendrite_options(DendriteOptions(**value))


def test_bad_schedule_in_a_config_is_one_line(in_tmp, capsys):
    config = dendritic_config(in_tmp)
    line = one_line_error(capsys, ["fit", "--config", config, "--model.init_args.dendrites.switch_every", "2"])
    assert "switch_every with smoke_test" in line  # the helper's config is a smoke test


def test_fixed_schedule_adds_the_set_after_the_named_epoch_whatever_the_scores(in_tmp, one_thread):
    from finlight.cli import run_cli
    from finlight.dendrites.perforate import dendrite_count
    from finlight.dendrites.tracker import PAITracker

    path = dendritic_config(in_tmp, max_epochs=4)
    config = yaml.safe_load(open(path))
    config["model"]["init_args"]["dendrites"] = {"switch_every": 2, "max_dendrites": 1}
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    fit = run_cli(["fit", "--config", path])
    tracker = next(c for c in fit.trainer.callbacks if isinstance(c, PAITracker))
    # the set arrives after epoch 1 (two epochs plain), whatever the scores did; epoch 3 is the next fixed point, where
    # perforatedai acts again (complete, or another try at the set when it did not improve the score)
    assert tracker.switch_epochs == [1, 3] and dendrite_count() == 1
    assert fit.trainer.current_epoch == 4
    GPA, _, _ = import_pai()
    assert GPA.pc.get_switch_mode() == GPA.pc.DOING_FIXED_SWITCH
