"""Study commands (`python -m experiments.studies.<name> --out results/<name>`).

Each study trains with `mixjax.studies.engine` (many runs vmapped in one compiled
program), saves raw results with provenance (`mixjax.studies.records`) and has a
separate report step (`--mode=report`) that remakes its Markdown tables and PNG figures
from the saved files without retraining.

XLA:CPU workaround. With jaxlib 0.10.2, XLA:CPU's YNNPACK fusions miscompile some
batched reductions: `jax.jit(jax.vmap(f))` returned run 0's value for every run (or
[a, b, a] for three runs) for `mixjax.theory.exact_mixup_risk` on 64 × 40 inputs, while
`jax.jit(f)` per run and `jax.disable_jit()` agree with each other. Disabling those
fusions (`--xla_cpu_experimental_ynn_fusion_type=`) gives the correct values. The study
commands therefore set that flag here, before JAX creates its CPU backend (this package
is imported before any study module). Set MIXJAX_KEEP_YNN=1 to leave XLA_FLAGS alone.
"""
import os as _os

if not _os.environ.get("MIXJAX_KEEP_YNN"):
  _flag = "--xla_cpu_experimental_ynn_fusion_type="
  if _flag not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
