"""The support study's report (`config.py` of this folder): written after its runs."""


def write(out: str) -> None:
  raise NotImplementedError(f"The support study's report is not written yet ({out}).")
