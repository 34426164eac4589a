"""experiments/imagenet.py: the official recipe's values, its learning-rate schedule
against the official code's definition, one training step of the recipe's ResNet-50 in
bfloat16, and the messages for an ImageNet (or ImageNet-C/V2) that is not prepared."""
from __future__ import annotations

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import losses
from mixjax import models
from mixjax import samplers
from mixjax.data import shift
from mixjax.data import tfds_data
from mixjax.train import config as config_lib
from mixjax.train import optim
from mixjax.train import setup
from mixjax.train import sweeps
from mixjax.train import validate
from mixjax.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The dataset keys of the streaming trainer, which experiments/imagenet.py sets.
STREAMING_KEYS = ("dataset.streaming", "dataset.image_size", "dataset.num_workers",
                  "dataset.num_classes")


def load():
  return sweeps.load_config_module(os.path.join(ROOT, "experiments", "imagenet.py"))


def test_recipe_is_the_official_one():
  """uncertainty-baselines baselines/imagenet/deterministic.py and utils.py (mixup)."""
  module = load()
  c = module.get_config()
  assert (c.dataset.name, c.dataset.image_size, c.dataset.streaming) == (
      "imagenet2012", 224, True)
  assert (c.dataset.num_classes, c.dataset.val_fraction) == (1000, 0.0)
  assert isinstance(c.dataset.num_workers, int) and c.dataset.num_workers >= 1
  assert (c.model.name, c.model.dtype) == ("resnet50", "bfloat16")
  assert (c.method.name, c.sampler.name, dict(c.sampler.params)) == (
      "mixup", "beta", {"alpha": 0.2})
  assert (c.mixing.granularity, c.mixing.pairing, c.mixing.fold) == (
      "example", "reverse", True)
  o = c.optimizer
  assert (o.name, o.momentum, o.nesterov, o.schedule) == ("sgd", 0.9, True, "piecewise")
  assert (c.batch_size, o.lr) == (1024, 0.1 * 1024 / 256)
  assert (o.warmup_epochs, tuple(o.boundaries), o.decay_factor) == (5, (30, 60, 80), 0.1)
  assert c.num_epochs == 90
  # The official l2 · ‖w‖² has gradient 2 · l2 · w; mixjax's coupled decay adds wd · w.
  assert o.weight_decay == 2 * 1e-4
  assert (c.eval.num_bins, c.eval.rescale) == (15, True)

  erm = module.get_config("erm")
  assert (erm.method.name, erm.num_epochs, erm.eval.rescale) == ("erm", 90, False)
  long = module.get_config("mixup_rescaled_200ep")
  assert long.num_epochs == 200
  assert tuple(long.optimizer.boundaries) == (66, 133, 177)  # ⌊200·{30,60,80}/90⌋
  assert long.optimizer.warmup_epochs == 5
  big = module.get_config("erm,batch=4096")  # the official global batch (32 × 128)
  assert (big.method.name, big.batch_size, big.optimizer.lr) == ("erm", 4096, 1.6)
  assert set(module.ANCHORS) == {"erm", "mixup_rescaled", "mixup_rescaled_200ep"}
  assert module.ANCHORS["mixup_rescaled_200ep"] == {
      "epochs": 200, "nll": 0.888, "accuracy": 0.777, "ece": 0.028}
  for bad, match in (("mixup", "unknown variant 'mixup'.*erm, mixup_rescaled"),
                     ("erm,batch=0", "batch=<positive int>"),
                     ("erm,lr=3", "unknown argument 'lr=3'")):
    with pytest.raises(ValueError, match=match):
      module.get_config(bad)


def _official_lr(step, *, base_lr, steps_per_epoch, decay_epochs, warmup_epochs=5,
                 decay_ratio=0.1):
  """uncertainty-baselines' WarmUpPiecewiseConstantSchedule, from its definition: with
  e = step / steps_per_epoch, base_lr · e / warmup_epochs, replaced by
  base_lr · decay_ratio^k once e ≥ the k-th of [warmup_epochs, *decay_epochs]."""
  e = step / steps_per_epoch
  lr = base_lr * e / warmup_epochs
  for k, start in enumerate([warmup_epochs, *decay_epochs]):
    if e >= start:
      lr = base_lr * decay_ratio**k
  return lr


