"""Optimizers that work on sharded variables: one slot per shard, colocated on the shard's ps.

Keras 3 optimizers fail on `ShardedVariable` (no `.handle`), so the update is written with TensorFlow's
fused resource kernels. Under ParameterServerStrategy each kernel runs on the ps that holds the shard:
DistBelief's Downpour SGD — workers push gradients, each parameter shard updates itself asynchronously
with its own per-parameter adaptive learning rate (Adagrad).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

OPTIMIZERS = ("adagrad", "sgd", "adam")


def variable_shards(model: keras.Model, trainable: bool = True) -> list[tf.Variable]:
    """The TensorFlow variables behind a Keras model, with every ShardedVariable expanded to its shards."""
    weights = model.trainable_weights if trainable else model.weights
    flat: list[tf.Variable] = []
    for weight in weights:
        value = getattr(weight, "value", weight)
        flat.extend(getattr(value, "variables", None) or [value])
    return flat


def _counter(name: str) -> tf.Variable:
    """An int64 count of updates, starting at 0, that every replica shares (the first replica's write counts)."""
    return tf.Variable(
        0, dtype=tf.int64, trainable=False, name=name, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
    )


class ShardedOptimizer(tf.Module):
    """Base class: creates colocated slots per variable and applies dense gradients."""

    slot_initial: dict[str, float] = {}

    def __init__(self, learning_rate: float, variables: Sequence[tf.Variable], name: str) -> None:
        super().__init__(name=name)
        self.learning_rate = float(learning_rate)
        self.iterations = _counter("iterations")
        strategy = tf.distribute.get_strategy()
        self.versions = self._version_counters(variables, strategy)
        self.slots: dict[str, list[tf.Variable]] = {}
        for slot, initial in self.slot_initial.items():
            self.slots[slot] = []
            for index, var in enumerate(variables):
                with strategy.extended.colocate_vars_with(var):
                    self.slots[slot].append(
                        tf.Variable(
                            tf.fill(var.shape, tf.constant(initial, var.dtype)),
                            trainable=False,
                            name=f"{slot}_{index}",
                        )
                    )

    @staticmethod
    def _version_counters(variables: Sequence[tf.Variable], strategy: tf.distribute.Strategy) -> list[tf.Variable]:
        """One update counter beside the parameters on each device that holds some (each parameter server): a
        step reads them as it starts and counts its update on each, so the updates it missed are measured where
        its parameters were read, not on whichever server holds `iterations`."""
        first_on_device: dict[str, tf.Variable] = {}
        for var in variables:
            first_on_device.setdefault(var.device, var)
        counters = []
        for index, var in enumerate(first_on_device.values()):
            with strategy.extended.colocate_vars_with(var):
                counters.append(_counter(f"version_{index}"))
        return counters

    def read_versions(self) -> list[tf.Tensor]:
        """Every parameter server's update count, read as a step starts."""
        return [counter.read_value() for counter in self.versions]

    def staleness(self, read: Sequence[tf.Tensor], grads: Sequence[tf.Tensor | None]) -> tf.Tensor:
        """Counts this step's update on every server once its gradients exist, and returns the most updates by
        others that any server counted since `read`: how many steps old the step's parameters were. The gradients
        order the count: TensorFlow orders only ops on the same variable, so without them the count ran as soon
        as the reads had (measured: every step 0)."""
        with tf.control_dependencies([g for g in grads if g is not None]):
            missed = [counter.assign_add(1) - 1 - before for counter, before in zip(self.versions, read, strict=True)]
        return tf.reduce_max(tf.stack(missed))

    def apply(
        self,
        grads: Sequence[tf.Tensor | None],
        variables: Sequence[tf.Variable],
        loss_scale: DynamicLossScale | None = None,
    ) -> tf.Tensor:
        """Apply one update per (gradient, variable shard) pair (slots matched by position); return the step.
        With `loss_scale`, a step whose gradients are not all finite changes no variable and no slot."""
        step = self.iterations.assign_add(1)  # a skipped step counts too, so the step budget always ends
        count = tf.cast(step, tf.float32)
        if loss_scale is None:
            self._apply_all(grads, variables, count)
            return step

        def update() -> tf.Tensor:
            self._apply_all(grads, variables, count)
            return tf.constant(True)

        # Only the per-shard kernels sit inside the cond: they touch each replica's own copy, whereas an assign
        # to a mirrored variable would need a merge_call, which cannot run inside a branch.
        tf.cond(loss_scale.update(grads), update, lambda: tf.constant(False))
        return step

    def _apply_all(self, grads: Sequence[tf.Tensor | None], variables: Sequence[tf.Variable], count: tf.Tensor) -> None:
        lr = tf.constant(self.learning_rate)
        for index, (grad, var) in enumerate(zip(grads, variables, strict=True)):
            if grad is None:
                continue
            slots = {name: slots[index] for name, slots in self.slots.items()}
            self._apply_dense(tf.convert_to_tensor(grad), var, slots, tf.cast(lr, var.dtype), count)

    def _apply_dense(
        self, grad: tf.Tensor, var: tf.Variable, slots: dict[str, tf.Variable], lr: tf.Tensor, step: tf.Tensor
    ) -> None:
        raise NotImplementedError

    def effective_learning_rates(self) -> np.ndarray | None:
        """Each parameter's current step size per unit of gradient, where it adapts; None where it is the
        learning rate itself (read on the coordinator: the slots come from wherever they live)."""
        return None


class Adagrad(ShardedOptimizer):
    """Adagrad (Duchi et al.), DistBelief's adaptive learning rate: lr / sqrt(sum of squared gradients)."""

    slot_initial = {"accumulator": 0.1}

    def __init__(self, learning_rate: float, variables: Sequence[tf.Variable], epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate, variables, name="adagrad")
        self.epsilon = epsilon

    def _apply_dense(
        self, grad: tf.Tensor, var: tf.Variable, slots: dict[str, tf.Variable], lr: tf.Tensor, step: tf.Tensor
    ) -> None:
        tf.raw_ops.ResourceApplyAdagradV2(
            var=var.handle,
            accum=slots["accumulator"].handle,
            lr=lr,
            epsilon=tf.constant(self.epsilon, var.dtype),
            grad=grad,
            use_locking=False,
        )

    def effective_learning_rates(self) -> np.ndarray:
        """lr / (sqrt(accumulator) + epsilon) per parameter: each shrinks as its squared gradients add up."""
        accumulators = np.concatenate([np.ravel(slot.numpy()) for slot in self.slots["accumulator"]])
        return self.learning_rate / (np.sqrt(accumulators) + self.epsilon)


class SGD(ShardedOptimizer):
    """Plain stochastic gradient descent (no slots)."""

    def __init__(self, learning_rate: float, variables: Sequence[tf.Variable]) -> None:
        super().__init__(learning_rate, variables, name="sgd")

    def _apply_dense(
        self, grad: tf.Tensor, var: tf.Variable, slots: dict[str, tf.Variable], lr: tf.Tensor, step: tf.Tensor
    ) -> None:
        tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=grad, use_locking=False)


