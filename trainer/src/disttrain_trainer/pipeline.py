"""tf.data input pipelines: per-worker shards, shuffling, batching, prefetch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def normalize(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 Nx28x28 -> float32 Nx28x28x1 in [0, 1]; labels -> int32."""
    return tf.cast(images, tf.float32)[..., tf.newaxis] / 255.0, tf.cast(labels, tf.int32)


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    shard_index: int | tf.Tensor = 0,
    num_shards: int = 1,
    seed: int | None = None,
) -> tf.data.Dataset:
    """An endless, shuffled stream of batches from shard `shard_index` of `num_shards`."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    shard_size = -(-len(images) // max(1, num_shards))
    ds = ds.shuffle(shard_size, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).map(normalize, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> tf.data.Dataset:
    """The held-out set in order, batched."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return ds.map(normalize).prefetch(tf.data.AUTOTUNE)
