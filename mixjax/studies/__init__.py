"""The studies framework. A study is a folder experiments/studies/<study>/ (its
`config.py` with a question, `get_config`, `get_sweep` and a `report`; its report and
measurement code; a README.md linking results/<study>/), trained by `python -m mixjax.main
--config=<study>/config.py:<setting> --sweep` and collected and reported by `python -m
mixjax.studies`. This package holds only what every study shares; the modules are listed
in docs/ARCHITECTURE.md."""
