"""The studies: experiments/studies/<study>.py files (a question, `get_config`,
`get_sweep` and a `report`), trained by `python -m mixjax.main --config=<file>:<setting>
--sweep` and collected and reported by `python -m mixjax.studies`. The modules are listed
in docs/ARCHITECTURE.md."""
