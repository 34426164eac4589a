r"""Where mixup helps on real images, and which law helps most there (issue 19).

The Fashion-MNIST study (`../fashion_mnist/`) asked which law regularizes best in a regime
where mixup only costs (crop + flip, weight decay, 8 epochs). Here the other
regularizers are off (no augmentation, no weight decay: the recipe CNN of
`experiments/fashion_mnist.py` on a subset, SGD with Nesterov momentum, lr 0.025 cosine,
batch 128, folded λ), so ERM overfits, and the laws are compared where mixup wins:
  * pilot settings (ERM vs mixup Beta(1), 3 seeds): `pilot_clean`, 3,000 images × 20
    or 40 epochs on clean labels; `pilot_noise`, symmetric label noise 0 / 20 / 40% on
    5,000 images × 20 epochs (its clean cell the second subset size);
  * the two study settings the pilot chose (5 seeds, paired by seed; `eval.shift` on
    Fashion-MNIST-C): `overfit` (clean labels: mixup wins on NLL) and `noisy` (label
    noise: mixup wins on accuracy), with the laws of `LAWS`: ERM; label smoothing matched
    to Beta(1) (ε = 1 − θ̄ = 1/4, Theorem 1's label part alone); θ̄ = 3/4 with σ²/θ̄²
    rising (constant 3/4: 0, Beta(1): 1/27, W(0.5): 1/18, atoms {½, 1}: 1/9); across θ̄
    (Beta(0.2), Beta(2), the σ²/θ̄²-optimal law); CutMix(1) against Beta(1).

  python -m mixjax.data.prepare --dataset=fashion_mnist --data_dir=DIR
  python -m mixjax.data.prepare --dataset=fashion_mnist_corrupted --data_dir=DIR
  python -m mixjax.main --config=experiments/studies/regimes/config.py:<setting> --sweep \
      --workdir=runs/regimes/<setting> --config.dataset.data_dir=DIR
  python -m mixjax.studies --config=experiments/studies/regimes/config.py:<setting> \
      --workdir=runs/regimes/<setting> --out=results/regimes
"""
import os

from mixjax.studies import laws
from mixjax.studies import runs
from mixjax.studies import study
from mixjax.train import sweeps

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                      "fashion_mnist.py")
# Its "cpu_he" variant: the CPU recipe with the models' default initialization ("he"),
# which this study's recorded runs used (the recipe itself initializes as PyTorch does
# since 7 December).
# No augmentation, no weight decay; folded λ (θ = max(λ, 1 − λ), the theory's law);
# final evaluation only; a checkpoint every 400 steps (a sweep stopped mid-run resumes).
COMMON = {"augment.enabled": False, "optimizer.weight_decay": 0.0, "mixing.fold": True,
          "eval.every_epochs": 0, "tensorboard": False, "checkpoint_every_steps": 400,
          "max_to_keep": 1, "log_every_steps": 10}
ERM, BETA1 = laws.law("erm"), laws.law("beta", alpha=1.0)
SMOOTHING = {"method.name": "label_smoothing_matched", **BETA1}  # ε = 1 − θ̄(Beta(1)) = 1/4
LAWS = [ERM, SMOOTHING, laws.law("constant", lam=0.75), BETA1, laws.law("w_shaped", a=0.5),
        laws.law("atoms", points=(0.5, 1.0), weights=(0.5, 0.5)),
        laws.law("beta", alpha=0.2), laws.law("beta", alpha=2.0), laws.law("optimal"),
        laws.law("cutmix", alpha=1.0)]
# Five corruptions of Fashion-MNIST-C, one of each kind (noise, blur, geometry, occlusion,
# edges); each corruption adds two 10,000-image evaluations (plain and rescaled) to a
# run's final evaluation.
SHIFT = tuple(f"fashion_mnist_corrupted/{c}" for c in
              ("shot_noise", "glass_blur", "rotate", "fog", "canny_edges"))