class Adam(ShardedOptimizer):
    """Adam; the bias correction uses the step count of the update, so async updates stay well-defined."""

    slot_initial = {"m": 0.0, "v": 0.0}

    def __init__(
        self,
        learning_rate: float,
        variables: Sequence[tf.Variable],
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        super().__init__(learning_rate, variables, name="adam")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def _apply_dense(
        self, grad: tf.Tensor, var: tf.Variable, slots: dict[str, tf.Variable], lr: tf.Tensor, step: tf.Tensor
    ) -> None:
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle,
            m=slots["m"].handle,
            v=slots["v"].handle,
            beta1_power=tf.cast(tf.pow(self.beta_1, step), var.dtype),
            beta2_power=tf.cast(tf.pow(self.beta_2, step), var.dtype),
            lr=lr,
            beta1=tf.constant(self.beta_1, var.dtype),
            beta2=tf.constant(self.beta_2, var.dtype),
            epsilon=tf.constant(self.epsilon, var.dtype),
            grad=grad,
            use_locking=False,
        )


class DynamicLossScale(tf.Module):
    """float16 loss scaling, as Keras' LossScaleOptimizer does it (which wraps Keras optimizers only): the loss is
    multiplied by `scale` and the gradients divided by it; a step with any non-finite gradient is skipped and
    halves the scale (an overflow would otherwise put inf into the Adagrad accumulators for good);
    `growth_steps` finite steps in a row double it."""

    def __init__(self, initial: float = 2.0**15, growth_steps: int = 2000) -> None:
        super().__init__(name="loss_scale")
        self.growth_steps = growth_steps
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA  # every replica decides alike (all-reduced gradients)
        self.scale = tf.Variable(initial, dtype=tf.float32, trainable=False, name="scale", aggregation=first)
        self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="finite_steps", aggregation=first)

    def update(self, grads: Sequence[tf.Tensor | None]) -> tf.Tensor:
        """Whether every gradient is finite; adjusts the scale accordingly."""
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
        grow = tf.logical_and(finite, self.finite_steps + 1 >= self.growth_steps)
        scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), tf.maximum(self.scale / 2.0, 1.0))
        self.finite_steps.assign(
            tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.finite_steps + 1, tf.constant(0, tf.int64))
        )
        self.scale.assign(scale)
        return finite


def make_optimizer(name: str, learning_rate: float, variables: Sequence[tf.Variable]) -> ShardedOptimizer:
    """Build an optimizer by name (call inside the strategy scope so its slots are distributed)."""
    classes: dict[str, type[ShardedOptimizer]] = {"adagrad": Adagrad, "sgd": SGD, "adam": Adam}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    return classes[name](learning_rate, variables)  # type: ignore[call-arg]
