"""mixjax: mixup regularization in JAX/Flax.

The research core is re-exported here: λ laws and mask laws (`mixjax.samplers`), mixing,
losses, and the theory of Carratino et al. (perturbed ERM, Lemma 2, the exact and
approximate mixup risks, test-time rescaling; for masks docs/THEORY.md §8). See docs/THEORY.md for the mathematics and docs/ARCHITECTURE.md for the
layout. Models, data, training and evaluation live in their sub-packages and are not
imported here, so `import mixjax` stays light.

Importing mixjax first sets the XLA:CPU workaround of `mixjax._xla_cpu` (YNNPACK fusions
off) before JAX is imported.
"""
from mixjax import _xla_cpu  # noqa: F401  (must run before jax is imported)
from mixjax import samplers
from mixjax.losses import LOSSES
from mixjax.losses import batch_loss
from mixjax.losses import cross_entropy
from mixjax.losses import erm_loss
from mixjax.losses import get_loss
from mixjax.losses import mixup_loss
from mixjax.losses import regmixup_loss
from mixjax.losses import squared
from mixjax.mixing import mix
from mixjax.mixing import Mixed
from mixjax.samplers import SAMPLERS
from mixjax.samplers import MaskMoments
from mixjax.samplers import ThetaMoments
from mixjax.samplers import law_moments
from mixjax.samplers import make_sampler
from mixjax.samplers import mask_moments
from mixjax.samplers import theta_moments
from mixjax.samplers import theta_quadrature
from mixjax.theory import DataStats
from mixjax.theory import PerturbationCovariances
from mixjax.theory import StatsAccumulator
from mixjax.theory import approx_mixup_risk
from mixjax.theory import approx_mixup_terms
from mixjax.theory import data_stats
from mixjax.theory import exact_mixup_risk
from mixjax.theory import perturbation_covariances
from mixjax.theory import perturbed_erm_loss
from mixjax.theory import rescaled
from mixjax.theory import transform

__version__ = "0.1.0"

__all__ = [
    "DataStats", "LOSSES", "MaskMoments", "Mixed", "PerturbationCovariances", "SAMPLERS",
    "StatsAccumulator", "ThetaMoments", "approx_mixup_risk", "approx_mixup_terms",
    "batch_loss", "cross_entropy", "data_stats", "erm_loss", "exact_mixup_risk", "get_loss",
    "law_moments", "make_sampler", "mask_moments", "mix", "mixup_loss",
    "perturbation_covariances", "perturbed_erm_loss", "regmixup_loss", "rescaled",
    "samplers", "squared", "theta_moments", "theta_quadrature", "transform",
]
