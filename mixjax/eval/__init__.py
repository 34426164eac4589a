"""Evaluation: summable metrics (accuracy, NLL, ECE, Brier), temperature scaling, the
collinearity / manifold-intrusion measure of Chidambaram et al., and a model's evaluation
over a dataset (`Predictor`, `evaluate`)."""
from __future__ import annotations

from mixjax.eval.calibration import apply_temperature
from mixjax.eval.calibration import fit_temperature
from mixjax.eval.calibration import temperature_nll
from mixjax.eval.collinearity import collinearity
from mixjax.eval.collinearity import make_mixup_points
from mixjax.eval.collinearity import MixupPoints
from mixjax.eval.metrics import finalize_metrics
from mixjax.eval.metrics import METRIC_NAMES
from mixjax.eval.metrics import metric_sums
from mixjax.eval.metrics import MetricSums
from mixjax.eval.metrics import reliability_curve
from mixjax.eval.metrics import ReliabilityCurve
from mixjax.eval.predict import evaluate
from mixjax.eval.predict import metrics_of
from mixjax.eval.predict import Predictor

__all__ = [
    "METRIC_NAMES", "MetricSums", "MixupPoints", "Predictor", "ReliabilityCurve",
    "apply_temperature", "collinearity", "evaluate", "finalize_metrics", "fit_temperature",
    "make_mixup_points", "metric_sums", "metrics_of", "reliability_curve",
    "temperature_nll",
]