@pytest.mark.parametrize("arg,epochs", [(None, 90), ("mixup_rescaled_200ep", 200)])
def test_schedule_matches_the_official_definition(arg, epochs):
  """ImageNet-1k: 1,281,167 images, batch 1024: 1251 steps per epoch (remainder
  dropped, as both codes do). Hand values: peak 0.4 reached at the end of the 5-epoch
  warm-up (step 6255), ×0.1 at epochs 30, 60, 80 (steps 37530, 75060, 100080); and the
  official schedule's value at every boundary ± 1 and on a grid of steps."""
  c = load().get_config(arg)
  spe = 1_281_167 // 1024
  assert spe == 1251
  total = epochs * spe
  schedule = optim.make_schedule(c.optimizer, spe, total)
  lr = lambda s: float(schedule(s))
  if epochs == 90:
    np.testing.assert_allclose(lr(0), 0.0)
    np.testing.assert_allclose(lr(6254), 0.4 * 6254 / 6255, rtol=1e-6)
    np.testing.assert_allclose(lr(6255), 0.4, rtol=1e-6)
    np.testing.assert_allclose(lr(37529), 0.4, rtol=1e-6)
    np.testing.assert_allclose(lr(37530), 0.04, rtol=1e-6)
    np.testing.assert_allclose(lr(75060), 0.004, rtol=1e-6)
    np.testing.assert_allclose(lr(100079), 0.004, rtol=1e-6)
    np.testing.assert_allclose(lr(100080), 0.0004, rtol=1e-6)
    np.testing.assert_allclose(lr(total - 1), 0.0004, rtol=1e-6)
  bounds = [b * spe for b in (5, *c.optimizer.boundaries)]
  steps = sorted({*range(0, total, 997), *(b + d for b in bounds for d in (-1, 0, 1))})
  for s in steps:
    want = _official_lr(s, base_lr=0.4, steps_per_epoch=spe,
                        decay_epochs=tuple(c.optimizer.boundaries))
    np.testing.assert_allclose(lr(s), want, rtol=1e-6, atol=1e-9, err_msg=f"step {s}")


def test_one_training_step_of_the_recipe_at_a_small_image_size():
  """The full ResNet-50 of the config (1000 classes, bfloat16) at 32×32, batch 2: one
  SGD steps of the recipe's optimizer and mixup loss on a synthetic batch. The first loss
  is float32 and near ln 1000 = 6.9 (the N(0, 0.01²) head gives logits with a spread
  well below 1, and cross-entropy = ln 1000 + O(spread)); the loss on the same batch
  falls; parameters, optimizer state and BatchNorm statistics stay float32, and every
  parameter tensor moves."""
  c = load().get_config()
  model = models.build_model(c.model.name, 1000, dict(c.model.kwargs), dtype=c.model.dtype)
  tx = optim.make_optimizer(c.optimizer, steps_per_epoch=10, total_steps=100)
  law = samplers.make_sampler(c.sampler.name, **dict(c.sampler.params))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  y = jax.nn.one_hot(jnp.asarray([3, 997]), 1000)
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
  opt_state = tx.init(variables["params"])

  @jax.jit
  def step(params, batch_stats, opt_state, key):
    def loss_fn(p):
      out = {}

      def f(xm):
        logits, out["upd"] = model.apply({"params": p, "batch_stats": batch_stats}, xm,
                                         train=True, mutable=["batch_stats"])
        return logits
      loss = losses.mixup_loss(key, f, x, y, law, granularity=c.mixing.granularity,
                               pairing=c.mixing.pairing, fold=c.mixing.fold)
      return loss, out["upd"]["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  # Three steps of the warm-up (the first one's rate is 0).
  params, batch_stats = variables["params"], variables["batch_stats"]
  seen = []
  for _ in range(3):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state,
                                                jax.random.key(1))
    assert loss.dtype == jnp.float32
    seen.append(float(loss))
  assert abs(seen[0] - np.log(1000)) < 1.0, seen
  assert np.all(np.isfinite(seen)) and seen[2] < seen[0], seen
  state = (params, batch_stats, opt_state)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state)
             if jnp.issubdtype(a.dtype, jnp.floating))
  chex.assert_trees_all_equal_shapes(params, variables["params"])
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, variables["params"])
  assert all(jax.tree.leaves(moved))


def test_missing_imagenet_says_how_to_prepare_it_in_one_line(tmp_path):
  """tfds' imagenet2012 is downloaded by hand: the message (FileNotFoundError, which
  `mixjax.main` turns into exit code 4) is one line naming the folder looked in, the two
  tar files, and the `tfds build --manual_dir` command for this data_dir."""
  with pytest.raises(FileNotFoundError) as info:
    tfds_data.check_prepared("imagenet2012", str(tmp_path))
  msg = str(info.value)
  assert "\n" not in msg
  assert f"looked in {tmp_path}/imagenet2012/" in msg
  assert "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
  assert (f"tfds build imagenet2012 --manual_dir=MANUAL --data_dir={tmp_path} "
          "--file_format=array_record") in msg
  assert f"--config.dataset.data_dir={tmp_path}" in msg
  # A dataset tfds downloads itself keeps the connected-machine route.
  assert tfds_data.manual_download_instructions("imagenet_v2") is None
  assert tfds_data.manual_download_instructions("cifar10") is None


