"""Datasets (tfds via array_record, offline), on-device augmentation and batching.

`load_dataset(name, data_dir=None, val_fraction=0.1, seed=0, **kwargs) -> Dataset`;
names: cifar10, cifar100, mnist, fashion_mnist, svhn_cropped (tfds, prepared offline),
mnist1d, digits, two_moons (offline).

Shifted test sets: `shift_test_sets("fashion_mnist_corrupted", data_dir=..., ds=ds)`
(Fashion-MNIST-C: MNIST-C's corruptions of the test split, `mixjax.data.corruptions`,
built offline by `mixjax.data.prepare`) and the start-up check `check_shift_prepared`.
"""
from __future__ import annotations

from mixjax.data import offline as _offline  # noqa: F401  (registers the loaders)
from mixjax.data import tfds_data as _tfds_data  # noqa: F401
from mixjax.data.augment import augment
from mixjax.data.batching import (batch_from_permutations, batch_indices,
                                  epoch_permutation, epoch_permutations, local_indices,
                                  steps_per_epoch, take)
from mixjax.data.dataset import (DATASETS, Dataset, channel_stats, load_dataset,
                                 normalize, split_validation, stratified_split,
                                 with_label_noise)
from mixjax.data.offline import random_features
from mixjax.data.shift import (SHIFT_DATASETS, check_shift_prepared, get_shift_dataset,
                               shift_test_sets)
from mixjax.data.tfds_data import TFDS_DATASETS, check_prepared, read_split

__all__ = [
    "DATASETS", "Dataset", "SHIFT_DATASETS", "TFDS_DATASETS", "augment",
    "batch_from_permutations", "batch_indices", "channel_stats", "check_prepared",
    "check_shift_prepared", "epoch_permutation", "epoch_permutations",
    "get_shift_dataset", "load_dataset", "local_indices", "normalize",
    "random_features", "read_split", "shift_test_sets", "split_validation",
    "steps_per_epoch", "stratified_split", "take", "with_label_noise",
]
