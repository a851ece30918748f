"""Training step runners: single process, multi-worker-mirrored (sync all-reduce), parameter server (async).

Each runner owns a strategy, the model and optimizer created in its scope, and `run(n)`, which performs
n global steps and returns the per-step losses and accuracies. The driver loop is in training.py.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from concurrent import futures
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from .cluster import ClusterConfig, Role, Strategy
from .data import Mnist
from .model import build_model
from .optimizers import DynamicLossScale, ShardedOptimizer, make_optimizer, variable_shards
from .pipeline import train_dataset

log = logging.getLogger(__name__)

CHIEF_DEVICE = "/job:chief/replica:0/task:0/device:CPU:0"  # the parameter-server coordinator's own CPU
IN_FLIGHT_PER_WORKER = 2  # closures queued per worker: one running, one ready the moment it finishes
FLOAT16, BFLOAT16, FLOAT32 = "mixed_float16", "mixed_bfloat16", "float32"  # Keras dtype policies
WORKER_TARGET = "/job:worker/"
PS_TARGET = "remote target /job:ps"  # gRPC names the task that failed the call; a parameter server is not a result
RESTARTED_WORKER = ("unable to find the relevant tensor remote_handle", "unknown device")  # answers, tensors gone


@dataclass(frozen=True)
class HParams:
    """What the training step needs to know."""

    batch_size: int
    learning_rate: float
    optimizer: str
    seed: int = 0
    mixed_precision: bool = False
    steps_per_dispatch: int = 1


def device_types_by_task(device_names: Iterable[str], job: str) -> dict[int, set[str]]:
    """Device types ('CPU', 'GPU') per task of `job`, from full names such as
    '/job:worker/replica:0/task:1/device:GPU:0'."""
    found: dict[int, set[str]] = {}
    for name in device_names:
        spec = tf.DeviceSpec.from_string(name)
        if spec.job == job and spec.device_type:
            found.setdefault(spec.task or 0, set()).add(spec.device_type)
    return found


def mixed_precision_policy(replicas: Iterable[Collection[str]]) -> str:
    """The mixed-precision policy for replicas with these device types: float16 (with dynamic loss scaling)
    when every replica computes on a GPU, bfloat16 when none does, float32 for a mix (one traced step serves
    every parameter-server worker, and neither half precision suits both kinds of device)."""
    has_gpu = [("GPU" in devices) for devices in replicas]
    if has_gpu and all(has_gpu):
        return FLOAT16
    return FLOAT32 if any(has_gpu) else BFLOAT16


def results_lost_with_worker(error: BaseException) -> bool:
    """Whether reading a finished parameter-server closure's results failed because the worker holding them is
    gone (killed, or restarted without them). The closure ran and its update reached the parameter servers; only
    its loss and accuracy are lost. The coordinator retries closures that fail on a worker, but not this copy."""
    text = str(error)
    if WORKER_TARGET not in text or PS_TARGET in text:
        return False
    if isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError)):
        return True
    return isinstance(error, tf.errors.InvalidArgumentError) and any(m in text.lower() for m in RESTARTED_WORKER)


@dataclass(frozen=True)
class StepResults:
    """What `Runner.run` did: each step's training loss, accuracy and staleness (other updates applied between
    its parameter read and its own update; staleness.py), and how many steps each replica ran."""

    losses: np.ndarray
    accuracies: np.ndarray
    staleness: np.ndarray
    replica_steps: dict[str, int]

    @property
    def steps(self) -> int:
        """Global steps completed."""
        return len(self.losses)


class Runner:
    """Builds model + optimizer in `strategy`'s scope and the per-replica step; subclasses dispatch it."""

    name = Strategy.SINGLE
    replica_names: tuple[str, ...] = ()  # the replicas that run steps, named as in TF_CONFIG ('worker-1')

    def __init__(self, strategy: tf.distribute.Strategy, data: Mnist, hp: HParams, replicas: int = 1) -> None:
        self.strategy = strategy
        self.hp = hp
        self.data = data
        self.replicas = replicas
        self.global_batch = hp.batch_size * replicas
        self.precision = mixed_precision_policy(self.replica_device_types()) if hp.mixed_precision else FLOAT32
        if hp.mixed_precision:
            log.info("mixed precision: %s, from the devices of the replicas that compute", self.precision)
        keras.mixed_precision.set_global_policy(self.precision)  # before the model: layers take it when built
        with strategy.scope():
            self.model: keras.Model = build_model()
            self.variables = variable_shards(self.model)
            self.optimizer: ShardedOptimizer = make_optimizer(hp.optimizer, hp.learning_rate, self.variables)
            self.loss_scale = DynamicLossScale() if self.precision == FLOAT16 else None

    def replica_device_types(self) -> list[set[str]]:
        """Device types of each replica that runs steps; here this process, which computes its own."""
        return [{device.device_type for device in tf.config.list_physical_devices()}]

    @property
    def examples_per_step(self) -> int:
        """Images consumed by one global step."""
        return self.global_batch

    def replica_step(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Forward, backward, (all-reduce when synchronous), apply; returns local (loss, accuracy, staleness)."""
        versions = self.optimizer.read_versions()  # each parameter server's update count as this step starts
        # A data dependency, which no graph rewrite drops (a control dependency around the Keras call did not visibly
        # hold its forward ops back in probes): the images wait for the counts; adding 0 leaves them unchanged.
        images = images + tf.cast(tf.add_n(versions) < 0, images.dtype)
        with tf.GradientTape() as tape:
            probs = self.model(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probs)
            loss = tf.reduce_sum(per_example) / self.global_batch
            scaled = loss * self.loss_scale.scale if self.loss_scale else loss
        grads = tape.gradient(scaled, self.variables)
        if self.loss_scale:
            grads = [g / self.loss_scale.scale for g in grads]
        if self.replicas > 1:  # before the finiteness check, so that every replica skips the same steps
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        self.optimizer.apply(grads, self.variables, self.loss_scale)
        staleness = tf.cast(self.optimizer.staleness(versions, grads), tf.float32)  # updates it missed: Downpour's cost
        predicted = tf.argmax(probs, axis=1, output_type=tf.int32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32))
        return tf.reduce_mean(per_example), accuracy, staleness

    def step(self) -> int:
        """The global step (optimizer update count)."""
        return int(self.optimizer.iterations.numpy())

    def checkpoint_options(self) -> tf.train.CheckpointOptions | None:
        """How checkpoints are written and read; None: where the variables live (this process)."""
        return None

    def run(self, steps: int, ahead: int = 0) -> StepResults:
        """Complete `steps` global steps; `ahead` more may already be started (the budget left after these)."""
        raise NotImplementedError


class LocalRunner(Runner):
    """Single process, or one of the synchronous multi-worker-mirrored replicas."""

    def __init__(self, strategy: tf.distribute.Strategy, data: Mnist, hp: HParams, replicas: int = 1) -> None:
        super().__init__(strategy, data, hp, replicas)

        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            return train_dataset(
                data.x_train,
                data.y_train,
                ctx.get_per_replica_batch_size(self.global_batch),
                shard_index=ctx.input_pipeline_id,
                num_shards=ctx.num_input_pipelines,
                seed=hp.seed + ctx.input_pipeline_id,
            )

        self._iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
        self._step_fn = tf.function(self._distributed_step)

    def _distributed_step(self, iterator: tf.distribute.DistributedIterator) -> tuple[tf.Tensor, ...]:
        images, labels = next(iterator)
        outputs = self.strategy.run(self.replica_step, args=(images, labels))
        return tuple(self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None) for value in outputs)

    def run(self, steps: int, ahead: int = 0) -> StepResults:
        """Run synchronously (every replica runs every step), reading results once at the end."""
        results = [self._step_fn(self._iterator) for _ in range(steps)]
        losses, accuracies, staleness = (np.array([float(r[i]) for r in results]) for i in (0, 1, 2))
        return StepResults(losses, accuracies, staleness, dict.fromkeys(self.replica_names, steps))


class MirroredRunner(LocalRunner):
    """Synchronous data parallelism: every worker runs every step; gradients are all-reduced."""

    name = Strategy.MULTI_WORKER_MIRRORED


class ParameterServerRunner(Runner):
    """Downpour SGD: the chief schedules steps on any free worker; workers update the sharded ps state."""

    name = Strategy.PARAMETER_SERVER

    def __init__(self, strategy: tf.distribute.ParameterServerStrategy, data: Mnist, hp: HParams, workers: int):
        super().__init__(strategy, data, hp, replicas=1)
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            index = tf.distribute.coordinator.experimental_get_current_worker_index()
            return train_dataset(
                data.x_train, data.y_train, hp.batch_size, shard_index=index, num_shards=workers, seed=None
            )

        @tf.function
        def per_worker_dataset() -> tf.distribute.DistributedDataset:
            return strategy.distribute_datasets_from_function(dataset_fn)

        self._iterator = iter(self.coordinator.create_per_worker_dataset(per_worker_dataset))
        self._steps_fn = tf.function(self._worker_steps)
        self.max_in_flight = IN_FLIGHT_PER_WORKER * workers
        self._fetcher = futures.ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="disttrain-fetch")
        self._in_flight: dict[futures.Future[tuple[np.ndarray, ...]], int] = {}  # a closure's result -> its steps

    def replica_device_types(self) -> list[set[str]]:
        """The workers run every step, so theirs (seen through the cluster), not the chief's."""
        by_task = device_types_by_task((d.name for d in tf.config.list_logical_devices()), Role.WORKER)
        return list(by_task.values()) or [{"CPU"}]

    def checkpoint_options(self) -> tf.train.CheckpointOptions:
        """Every file of a checkpoint is written and read by the chief. Left to itself, each parameter server
        would save (and restore) its own variable shards under the chief's path on its own filesystem, which
        exists only where all tasks share one (a pod has its own): NotFoundError at the first save."""
        return tf.train.CheckpointOptions(experimental_io_device=CHIEF_DEVICE)

    def _worker_steps(self, iterator: tf.distribute.DistributedIterator, count: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """`count` consecutive steps on one worker, each reading the current parameters and pushing its
        update (Downpour's n_fetch = n_push = 1); one dispatch from the chief pays for all of them. Returns the
        mean loss and accuracy, the worker's index and each step's staleness."""
        total_loss, total_accuracy = tf.constant(0.0), tf.constant(0.0)
        staleness = tf.TensorArray(tf.float32, size=count)
        for index in tf.range(count):
            images, labels = next(iterator)
            loss, accuracy, stale = self.strategy.run(self.replica_step, args=(images, labels))
            total_loss += loss
            total_accuracy += accuracy
            staleness = staleness.write(index, stale)
        steps = tf.cast(count, tf.float32)
        worker = tf.distribute.coordinator.experimental_get_current_worker_index()
        return total_loss / steps, total_accuracy / steps, worker, staleness.stack()

    def run(self, steps: int, ahead: int = 0) -> StepResults:
        """Complete `steps` asynchronous steps, reading each closure's result as it arrives, in any order: no
        barrier, so a slow worker holds back only its own closure. Closures stay queued (up to
        IN_FLIGHT_PER_WORKER per worker, and within `steps + ahead` steps), so workers keep training while the
        chief logs and checkpoints; failed closures are retried by the coordinator, and closures whose results went
        with their worker are scheduled again here."""
        losses: list[float] = []
        accuracies: list[float] = []
        staleness: list[float] = []
        replica_steps = dict.fromkeys(self.replica_names, 0)
        while len(losses) < steps:
            self._fill(steps + ahead - len(losses))
            finished, _ = futures.wait(self._in_flight, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                size = self._in_flight.pop(future)
                try:
                    loss, accuracy, worker, stale = future.result()
                except Exception as error:
                    if not results_lost_with_worker(error):
                        raise
                    # its update was applied: running the steps again overshoots the step budget, as a retried
                    # closure does (training.train takes the optimizer's count when it is the larger)
                    log.warning("a worker was lost before %d finished step(s) were read; they run again", size)
                    continue
                losses += [float(loss)] * size  # a closure reports its mean: repeated for each of its steps
                accuracies += [float(accuracy)] * size
                staleness += [float(s) for s in np.ravel(stale)]
                replica_steps[f"{Role.WORKER}-{int(worker)}"] += size
        return StepResults(np.array(losses), np.array(accuracies), np.array(staleness), replica_steps)

    def _fill(self, budget: int) -> None:
        """Schedule closures of up to `steps_per_dispatch` steps until the in-flight bound is reached or the
        closures in flight cover `budget` steps."""
        per = max(1, self.hp.steps_per_dispatch)
        queued = sum(self._in_flight.values())
        while len(self._in_flight) < self.max_in_flight and queued < budget:
            size = min(per, budget - queued)
            remote = self.coordinator.schedule(self._steps_fn, args=(self._iterator, tf.constant(size)))
            self._in_flight[self._fetcher.submit(remote.fetch)] = size  # fetch() blocks: one thread per closure
            queued += size


def cluster_resolver(
    config: ClusterConfig, num_accelerators: dict[str, int] | None = None
) -> tf.distribute.cluster_resolver.ClusterResolver:
    """A resolver over the training cluster only (the evaluator is stripped out)."""
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config.training_cluster),
        task_type=config.task_type,
        task_id=config.task_index,
        rpc_layer="grpc",
        num_accelerators=num_accelerators,
    )


def local_accelerators() -> dict[str, int]:
    """This process's visible GPUs, as a resolver reports them. MultiWorkerMirroredStrategy takes its local
    devices from `num_accelerators` of a non-TF_CONFIG resolver; without it every worker trains on CPU:0."""
    gpus = len(tf.config.list_physical_devices("GPU"))
    return {"GPU": gpus} if gpus else {}


def make_runner(kind: Strategy, config: ClusterConfig | None, data: Mnist, hp: HParams) -> Runner:
    """The runner for a strategy name chosen by cluster.choose_strategy."""
    if kind == Strategy.SINGLE:
        return LocalRunner(tf.distribute.get_strategy(), data, hp)
    assert config is not None
    if kind == Strategy.MULTI_WORKER_MIRRORED:
        resolver = cluster_resolver(config, local_accelerators())
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        runner: Runner = MirroredRunner(strategy, data, hp, replicas=strategy.num_replicas_in_sync)
        runner.replica_names = tuple(
            f"{job}-{i}" for job in (Role.CHIEF, Role.WORKER) for i in range(config.count(job))
        )
        return runner
    if kind == Strategy.PARAMETER_SERVER:
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=64 << 10, max_shards=config.count(Role.PS)
        )
        strategy = tf.distribute.ParameterServerStrategy(cluster_resolver(config), variable_partitioner=partitioner)
        runner = ParameterServerRunner(strategy, data, hp, workers=config.count(Role.WORKER))
        runner.replica_names = tuple(f"{Role.WORKER}-{i}" for i in range(config.count(Role.WORKER)))
        return runner
    raise ValueError(f"unknown strategy {kind!r}")
