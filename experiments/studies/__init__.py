"""Study commands (`python -m experiments.studies.<name> --out results/<name>`).

Each study trains with `mixjax.studies.engine` (many runs vmapped in one compiled
program), saves raw results with provenance (`mixjax.studies.records`) and has a
separate report step (`--mode=report`) that remakes its Markdown tables and PNG figures
from the saved files without retraining.
"""
