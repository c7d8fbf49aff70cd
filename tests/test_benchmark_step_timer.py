"""benchmarks/training.py's StepTimer: per-epoch step time and time per padded token, checked by hand."""

import pytest


@pytest.fixture
def training_module(monkeypatch, request):
    monkeypatch.syspath_prepend(str(request.config.rootpath / "benchmarks"))
    import training

    return training


def test_by_epoch_splits_steps_and_skips_the_warm_up(training_module):
    timer = training_module.StepTimer()
    # 2 epochs of 5 steps; the first 3 steps are warm-up and not timed
    for seconds, shape in [(9.0, (4, 10))] * 3 + [(0.2, (4, 10)), (0.4, (4, 20)),
                                                  (0.1, (4, 10)), (0.3, (4, 30)), (0.2, (2, 10)),
                                                  (0.1, (4, 10)), (0.2, (4, 10))]:
        timer.start(shape)
        timer._start -= seconds  # as if the step had taken `seconds`
        timer.stop()
    summary = timer.summary(epochs=2)
    assert summary["steps_timed"] == 7
    # epoch 1: timed steps 4-5 (0.2 s on 40 tokens, 0.4 s on 80): 300 ms a step, 0.6 s / 120 tokens
    # epoch 2: 0.1 + 0.3 + 0.2 + 0.1 + 0.2 = 0.9 s over 5 steps and 40 + 120 + 20 + 40 + 40 = 260 tokens
    assert summary["step_ms_by_epoch"] == pytest.approx([300.0, 180.0], abs=0.2)
    assert summary["ms_per_1k_tokens_by_epoch"] == pytest.approx([5000.0, 3461.54], abs=0.05)


def test_by_epoch_of_a_run_shorter_than_the_warm_up(training_module):
    timer = training_module.StepTimer()
    timer.start((1, 1))
    timer.stop()
    assert timer.by_epoch(1) == {"step_ms_by_epoch": [], "ms_per_1k_tokens_by_epoch": []}
