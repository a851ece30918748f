"""One benchmark run: a local cluster of `disttrain-trainer` processes, its TensorBoard curve and final metrics."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from disttrain_trainer.launch import LocalCluster, Task, local_cluster, start_cluster, start_task

TARGET = 0.98  # held-out accuracy the time-to-target figures are measured to
GLOBAL_BATCH = 128  # images per global step in every setup (mirrored: split over its replicas)
RUN_TIMEOUT_S = 900


class RunFailed(RuntimeError):
    """A process of the run exited non-zero or did not finish in time."""


@dataclass(frozen=True)
class RunSpec:
    """What one run trains: the cluster shape and the flags that differ between setups."""

    strategy: str  # single | parameter-server | multi-worker-mirrored
    workers: int = 1
    ps: int = 0
    optimizer: str = "adagrad"
    learning_rate: float = 0.05  # the trainer's default (Adagrad)
    threads: int = 0  # TensorFlow threads per process (0: every CPU)
    seed: int = 0
    steps: int = 600
    checkpoint_every: int = 50

    @property
    def setup(self) -> str:
        """The setup's name without the seed, e.g. 'ps-2w' or 'mirrored-4w-sgd'."""
        kind = {"single": "single", "parameter-server": "ps", "multi-worker-mirrored": "mirrored"}[self.strategy]
        name = kind if self.strategy == "single" else f"{kind}-{self.workers}w"
        return name + ("" if self.optimizer == "adagrad" else f"-{self.optimizer}")

    @property
    def batch_size(self) -> int:
        """Images per replica per step: mirrored replicas share the global batch, a ps worker's step is its own."""
        return GLOBAL_BATCH // self.workers if self.strategy == "multi-worker-mirrored" else GLOBAL_BATCH

    def args(self, output: Path, logs: Path, data_args: Sequence[str]) -> list[str]:
        """The command line every process of the run gets."""
        flags = {
            "--strategy": self.strategy,
            "--max-steps": self.steps,
            "--batch-size": self.batch_size,
            "--optimizer": self.optimizer,
            "--learning-rate": self.learning_rate,
            "--threads": self.threads,
            "--seed": self.seed,
            "--checkpoint-every": self.checkpoint_every,
            "--log-every": self.checkpoint_every,  # checkpoints (and the held-out points) fall on log boundaries
            "--output-dir": output,
            "--log-dir": logs,
        }
        return [*(str(x) for pair in flags.items() for x in pair), *data_args]

    def hparams(self) -> dict[str, object]:
        """The setup as TensorBoard HParams."""
        return {"setup": self.setup, **{k: v for k, v in asdict(self).items() if k != "checkpoint_every"}}


