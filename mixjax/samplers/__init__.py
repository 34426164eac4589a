"""Mixing laws, one family: λ-laws and mask laws, their sampling, moments and quadrature
(docs/THEORY.md §1, §6 and §8).

  laws.py          the λ-laws (Beta, Constant, WShaped, Mixture, FromFn), their structured
                   θ-laws, labels, the `SAMPLERS` registry, `make_sampler`; samplers are
                   pytrees (numeric leaves), `stack` vmaps same-structure laws
  masks.py         mask laws (CutMix, GMix, Switch): `law.masks(key, B, (H, W))`; every
                   λ-law is a constant mask (`Sampler.masks`)
  moments.py       `theta_moments` (exact, or Monte-Carlo for `from_fn`), `MomentArrays`;
                   `mask_moments` (N̄, θ̄, σ², γ², C_N, S_N, c_N, s_N; exact for CutMix),
                   `law_moments` (either kind)
  quadrature.py    `theta_quadrature` (Gauss rules over the θ-law), `mask_support`

Everything is re-exported here: `from mixjax import samplers; samplers.beta(0.2)`.
"""
from mixjax.samplers.laws import Atom
from mixjax.samplers.laws import Beta
from mixjax.samplers.laws import Constant
from mixjax.samplers.laws import FoldedBeta
from mixjax.samplers.laws import FromFn
from mixjax.samplers.laws import MOMENT_FIELDS
from mixjax.samplers.laws import Mixture
from mixjax.samplers.laws import SAMPLERS
from mixjax.samplers.laws import Sampler
from mixjax.samplers.laws import ShiftedBeta
from mixjax.samplers.laws import ThetaLaw
from mixjax.samplers.laws import Unknown
from mixjax.samplers.laws import WShaped
from mixjax.samplers.laws import atoms
from mixjax.samplers.laws import beta
from mixjax.samplers.laws import constant
from mixjax.samplers.laws import erm
from mixjax.samplers.laws import from_fn
from mixjax.samplers.laws import make_sampler
from mixjax.samplers.laws import matched_atoms
from mixjax.samplers.laws import mixture
from mixjax.samplers.laws import optimal
from mixjax.samplers.laws import regmixup
from mixjax.samplers.laws import regmixup_equivalent
from mixjax.samplers.laws import stack
from mixjax.samplers.laws import structure
from mixjax.samplers.laws import uniform
from mixjax.samplers.laws import validate
from mixjax.samplers.laws import w_shaped
from mixjax.samplers.masks import CutMix
from mixjax.samplers.masks import GMix
from mixjax.samplers.masks import MaskLaw
from mixjax.samplers.masks import Switch
from mixjax.samplers.masks import box_masks
from mixjax.samplers.masks import cutmix
from mixjax.samplers.masks import cutmix_boxes
from mixjax.samplers.masks import gaussian_masks
from mixjax.samplers.masks import gmix
from mixjax.samplers.masks import image_hw
from mixjax.samplers.masks import is_mask_law
from mixjax.samplers.masks import switch
from mixjax.samplers.moments import DEFAULT_MASK_DRAWS
from mixjax.samplers.moments import DEFAULT_NUM_DRAWS
from mixjax.samplers.moments import MaskMoments
from mixjax.samplers.moments import MaskStderr
from mixjax.samplers.moments import MomentArrays
from mixjax.samplers.moments import ThetaMoments
from mixjax.samplers.moments import ThetaStderr
from mixjax.samplers.moments import describe
from mixjax.samplers.moments import law_moments
from mixjax.samplers.moments import mask_moments
from mixjax.samplers.moments import stack_moments
from mixjax.samplers.moments import theta_moments
from mixjax.samplers.quadrature import mask_support
from mixjax.samplers.quadrature import theta_quadrature
