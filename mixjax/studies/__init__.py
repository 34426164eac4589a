"""The studies: experiments/studies/<study>.py files (a question, `get_config`,
`get_sweep` and a `report`), trained by `python -m mixjax.main --config=<file>:<setting>
--sweep` and collected and reported by `python -m mixjax.studies` (`study`).

  study          what a study file holds; rows and measurements of a trained setting
  runs           study configs (base_config + STUDY_TRAINING), points, rows from summaries
  laws           the λ-laws the studies compare, as sweep overrides
  records        saved results with provenance (JSON + npz)
  analysis       statistics (pandas, statsmodels, SciPy) and Markdown tables
  plots          matplotlib helpers
  strength       report: metrics against the law's strength (mixing law, Fashion-MNIST)
  claims         the paper's claims: training variants, rescaling and approx reports
  boundaries     decision boundaries of 2-d models (measurement and figure)
  trajectories   Theorem 3's terms and the notes' bounds along training
  diagnostics    per-example terms and bounds (the math of `trajectories`)
  reliability    reliability diagrams pooled over seeds
  collinearity   distance of mixup points to other classes (no training)
"""
