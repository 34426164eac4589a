r"""The law's support against its strength at fixed θ̄ = 3/4 (issue 26): a pre-registered study.

The regimes study (`experiments/studies/regimes/`) found, on clean labels, that the
random laws at θ̄ = 3/4 beat the constant θ = 3/4, and that atoms {½, 1} gained a lot
on two Fashion-MNIST-C corruptions. Its laws differed in their support as well as in
σ²/θ̄², and its seeds 0–2 of ERM and Beta(1) were the pilot's. This study separates the
two on fresh seeds.

Setting `overfit` (the regimes study's): the recipe CNN of `experiments/fashion_mnist.py`
without its regularizers (no crop or flip, no weight decay), SGD Nesterov lr 0.025
cosine, batch 128, folded λ, on the first 3,000 clean training images × 40 epochs; final
evaluation on the test split, plain, test-time rescaled and temperature scaled (the
temperature fit on the validation split), and on five Fashion-MNIST-C corruptions
(`SHIFT`: shot_noise, glass_blur, rotate, fog, canny_edges). Seeds 5–14 (none of them a
seed of the pilot or of the regimes study); the runs of a seed share initialization and
data order, so every contrast is paired by seed. The 8 arms (`ARMS`), θ̄ = 3/4 for all
but ERM:

  arm                                       σ²/θ̄²
  ERM                                       –
  constant θ = 3/4 (δ = 0)                  0
  two atoms {3/4 ± δ}, weights ½, δ = 0.10  16δ²/9 = 0.0178
                                  δ = 0.15  0.0400
                                  δ = 0.20  0.0711
                                  δ = 0.25  0.1111 (= atoms {½, 1})
  three atoms {½, ¾, 1}, weights ¼, ½, ¼    1/18
  W(0.5)                                    1/18

The three-atom law and W(0.5) share θ̄ and σ² (hence γ²): they differ only in their
support, the three-atom law putting mass on exact half-mixes (θ = ½) and unmixed
examples (θ = 1), W(0.5) a continuous law on [½, 1].

PRE-REGISTRATION (written, and committed, before any run of this study).

Metrics (the family's m = 11 metrics, all on the test split of the final evaluation):
test accuracy; NLL; NLL after temperature scaling; ECE (15 bins); ECE after temperature
scaling; Fashion-MNIST-C accuracy, the mean over the five corruptions and on each of
shot_noise, glass_blur, rotate, fog and canny_edges.

Primary contrasts, each one family of 11 tests (one per metric):
  F1 trend. The per-seed OLS slope of the metric against σ²/θ̄² over the symmetric
     two-atom family, δ = 0, 0.10, 0.15, 0.20, 0.25 (the constant θ = 3/4 included as
     δ = 0): one slope per seed, then a two-sided one-sample t-test of the 10 slopes
     against 0, with its 95% t-interval (reported as the change over σ²/θ̄² = 0 → 1/9).
  F2 support at equal moments. Three atoms − W(0.5), paired by seed: two-sided paired
     t-test and 95% t-interval of the 10 per-seed differences (the corruptions fog and
     canny_edges, where atoms {½, 1} gained in the regimes study, are among the 11).
  F3 the top of the range. δ = 0.25 − δ = 0.20, paired by seed as F2.
Correction: Holm's step-down over the 11 tests of each family (familywise error 5%
within a family; the three families are separate questions and are not corrected
against each other). A contrast is called separated from 0 only where its
Holm-adjusted p-value is below 0.05; otherwise it is undecided, and the report gives
the seeds a paired t-test at α = 0.05/11 (Holm's first, strictest step) would need for
80% power at the observed mean difference and standard deviation.

The report answers: (1) is there a trend in σ²/θ̄² at fixed θ̄ and fixed support size,
or a step from the constant to a random law (F1 and F3; beside them, exploratory, the
slope without the constant arm, δ = 0.10 … 0.25, and δ = 0.10 − constant); (2) does the
support matter at equal moments (F2); (3) which effects survive temperature scaling
(the raw and temperature-scaled NLL and ECE side by side in each family). It shows the
per-seed lines, not only means, and names this commit as the pre-registration.

Everything else is exploratory and labelled so: contrasts with ERM, the test-time
rescaled metrics, C ECE and C NLL, other calibration metrics, the exploratory slopes
above.

  python -m mixjax.data.prepare --dataset=fashion_mnist --data_dir=DIR
  python -m mixjax.data.prepare --dataset=fashion_mnist_corrupted --data_dir=DIR
  python -m mixjax.main --config=experiments/studies/support/config.py:overfit --sweep \
      --workdir=runs/support --config.dataset.data_dir=DIR
  python -m mixjax.studies --config=experiments/studies/support/config.py:overfit \
      --workdir=runs/support --out=results/support
"""
import os