SETTINGS = {
    "pilot_clean": dict(config={"dataset.num_train": 3000},
                        grid=[{"num_epochs": e} for e in (20, 40)],
                        laws=[ERM, BETA1], seeds=3),
    "pilot_noise": dict(config={"dataset.num_train": 5000, "num_epochs": 20},
                        grid=[{"dataset.label_noise": p} for p in (0.0, 0.2, 0.4)],
                        laws=[ERM, BETA1], seeds=3),
    "overfit": dict(config={"dataset.num_train": 3000, "num_epochs": 40, "eval.shift": SHIFT},
                    grid=[{}], laws=LAWS, seeds=5),
    "noisy": dict(config={"dataset.num_train": 5000, "num_epochs": 20,
                          "dataset.label_noise": 0.2, "eval.shift": SHIFT},
                  grid=[{}], laws=LAWS, seeds=5),
}


def get_config(setting: str = "overfit"):
  """The recipe without its regularizers (`COMMON`), with the setting's data and length."""
  if setting not in SETTINGS:
    raise ValueError(f"Unknown setting {setting!r}; known: {', '.join(SETTINGS)}.")
  return sweeps.sweep_config(sweeps.load_config_module(RECIPE).get_config("cpu_he"),
                             {**COMMON, **SETTINGS[setting]["config"]})


def get_sweep(setting: str = "overfit") -> list[dict]:
  """Grid cell-major, then law-major: every cell × law × seed (paired by seed)."""
  s = SETTINGS[setting]
  return [p for cell in s["grid"] for p in runs.points(s["laws"], range(s["seeds"]), **{
      k.replace(".", "__"): v for k, v in cell.items()})]


def columns(setting: str, config) -> dict:
  return study.sibling(__file__, "report").columns(config)


def measure(setting: str, trained) -> dict:
  return study.sibling(__file__, "report").measure(trained)


TRAIN = ("python -m mixjax.main --config=experiments/studies/regimes/config.py:{s} --sweep "
         "--workdir=runs/regimes/{s} --config.dataset.data_dir=DIR")
COLLECT = ("python -m mixjax.studies --config=experiments/studies/regimes/config.py:{s} "
           "--workdir=runs/regimes/{s} --out=results/regimes")


def report(out: str) -> None:
  study.sibling(__file__, "report").write_report(out, list(SETTINGS), intro=[
      "# Regimes: where mixup beats ERM on Fashion-MNIST, and which law does best there\n",
      f"Generated by `python -m mixjax.studies --config=experiments/studies/regimes/config.py "
      f"--out={out}` from the saved JSON (no retraining). Each setting was trained and "
      "collected by\n\n```\n" + "\n".join(
          TRAIN.format(s=s) + "\n" + COLLECT.format(s=s) for s in SETTINGS) + "\n```\n",
      "The recipe CNN of `experiments/fashion_mnist.py` with its other regularizers off (no "
      "crop or flip, no weight decay), so that ERM memorizes its training set. The pilot "
      "(ERM against mixup Beta(1), 3 seeds) chose the two study settings: `overfit`, the "
      "clean cell where Beta(1)'s NLL gain has a paired CI excluding 0, and `noisy`, the "
      "label-noise cell where its accuracy gain does. Every contrast is paired by seed "
      "(the runs of a seed share initialization and data order); `*` marks a nominal 95% "
      "CI excluding 0, not corrected for the number of intervals (the verdict below says "
      "how many there are; the slope tests are Holm-corrected). The arms of each setting "
      "are the laws of `config.py`'s `LAWS` (the record's base config marks the law and "
      "seed as set per point). Fashion-MNIST-C: " + ", ".join(c.split("/")[-1] for c in SHIFT)
      + " (one corruption of each kind, to keep the study in its CPU budget; each further "
      "corruption adds two 10,000-image evaluations to a run).\n"],
      commands={s: f"`{TRAIN.format(s=s)}`" for s in SETTINGS})
