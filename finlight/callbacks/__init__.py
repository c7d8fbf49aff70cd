"""Callbacks that every finlight run gets from the CLI (checkpoints, reports, prediction files)."""

from finlight.callbacks.checkpoint import RunCheckpoint
from finlight.callbacks.evaluation_report import EvaluationReport
from finlight.callbacks.prediction_writer import PredictionWriter

__all__ = ["EvaluationReport", "PredictionWriter", "RunCheckpoint"]
