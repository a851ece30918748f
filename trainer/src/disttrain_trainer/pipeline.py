"""tf.data input pipelines: per-worker shards, shuffling, batching, prefetch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .cluster import slow_replica_for_tests


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
    return slowed_for_tests(ds.prefetch(tf.data.AUTOTUNE), shard_index)


def slowed_for_tests(ds: tf.data.Dataset, shard_index: int | tf.Tensor) -> tf.data.Dataset:
    """Tests only: with DISTTRAIN_TEST_SLOW_REPLICA=<index>:<seconds>, every batch of shard <index> (the
    parameter-server worker, or mirrored replica, of that index) arrives <seconds> late. A sleep in the input
    pipeline, not busy work, so the other replicas on the same CPUs keep their speed."""
    slow = slow_replica_for_tests()
    if slow is None:
        return ds
    index, micros = slow[0], int(slow[1] * 1e6)
    # The index may be a tensor (a parameter-server worker's, known when the closure runs), hence the graph op.
    delay = tf.where(
        tf.equal(tf.cast(shard_index, tf.int64), index), tf.constant(micros, tf.int64), tf.constant(0, tf.int64)
    )
    flat = tf.nest.flatten(ds.element_spec)
    variant = tf.raw_ops.SleepDataset(
        input_dataset=tf.data.experimental.to_variant(ds),
        sleep_microseconds=delay,
        output_types=[spec.dtype for spec in flat],
        output_shapes=[spec.shape for spec in flat],
    )
    return tf.data.experimental.from_variant(variant, ds.element_spec)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> tf.data.Dataset:
    """The held-out set in order, batched."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return ds.map(normalize).prefetch(tf.data.AUTOTUNE)
