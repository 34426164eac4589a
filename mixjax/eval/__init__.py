"""Evaluation: summable metrics (accuracy, NLL, ECE, Brier, class-wise ECE), metrics of
all predictions at once (adaptive ECE, SmoothECE, AURC), temperature scaling, the
collinearity / manifold-intrusion measure of Chidambaram et al., and a model's evaluation
over a dataset (`Predictor`, `evaluate`, `evaluate_shift`)."""
from __future__ import annotations

from mixjax.eval.calibration import apply_temperature
from mixjax.eval.calibration import fit_temperature
from mixjax.eval.calibration import temperature_nll
from mixjax.eval.collinearity import collinearity
from mixjax.eval.collinearity import make_mixup_points
from mixjax.eval.collinearity import MixupPoints
from mixjax.eval.metrics import classwise_ece
from mixjax.eval.metrics import finalize_metrics
from mixjax.eval.metrics import METRIC_NAMES
from mixjax.eval.metrics import metric_sums
from mixjax.eval.metrics import MetricSums
from mixjax.eval.metrics import reliability_curve
from mixjax.eval.metrics import ReliabilityCurve
from mixjax.eval.pooled import adaptive_ece
from mixjax.eval.pooled import aurc
from mixjax.eval.pooled import POOLED_METRIC_NAMES
from mixjax.eval.pooled import pooled_metrics
from mixjax.eval.pooled import risk_coverage
from mixjax.eval.pooled import RiskCoverage
from mixjax.eval.pooled import smooth_ece
from mixjax.eval.pooled import smooth_reliability
from mixjax.eval.pooled import SmoothReliability
from mixjax.eval.pooled import top_label
from mixjax.eval.predict import evaluate
from mixjax.eval.predict import evaluate_shift
from mixjax.eval.predict import metrics_of
from mixjax.eval.predict import Predictor

__all__ = [
    "METRIC_NAMES", "MetricSums", "MixupPoints", "POOLED_METRIC_NAMES", "Predictor",
    "ReliabilityCurve", "RiskCoverage", "SmoothReliability", "adaptive_ece",
    "apply_temperature", "aurc", "classwise_ece", "collinearity", "evaluate",
    "evaluate_shift", "finalize_metrics", "fit_temperature", "make_mixup_points",
    "metric_sums", "metrics_of", "pooled_metrics", "reliability_curve", "risk_coverage",
    "smooth_ece", "smooth_reliability", "temperature_nll", "top_label",
]