from mixjax.studies import laws
from mixjax.studies import runs
from mixjax.studies import study
from mixjax.train import sweeps

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(HERE, "..", "..", "fashion_mnist.py")
# Its "cpu_he" variant: the CPU recipe with the models' default initialization ("he"),
# which this study's recorded runs used (the recipe itself initializes as PyTorch does
# since 7 December).
SETTINGS = ("overfit",)
SEEDS = tuple(range(5, 15))
# No augmentation, no weight decay; folded λ (θ = max(λ, 1 − λ), the theory's law);
# final evaluation only; a checkpoint every 400 steps (a sweep stopped mid-run resumes);
# 3,000 clean images × 40 epochs; the five corruptions of Fashion-MNIST-C, one of each
# kind (noise, blur, geometry, occlusion, edges). The regimes study's `overfit` setting.
SHIFT = tuple(f"fashion_mnist_corrupted/{c}" for c in
              ("shot_noise", "glass_blur", "rotate", "fog", "canny_edges"))
OVERFIT = {"augment.enabled": False, "optimizer.weight_decay": 0.0, "mixing.fold": True,
           "eval.every_epochs": 0, "tensorboard": False, "checkpoint_every_steps": 400,
           "max_to_keep": 1, "log_every_steps": 10, "dataset.num_train": 3000,
           "num_epochs": 40, "eval.shift": SHIFT}

DELTAS = (0.10, 0.15, 0.20, 0.25)
# The atoms 3/4 ± δ written as decimals (not computed), so that the points and labels
# are exact: {0.65, 0.85}, {0.6, 0.9}, {0.55, 0.95}, {0.5, 1}.
TWO_ATOMS = {0.10: (0.65, 0.85), 0.15: (0.6, 0.9), 0.20: (0.55, 0.95), 0.25: (0.5, 1.0)}
ERM = laws.law("erm")
CONSTANT = laws.law("constant", lam=0.75)
THREE_ATOMS = laws.law("atoms", points=(0.5, 0.75, 1.0), weights=(0.25, 0.5, 0.25))
W05 = laws.law("w_shaped", a=0.5)
ARMS = ([ERM, CONSTANT]
        + [laws.law("atoms", points=TWO_ATOMS[d], weights=(0.5, 0.5)) for d in DELTAS]
        + [THREE_ATOMS, W05])
# The symmetric two-atom family by δ (δ = 0: the constant law), for the trend (F1).
FAMILY = {0.0: CONSTANT, **{d: ARMS[2 + i] for i, d in enumerate(DELTAS)}}


def get_config(setting: str = "overfit"):
  """The recipe without its regularizers, on 3,000 clean images × 40 epochs. The law
  and the seed are the points' (`get_sweep`: `ARMS` × `SEEDS`)."""
  if setting not in SETTINGS:
    raise ValueError(f"Unknown setting {setting!r}; known: {', '.join(SETTINGS)}.")
  return sweeps.sweep_config(sweeps.load_config_module(RECIPE).get_config("cpu_he"), OVERFIT)


def get_sweep(setting: str = "overfit") -> list[dict]:
  """Law-major: every arm of `ARMS` with every seed of `SEEDS` (paired by seed)."""
  if setting not in SETTINGS:
    raise ValueError(f"Unknown setting {setting!r}; known: {', '.join(SETTINGS)}.")
  return runs.points(ARMS, SEEDS)


def measure(setting: str, trained) -> dict:
  """Fashion-MNIST-C per corruption (`report.measure`)."""
  del setting
  return study.sibling(__file__, "report").measure(trained)


def report(out: str) -> None:
  """results/support/report.md from the saved JSON (`report.write`)."""
  study.sibling(__file__, "report").write(out)
