"""The chief's training driver: resume, run in logging intervals, checkpoint, evaluate, export, report."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from .cluster import ClusterConfig, Role, Strategy
from .data import Mnist
from .evaluation import checkpoint_for, evaluate, inference_timing, local_copy, step_of
from .reporting import OutputPaths, Summaries, emit, export_model, hparams_markdown, progress_line, write_metrics
from .resume import FRESH, History, Layout, check_resume
from .staleness import Staleness
from .strategies import HParams, Runner, StepResults, make_runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """How long to train and how often to report and checkpoint."""

    max_steps: int | None
    epochs: float | None
    log_every: int
    checkpoint_every: int

    def total_steps(self, train_examples: int, examples_per_step: int) -> int:
        """--max-steps, or --epochs converted to steps (the smaller when both are given)."""
        candidates = [self.max_steps] if self.max_steps else []
        if self.epochs:
            candidates.append(math.ceil(self.epochs * train_examples / examples_per_step))
        if not candidates:
            raise ValueError("give --max-steps or --epochs")
        return max(1, min(candidates))


@dataclass
class Throughput:
    """Training time, examples/s, each replica's steps/s and the staleness of every update. The first chunk
    (tracing, shipping functions to the workers) counts in the time but not in the rates when later chunks exist,
    so every strategy is compared in steady state."""

    chunks: int = 0
    seconds: float = 0.0
    first: tuple[int, float] = (0, 0.0)
    steady: tuple[int, float] = (0, 0.0)
    replica_steps: Counter[str] = field(default_factory=Counter)
    first_replica_steps: Counter[str] = field(default_factory=Counter)
    staleness: Staleness = field(default_factory=Staleness)

    def add(
        self,
        examples: int,
        seconds: float,
        replica_steps: Mapping[str, int] | None = None,
        staleness: np.ndarray | None = None,
    ) -> None:
        """Record one chunk of training, the steps each replica ran in it and its updates' staleness."""
        self.staleness.add(staleness if staleness is not None else ())
        if self.chunks:
            self.steady = (self.steady[0] + examples, self.steady[1] + seconds)
        else:
            self.first = (examples, seconds)
            self.first_replica_steps.update(replica_steps or {})
        self.replica_steps.update(replica_steps or {})
        self.chunks += 1
        self.seconds += seconds

    def examples_per_second(self) -> float | None:
        """Steady-state examples/s (the only chunk's in a one-chunk run; None when nothing ran)."""
        examples, seconds = self.steady if self.chunks > 1 else self.first
        return round(examples / seconds, 1) if seconds > 0 else None

    def replica_steps_per_second(self) -> dict[str, float]:
        """Each replica's steady-state steps/s (the only chunk's in a one-chunk run)."""
        steady = self.chunks > 1
        seconds = self.steady[1] if steady else self.first[1]
        if seconds <= 0:
            return {}
        return {
            name: round((steps - (self.first_replica_steps[name] if steady else 0)) / seconds, 2)
            for name, steps in sorted(self.replica_steps.items())
        }


def train(
    kind: Strategy, config: ClusterConfig | None, data: Mnist, hp: HParams, budget: Budget, paths: OutputPaths
) -> dict[str, object]:
    """Train with strategy `kind`; the chief writes every output and returns the final metrics."""
    is_chief = config is None or config.is_chief
    runner = make_runner(kind, config, data, hp)
    max_steps = budget.total_steps(len(data.x_train), runner.examples_per_step)
    if is_chief:
        paths.metrics.unlink(missing_ok=True)  # metrics.json appears only when this run has finished
    num_ps = config.count(Role.PS) if config and kind == Strategy.PARAMETER_SERVER else 0
    layout = Layout(str(kind), hp.optimizer, num_ps)
    saver = Saver(runner, layout, paths, is_chief)
    summaries = Summaries(paths.logs / "train" if is_chief else None)
    summaries.text("hparams", hparams_markdown(_hparams(kind, config, hp, max_steps, data)))
    start = runner.step()
    log.info("training %s from step %d to %d, %d examples/step", kind, start, max_steps, runner.examples_per_step)
    step, clock, last = _train_steps(runner, saver, summaries, data, budget, start, max_steps)
    step = max(step, runner.step())  # all closures are done; a retried one may have added a step or two
    if clock.chunks:  # a chief resumed at max_steps has nothing new to save
        saver.save(step, clock.seconds)
    saver.close()
    if not is_chief:
        return {}
    return _finish(runner, kind, data, paths, summaries, step, clock, last, saver.history)


class Saver:
    """Checkpoints (the chief's folder; other replicas save into a throwaway one, as every replica of a
    synchronous strategy must take part), run.json beside them, and resuming from the chief's latest."""

    def __init__(self, runner: Runner, layout: Layout, paths: OutputPaths, is_chief: bool) -> None:
        extra = {"loss_scale": runner.loss_scale} if runner.loss_scale else {}  # float16: the scale resumes too
        self.checkpoint = checkpoint_for(runner.model, optimizer=runner.optimizer, **extra)
        self.is_chief = is_chief
        self.folder = paths.checkpoints if is_chief else Path(tempfile.mkdtemp(prefix="disttrain-ckpt-"))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.folder), max_to_keep=3)
        self.options = runner.checkpoint_options()
        latest = tf.train.latest_checkpoint(str(paths.checkpoints))  # every replica resumes from the chief's
        self.record, seconds_before = check_resume(paths.checkpoints, latest, layout)  # refuses another layout
        self.history = History(None, seconds_before)
        if latest:
            self.checkpoint.restore(latest, options=self.options)
            self.history = History(runner.step(), seconds_before)
            log.info("resumed from %s at step %d", latest, runner.step())

    def save(self, step: int, run_seconds: float) -> None:
        """Save a checkpoint at `step`, `run_seconds` into this run's training, and note it in run.json."""
        self.manager.save(checkpoint_number=step, options=self.options)
        if self.is_chief:
            kept = (step_of(path) for path in self.manager.checkpoints)
            self.record.saved(step, self.history.total_seconds(run_seconds), kept, self.folder)

    def close(self) -> None:
        """Remove a non-chief's throwaway folder."""
        if not self.is_chief:
            shutil.rmtree(self.folder, ignore_errors=True)


