"""The mixup theory of docs/THEORY.md: data statistics, Theorem 1 and Lemma 2 (perturbed ERM),
the exact mixup risk by quadrature, Theorem 3's approximate risk and its estimators, and
the test-time rescaling. Pure `jnp` functions of a logits function `f(x) -> u`.
`mixjax.theory.diagnostics` (not re-exported) holds the per-example Theorem 3 terms and
the seed notes' bounds, dense per example, for small inputs."""
from mixjax.theory.approx_risk import DEFAULT_TERMS
from mixjax.theory.approx_risk import ESTIMATORS
from mixjax.theory.approx_risk import LossDerivatives
from mixjax.theory.approx_risk import TERMS
from mixjax.theory.approx_risk import approx_mixup_risk
from mixjax.theory.approx_risk import approx_mixup_terms
from mixjax.theory.approx_risk import loss_derivatives
from mixjax.theory.exact_risk import exact_mixup_risk
from mixjax.theory.perturbation import MaskPerturbationCovariances
from mixjax.theory.perturbation import PerturbationCovariances
from mixjax.theory.perturbation import Perturbations
from mixjax.theory.perturbation import perturbation_covariances
from mixjax.theory.perturbation import perturbed_erm_loss
from mixjax.theory.perturbation import sample_perturbations
from mixjax.theory.perturbation import transform
from mixjax.theory.perturbation import transform_inputs
from mixjax.theory.perturbation import transform_labels
from mixjax.theory.rescaling import rescaled
from mixjax.theory.stats import DataStats
from mixjax.theory.stats import StatsAccumulator
from mixjax.theory.stats import data_stats
