"""The studies framework. A study lives in its own folder, experiments/studies/<study>/:
`config.py` (its question, `SETTINGS`, `get_config`, `get_sweep`, `report`), its report
code and study-specific measurements beside it, and a README.md linking its results in
results/<study>/. A setting is trained by `python -m mixjax.main
--config=experiments/studies/<study>/config.py:<setting> --sweep` and collected and
reported by `python -m mixjax.studies` (`study`). This package holds only what every
study shares:

  study          what a study's config.py holds; collect (rows and measurements of a
                 trained setting); `sibling` loads a study folder's other modules
  runs           study configs (base_config + STUDY_TRAINING), points, rows from summaries
  laws           the λ-laws the studies compare, as sweep overrides
  records        saved results with provenance (JSON + npz)
  analysis       statistics (pandas, statsmodels, SciPy): paired differences, per-seed
                 slopes, Holm's correction, the seeds a contrast needs; Markdown tables
  plots          matplotlib helpers
  strength       the report of metrics against the law's strength, shared by the
                 law-sweep studies (mixing_law, fashion_mnist)
"""