def _train_steps(
    runner: Runner, saver: Saver, summaries: Summaries, data: Mnist, budget: Budget, step: int, max_steps: int
) -> tuple[int, Throughput, tuple[float, float] | None]:
    """Train from `step` to `max_steps` in logging intervals, checkpointing on the way; returns the steps
    completed, the clock and the last interval's training loss and accuracy."""
    clock = Throughput()
    last: tuple[float, float] | None = None
    while step < max_steps:
        chunk = min(budget.log_every, max_steps - step)
        start = time.perf_counter()
        results = runner.run(chunk, ahead=max_steps - step - chunk)
        elapsed = time.perf_counter() - start
        # Steps completed, not the optimizer's count: parameter-server closures still in flight have moved that on.
        previous, step = step, step + results.steps
        clock.add(results.steps * runner.examples_per_step, elapsed, results.replica_steps, results.staleness)
        last = _log_interval(runner, summaries, step, results, elapsed)
        if saver.is_chief:
            emit(progress_line(step, max_steps, *last, results.steps * runner.examples_per_step / elapsed))
        if budget.checkpoint_every and (step // budget.checkpoint_every > previous // budget.checkpoint_every):
            saver.save(step, clock.seconds)
            if saver.is_chief and step < max_steps:  # the held-out curve, a point per checkpoint (the last at the end)
                heldout = evaluate(local_copy(runner.model), data)
                summaries.scalars(step, {"heldout_accuracy": heldout.accuracy, "heldout_loss": heldout.loss})
    return step, clock, last


def _log_interval(
    runner: Runner, summaries: Summaries, step: int, results: StepResults, elapsed: float
) -> tuple[float, float]:
    """TensorBoard for one logging interval: training loss and accuracy, examples/s, each replica's steps/s, the
    updates' staleness and (Adagrad) the effective learning rates. Returns the interval's mean loss and accuracy."""
    loss, accuracy = float(np.mean(results.losses)), float(np.mean(results.accuracies))
    rates = {f"steps_per_sec/{name}": n / elapsed for name, n in results.replica_steps.items()}
    scalars = {"loss": loss, "accuracy": accuracy, "learning_rate": runner.hp.learning_rate}
    scalars["examples_per_sec"] = results.steps * runner.examples_per_step / elapsed
    histograms = {"staleness": results.staleness}
    scalars["staleness/mean"] = float(np.mean(results.staleness))
    scalars["staleness/max"] = float(np.max(results.staleness))
    if summaries.enabled and (effective := runner.optimizer.effective_learning_rates()) is not None:
        histograms["effective_learning_rate"] = effective
        scalars["effective_learning_rate/median"] = float(np.median(effective))
    summaries.scalars(step, scalars | rates)
    summaries.histograms(step, histograms)
    return loss, accuracy


def _finish(
    runner: Runner,
    kind: Strategy,
    data: Mnist,
    paths: OutputPaths,
    summaries: Summaries,
    step: int,
    clock: Throughput,
    last: tuple[float, float] | None,
    history: History = FRESH,
) -> dict[str, object]:
    """Held-out evaluation, sample predictions, export and metrics.json."""
    model = local_copy(runner.model)
    result = evaluate(model, data)
    summaries.scalars(step, {"heldout_accuracy": result.accuracy, "heldout_loss": result.loss})
    summaries.predictions(step, data.x_held[:32], result.predicted[:32], data.y_held[:32])
    summaries.close()
    export_model(model, paths.model)
    total_seconds = history.total_seconds(clock.seconds)
    metrics: dict[str, object] = {
        "strategy": str(kind),
        "steps": step,
        "resumed_from_step": history.resumed_from_step,
        "run_steps": step - (history.resumed_from_step or 0),
        "accuracy": round(result.accuracy, 4),
        "loss": round(result.loss, 4),
        "train_loss": round(last[0], 4) if last else None,
        "train_accuracy": round(last[1], 4) if last else None,
        "train_seconds": None if total_seconds is None else round(total_seconds, 2),
        "examples_per_second": clock.examples_per_second(),
        "replica_steps": dict(sorted(clock.replica_steps.items())),
        "replica_steps_per_second": clock.replica_steps_per_second(),
        "staleness": clock.staleness.summary(),
        "batch_size": runner.hp.batch_size,
        "global_batch_size": runner.examples_per_step,
        "train_examples": len(data.x_train),
        "heldout_examples": len(data.x_held),
        "data": data.source,
        **inference_timing(model, data),
    }
    write_metrics(paths.metrics, metrics)
    return metrics


def _hparams(
    kind: Strategy, config: ClusterConfig | None, hp: HParams, max_steps: int, data: Mnist
) -> dict[str, object]:
    counts = {f"num_{job}": len(addrs) for job, addrs in (config.cluster.items() if config else [])}
    return {"strategy": kind, "max_steps": max_steps, "data": data.source, **asdict(hp), **counts}
