"""Study commands (`python -m experiments.studies.<name> --out results/<name>`).

Each study is a trainer config and a list of points (`mixjax.studies.runs`) trained by
the one trainer, `mixjax.train.train_sweep` (runs that differ only in the seed, the λ-law's
parameters and the optimizer's lr / weight decay vmapped in one compiled program where
that is faster), saves raw results with provenance (`mixjax.studies.records`) and has a
separate report step (`--mode=report`) that remakes its Markdown tables and PNG figures
from the saved files without retraining.

The XLA:CPU workaround (YNNPACK fusions off, set before JAX creates its CPU backend)
lives in `mixjax._xla_cpu` and applies to everything that imports mixjax.
"""
from mixjax import _xla_cpu  # noqa: F401  (before any study module imports jax)
