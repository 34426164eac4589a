"""Study commands (`python -m experiments.studies.<name> --out results/<name>`).

Each study trains with `mixjax.studies.engine` (many runs vmapped in one compiled
program), saves raw results with provenance (`mixjax.studies.records`) and has a
separate report step (`--mode=report`) that remakes its Markdown tables and PNG figures
from the saved files without retraining.

The XLA:CPU workaround (YNNPACK fusions off, set before JAX creates its CPU backend)
lives in `mixjax._xla_cpu` and applies to everything that imports mixjax.
"""
from mixjax import _xla_cpu  # noqa: F401  (before any study module imports jax)