def test_imagenet_shift_sets_are_known_and_checked(tmp_path):
  """ImageNet-C: the official code's 15 corruptions × 5 severities; ImageNetV2: its three
  sets. The start-up check names what is missing and how to build it."""
  c = shift.get_shift_dataset("imagenet2012_corrupted")
  assert (c.clean, c.split, c.streamed, len(c.configs)) == ("imagenet2012", "validation",
                                                            True, 75)
  assert "jpeg_compression_5" in c.configs and "speckle_noise_1" not in c.configs
  assert "speckle_noise_1" in c.known_configs
  v2 = shift.get_shift_dataset("imagenet_v2")
  assert (v2.clean, v2.split, v2.configs[0]) == ("imagenet2012", "test", "matched-frequency")
  with pytest.raises(FileNotFoundError) as info:
    shift.check_shift_prepared("imagenet2012_corrupted", str(tmp_path), ("fog_3",))
  msg = str(info.value)
  assert "\n" not in msg
  assert f"{tmp_path}/imagenet2012_corrupted/fog_3/3.1.0" in msg
  assert "tfds build imagenet2012_corrupted/fog_3 --manual_dir=MANUAL" in msg
  with pytest.raises(FileNotFoundError, match="75 of the requested configs missing .*"
                     "tfds build imagenet2012_corrupted --manual_dir"):
    shift.check_shift_prepared("imagenet2012_corrupted", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tfds build imagenet_v2/matched-frequency"):
    shift.check_shift_prepared("imagenet_v2", str(tmp_path), ("matched-frequency",))
  with pytest.raises(ValueError, match="Unknown imagenet2012_corrupted configs.*fog_6"):
    shift.check_shift_prepared("imagenet2012_corrupted", str(tmp_path), ("fog_6",))


def test_the_recipe_builds_its_model_in_bfloat16_through_the_trainer_setup():
  """`setup.build_model` (what the trainer's assembly calls) passes config.model.dtype:
  the imagenet config's ResNet-50 computes in bfloat16 (its stem convolution's
  operands are bfloat16), keeps float32 parameters and returns float32 logits; the
  same config with model.dtype=float32 computes in float32 (no bfloat16 anywhere)."""
  c = load().get_config()
  assert c.model.dtype == "bfloat16"
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  for dtype in ("bfloat16", "float32"):
    model = setup.build_model(sweeps.sweep_config(c, {"model.dtype": dtype}), 1000)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables).jaxpr
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == 53  # 1 stem + 16 blocks x 3 + 4 projections
    assert {str(v.aval.dtype) for e in convs for v in e.invars} == {dtype}
    assert jaxpr.outvars[0].aval.dtype == jnp.float32
    chex.assert_shape(jaxpr.outvars[0].aval, (1, 1000))


def _flat_keys(config) -> set[str]:
  return set(workdir_lib.flatten(config.to_dict()))


def test_the_config_adds_only_the_streaming_keys():
  """Every key experiments/imagenet.py sets is a knob of base_config, except the
  streaming trainer's four dataset keys (until that trainer declares them)."""
  c = load().get_config()
  extra = _flat_keys(c) - _flat_keys(config_lib.base_config())
  assert extra <= set(STREAMING_KEYS), extra
  assert not _flat_keys(config_lib.base_config()) - _flat_keys(c)


def test_the_config_has_exactly_the_base_knobs_and_validates():
  """Once the streaming trainer declares its keys, the imagenet config (every variant)
  has exactly the base config's knobs and validates on 8 devices (no data read)."""
  module = load()
  for arg in (None, *module.VARIANTS, "erm,batch=4096"):
    c = module.get_config(arg)
    assert _flat_keys(c) == _flat_keys(config_lib.base_config())
    validate.validate_config(c, num_devices=8, check_data=False)


def test_three_steps_of_the_config_through_the_trainer(run_main_cli, tmp_path):
  """`python -m mixjax.main --config=experiments/imagenet.py` as written, on a tiny
  synthetic image folder (4 classes, JPEGs of 40–72 pixels, prepared with
  `mixjax.data.image_folder`) at 32×32 with a narrow ResNet-50 (width 8, one block
  per stage), batch 8, one worker: 3 steps, then the final evaluation. The run streams
  (no array cache is written), computes in bfloat16, and ends with finite metrics."""
  from mixjax.data import image_folder  # pylint: disable=g-import-not-at-top
  src = image_folder.write_synthetic(str(tmp_path / "src"), per_class={"train": 6, "val": 3},
                                     size_range=(40, 72))
  data_dir = tmp_path / "tfds"
  image_folder.prepare(src, name="tiny_images", data_dir=str(data_dir))
  cache = tmp_path / "cache"
  workdir = tmp_path / "run"
  proc = run_main_cli(
      "--config=experiments/imagenet.py", f"--workdir={workdir}",
      "--config.dataset.name=tiny_images", f"--config.dataset.data_dir={data_dir}",
      "--config.dataset.image_size=32", "--config.dataset.num_classes=4",
      "--config.dataset.num_workers=1", f"--config.dataset.cache_dir={cache}",
      "--config.batch_size=8", "--config.eval.batch_size=8", "--config.num_steps=3",
      "--config.optimizer.lr=0.003125", "--config.eval.every_epochs=0",
      "--config.log_every_steps=1", "--config.tensorboard=False",
      "--config.model.kwargs={\"width\": 8, \"stage_sizes\": [1, 1, 1, 1]}",
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["dtype"] == "bfloat16" and saved["dataset"]["streaming"] is True
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["step"] == 3
  assert np.isfinite(summary["test"]["nll"]) and 0 <= summary["test"]["accuracy"] <= 1
  assert not cache.exists() or not any(cache.iterdir())  # streamed, not cached
