"""Callbacks: the ones every finlight run gets from the CLI (checkpoints, evaluation report, prediction files,
RNG state, the CPU dropout kernel) and the opt-in ones a config adds (threshold sweep, latency profiler, phase
switch: gradual unfreezing with per-layer learning rates, optimizer restart: the warm-restart control of a
dendrite switch)."""

from finlight._lazy import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "RunCheckpoint": "finlight.core.callbacks.checkpoint",
    "CpuDropoutKernel": "finlight.core.callbacks.cpu_dropout",
    "EvaluationReport": "finlight.core.callbacks.evaluation_report",
    "PredictionWriter": "finlight.core.callbacks.prediction_writer",
    "ThresholdSweep": "finlight.core.callbacks.threshold_sweep",
    "LatencyProfiler": "finlight.core.callbacks.latency",
    "PhaseSwitch": "finlight.core.callbacks.phase_switch",
    "OptimizerRestart": "finlight.core.callbacks.optimizer_restart",
})
__all__ = ["CpuDropoutKernel", "EvaluationReport", "LatencyProfiler", "OptimizerRestart", "PhaseSwitch", "PredictionWriter",
           "RunCheckpoint", "ThresholdSweep"]