@dataclass
class Run:
    """A finished run: its held-out curve (seconds since training started), final metrics, where things are."""

    spec: RunSpec
    curve: list[tuple[float, int, float]]  # (seconds, step, held-out accuracy)
    metrics: dict[str, object]
    startup_s: float  # process start to the chief's first summary (imports, cluster barrier, building)
    wall_s: float  # process start to the last process's exit
    logs: Path
    export: Path
    throughput: list[tuple[int, float]] = field(default_factory=list)  # (step, examples/s) per log interval

    def time_to(self, target: float = TARGET) -> float | None:
        """Seconds from training start to the first held-out point at or above `target` (None: never)."""
        return next((t for t, _, acc in self.curve if acc >= target), None)

    def summary(self) -> dict[str, object]:
        """The figures the JSON keeps per run."""
        return {
            "setup": self.spec.setup,
            "seed": self.spec.seed,
            "time_to_target_s": _round(self.time_to()),
            "final_accuracy": self.metrics.get("accuracy"),
            "best_accuracy": _round(max((acc for *_, acc in self.curve), default=None), 4),
            "examples_per_second": self.metrics.get("examples_per_second"),
            "train_seconds": self.metrics.get("train_seconds"),
            "startup_s": round(self.startup_s, 1),
            "wall_s": round(self.wall_s, 1),
            "replica_steps_per_second": self.metrics.get("replica_steps_per_second"),
            "staleness": self.metrics.get("staleness"),  # reported by the trainer once it measures it
            "curve": [[round(t, 2), step, round(acc, 4)] for t, step, acc in self.curve],
            "logs": str(self.logs),
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def launch(spec: RunSpec, args: list[str], logs: Path) -> tuple[LocalCluster, Task]:
    """Start the run's processes; the cluster and the task that reports (the chief, or the only process)."""
    if spec.strategy == "single":
        task = start_task({}, None, 0, args, logs / "stdout")
        return LocalCluster({}, [task]), task
    chief = 1 if spec.strategy == "parameter-server" else 0  # mirrored: worker 0 is the chief
    running = start_cluster(local_cluster(chief=chief, ps=spec.ps, worker=spec.workers), args, logs / "stdout")
    return running, running.task("chief" if chief else "worker")


def execute(spec: RunSpec, logs: Path, scratch: Path, data_args: Sequence[str]) -> Run:
    """Run `spec` to completion with its TensorBoard logs in `logs`; RunFailed when a process failed."""
    shutil.rmtree(logs, ignore_errors=True)
    output = scratch / f"{spec.setup}-seed{spec.seed}-t{spec.threads}"
    started = time.time()
    running, reporter = launch(spec, spec.args(output, logs, data_args), logs)
    codes = running.wait(RUN_TIMEOUT_S)
    running.stop()
    wall = time.time() - started
    if any(code != 0 for code in codes.values()):
        raise RunFailed(f"{spec.setup} seed {spec.seed} failed {codes}: {reporter.stderr.read_text()[-2000:]}")
    final = next(line for line in reporter.output().splitlines() if line.startswith("final "))
    scalars = read_scalars(logs / "train", ("heldout_accuracy", "examples_per_sec"))
    first = scalars.pop("_first_wall_time")[0][0]
    curve = [(wall_time - first, step, value) for wall_time, step, value in scalars["heldout_accuracy"]]
    throughput = [(step, value) for _, step, value in scalars["examples_per_sec"]]
    return Run(spec, curve, json.loads(final.removeprefix("final ")), first - started, wall, logs, output / "model",
               throughput)


def read_scalars(log_dir: Path, tags: Sequence[str]) -> dict[str, list[tuple[float, int, float]]]:
    """(wall_time, step, value) per tag from the TensorBoard event files in `log_dir`, plus the first event's
    wall time under '_first_wall_time'."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    found = set(acc.Tags()["tensors"])
    result = {
        tag: [(e.wall_time, e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
        for tag in tags
        if tag in found
    }
    result.setdefault("heldout_accuracy", [])
    result.setdefault("examples_per_sec", [])
    result["_first_wall_time"] = [(acc.FirstEventTimestamp(), 0, 0.0)]
    return result


def spread(values: Sequence[float | None]) -> dict[str, object]:
    """Mean, standard deviation, min and max of the values that exist, and how many of them do."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "of": len(values)}
    return {
        "mean": round(statistics.fmean(present), 4),
        "std": round(statistics.stdev(present), 4) if len(present) > 1 else 0.0,
        "min": round(min(present), 4),
        "max": round(max(present), 4),
        "n": len(present),
        "of": len(values),
    }


def mean_curve(runs: Sequence[Run]) -> list[dict[str, float]]:
    """The seeds' curves point by point (same checkpoint steps): mean time, mean/min/max accuracy."""
    length = min(len(r.curve) for r in runs)
    points = []
    for i in range(length):
        times = [r.curve[i][0] for r in runs]
        accs = [r.curve[i][2] for r in runs]
        points.append({
            "step": runs[0].curve[i][1],
            "seconds": round(statistics.fmean(times), 2),
            "accuracy": round(statistics.fmean(accs), 4),
            "accuracy_min": round(min(accs), 4),
            "accuracy_max": round(max(accs), 4),
        })
    return points


def write_event(folder: Path, summary: object) -> None:
    """One summary event in its own event file in `folder` (HParams need no TensorFlow writer)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder), filename_suffix=".hparams")
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()


def write_hparams(run: Run) -> None:
    """The run's HParams summary in its log folder (TensorBoard's HParams tab: one row per run)."""
    from tensorboard.plugins.hparams import summary_v2

    write_event(run.logs, summary_v2.hparams_pb(run.spec.hparams(), trial_id=run.logs.name))


def write_hparams_config(experiment_dir: Path, runs: Sequence[Run], metric_tags: Sequence[str]) -> None:
    """The experiment's HParams config: the hyperparameters that vary and the metrics (the runs' 'train' logs)."""
    from tensorboard.plugins.hparams import summary_v2

    for earlier in experiment_dir.glob("events.*.hparams"):  # one config per experiment, the latest
        earlier.unlink()
    names = list(runs[0].spec.hparams()) if runs else []
    metrics = [summary_v2.Metric(tag, group="train") for tag in metric_tags]
    write_event(experiment_dir, summary_v2.hparams_config_pb([summary_v2.HParam(n) for n in names], metrics))
