"""Trainer benchmark: the seed's experiments as plots (`make bench`).

  accuracy   held-out accuracy against wall-clock time and time to 98%: single process, parameter server
             (1, 2, 4 workers) and mirrored (2, 4 workers), several seeds each
  speedup    examples/s and time to 98% for 1, 2, 4, 8 parameter-server workers, one thread per process
  optimizers Adagrad against plain SGD under asynchrony as workers grow (1, 2, 4)
  inference  the exported SavedModel timed at batch sizes 1 to 1024 (p50/p99 latency, examples/s) on CPU

Every run is real processes on 127.0.0.1; 128 images per global step everywhere (mirrored replicas split
them). Writes OUT/trainer.json and OUT/trainer_<experiment>.png, and keeps every run's TensorBoard logs
(with an HParams summary) under OUT/logs/<experiment>/<setup>-seed<k>/ (`tensorboard --logdir OUT/logs`).

    .venv/bin/python -m bench.trainer [--quick] [--experiments accuracy,speedup] [--out DIR] [--data-dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import trainer_plots as plots
from bench.trainer_inference import time_saved_model
from bench.trainer_runs import (
    GLOBAL_BATCH,
    TARGET,
    Run,
    RunFailed,
    RunSpec,
    execute,
    mean_curve,
    spread,
    write_hparams,
    write_hparams_config,
)
from bench.trainer_system import machine, source

RESULTS = Path(__file__).resolve().parent / "results"
SINGLE, PS, MIRRORED = "single", "parameter-server", "multi-worker-mirrored"
SGD_LEARNING_RATE = 0.3  # the better of 0.1 and 0.3 in a single-process probe (600 steps: 97.95% vs 98.4%)
# The fixed CPU budget per replica: one TensorFlow compute thread per process, in every run.
THREADS = 1
THREADS_NOTE = (
    "every process runs with --threads 1 (one compute thread; the inter-op pool keeps 2 so a parameter-server "
    "worker can wait on the ps and compute): a fixed budget per replica, but all replicas share this machine's "
    "cores, so the ideal speedup here is bounded by them"
)
CURVE_TAGS = ("heldout_accuracy", "heldout_loss", "examples_per_sec", "loss")


NOTES = {
    "time": "seconds since the chief started training (its first TensorBoard event): process start, imports and "
    "the cluster's startup barrier are left out and reported per run as startup_s",
    "held_out": "held-out accuracy evaluated by the chief at each checkpoint (every checkpoint_every steps), read "
    "from the TensorBoard event files; time to target is the first checkpoint at or above it",
    "global_batch": f"{GLOBAL_BATCH} images per global step everywhere: a parameter-server step is one worker's "
    f"batch of {GLOBAL_BATCH}, mirrored replicas split {GLOBAL_BATCH} between them",
    "optimizers": f"Adagrad at the trainer's default learning rate 0.05; plain SGD at {SGD_LEARNING_RATE}",
    "threads": THREADS_NOTE,
}


@dataclass(frozen=True)
class Sizes:
    """How big each experiment is."""

    steps: int
    checkpoint_every: int
    seeds: int  # accuracy experiment
    ps: int  # parameter-server shards in every parameter-server setup
    threads: int  # TensorFlow threads per process in every run (0: every CPU)
    accuracy_setups: tuple[tuple[str, int], ...]
    speedup_workers: tuple[int, ...]
    optimizer_workers: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    inference_seconds: float  # of calls per batch size


DEFAULT = Sizes(
    steps=600, checkpoint_every=50, seeds=3, ps=2, threads=THREADS,
    accuracy_setups=((SINGLE, 1), (PS, 1), (PS, 2), (PS, 4), (MIRRORED, 2), (MIRRORED, 4)),
    speedup_workers=(1, 2, 4, 8), optimizer_workers=(1, 2, 4), batch_sizes=(1, 8, 64, 256, 1024),
    inference_seconds=4.0,
)
QUICK = Sizes(
    steps=20, checkpoint_every=10, seeds=1, ps=1, threads=THREADS,
    accuracy_setups=((SINGLE, 1), (PS, 1)), speedup_workers=(1,), optimizer_workers=(1,), batch_sizes=(1, 64),
    inference_seconds=0.5,
)


@dataclass
class Bench:
    """Runs setups once each (a setup two experiments share runs once) and keeps their logs per experiment."""

    out: Path
    sizes: Sizes
    data_args: list[str]
    scratch: Path
    seeds: int = 1  # the accuracy experiment's, for the phase being run
    done: dict[RunSpec, Run] = field(default_factory=dict)

    def spec(self, strategy: str, workers: int, **overrides: object) -> RunSpec:
        """A run of this bench's size."""
        ps = self.sizes.ps if strategy == PS else 0
        base = RunSpec(strategy, workers, ps, steps=self.sizes.steps, checkpoint_every=self.sizes.checkpoint_every,
                       threads=self.sizes.threads)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def run(self, experiment: str, spec: RunSpec) -> Run:
        """The run of `spec`, its logs under logs/<experiment>/<setup>-seed<k>/."""
        logs = self.out / "logs" / experiment / f"{spec.setup}-seed{spec.seed}"
        if spec in self.done:  # already run for another experiment: the same logs, copied
            earlier = self.done[spec]
            if earlier.logs != logs:
                shutil.rmtree(logs, ignore_errors=True)
                shutil.copytree(earlier.logs, logs)
            return replace(earlier, logs=logs)
        print(f"[{time.strftime('%H:%M:%S')}] {experiment}: {spec.setup} seed {spec.seed} ...", flush=True)
        try:
            run = execute(spec, logs, self.scratch, self.data_args)
        except RunFailed as failure:  # once more: a shared machine can starve a replica past a timeout
            print(f"  failed, running it again: {failure}", flush=True)
            run = execute(spec, logs, self.scratch, self.data_args)
        write_hparams(run)
        print(f"  {run.metrics.get('examples_per_second')} examples/s, accuracy {run.metrics.get('accuracy')}, "
              f"to {TARGET:.0%}: {run.time_to()} s", flush=True)
        self.done[spec] = run
        return run

    def runs(self, experiment: str, specs: Sequence[RunSpec]) -> list[Run]:
        """Every spec's run, and the experiment's HParams config."""
        runs = [self.run(experiment, spec) for spec in specs]
        write_hparams_config(self.out / "logs" / experiment, runs, CURVE_TAGS)
        return runs


def setup_figures(runs: Sequence[Run]) -> dict[str, object]:
    """One setup over its seeds: spread of each figure, the mean curve, and each run."""
    summaries = [r.summary() for r in runs]
    figures = ("time_to_target_s", "final_accuracy", "best_accuracy", "examples_per_second", "startup_s")
    return {
        **{name: spread([s[name] for s in summaries]) for name in figures},  # type: ignore[misc]
        "mean_curve": mean_curve(runs),
        "runs": summaries,
    }


def accuracy(bench: Bench) -> dict[str, object]:
    """Held-out accuracy against time, per setup, over seeds."""
    setups = {}
    for strategy, workers in bench.sizes.accuracy_setups:
        specs = [bench.spec(strategy, workers, seed=seed) for seed in range(bench.seeds)]
        setups[specs[0].setup] = setup_figures(bench.runs("accuracy", specs))
    return {"seeds": bench.seeds, "setups": setups}


def speedup(bench: Bench) -> dict[str, object]:
    """examples/s and time to target against parameter-server workers, the same threads in every process."""
    cores = int(machine()["cpus_available"])  # type: ignore[call-overload]
    rows = [
        {"workers": workers, **bench.runs("speedup", [bench.spec(PS, workers)])[0].summary()}
        for workers in bench.sizes.speedup_workers
    ]
    return {"threads_per_process": bench.sizes.threads, "threads_note": THREADS_NOTE, "cores": cores,
            "rows": speedup_rows(rows, cores)}


def speedup_rows(rows: list[dict[str, Any]], cores: int) -> list[dict[str, Any]]:
    """Add per-core and per-worker rates, speedups over the first row and the ideal lines: linear, and bounded
    by the cores (N workers on C cores: at most min(N, C)/min(N1, C) of the first row's rate)."""
    base = rows[0]
    for row in rows:
        eps, workers = row["examples_per_second"], row["workers"]
        row["examples_per_second_per_core"] = round(eps / cores, 1) if eps else None
        row["examples_per_second_per_worker"] = round(eps / workers, 1) if eps else None
        row["speedup_examples_per_second"] = _ratio(eps, base["examples_per_second"])
        row["speedup_time_to_target"] = _ratio(base["time_to_target_s"], row["time_to_target_s"])
        row["ideal"] = workers / base["workers"]
        row["ideal_bounded_by_cores"] = min(workers, cores) / min(base["workers"], cores)
    return rows


def _ratio(top: object, bottom: object) -> float | None:
    return round(top / bottom, 2) if top and bottom else None  # type: ignore[operator]


def optimizers(bench: Bench) -> dict[str, object]:
    """Adagrad against plain SGD (seed 0) as parameter-server workers grow."""
    rows = []
    for workers in bench.sizes.optimizer_workers:
        for optimizer, rate in (("adagrad", 0.05), ("sgd", SGD_LEARNING_RATE)):
            (run,) = bench.runs("optimizers", [bench.spec(PS, workers, optimizer=optimizer, learning_rate=rate)])
            rows.append({"workers": workers, "optimizer": optimizer, "learning_rate": rate, **run.summary()})
    return {
        "rows": rows,
        "staleness": [{"workers": r["workers"], "optimizer": r["optimizer"], **(r["staleness"] or {})} for r in rows],
        "staleness_note": "from the trainer's final metrics: for every update of the run, how many other updates "
        "reached the parameters between its step's start and its own update (p50, p99, max, mean)",
    }


def inference(bench: Bench) -> dict[str, object]:
    """The exported SavedModel of the single-process seed-0 run, timed per batch size on CPU."""
    run = bench.run("inference", bench.spec(SINGLE, 1))
    model = run.export / "saved_model"
    return {"model": f"{run.spec.setup} seed {run.spec.seed} export (saved_model, `serve` endpoint)",
            "device": "CPU", "rows": time_saved_model(model, bench.data_args, bench.sizes.batch_sizes,
                                                            bench.sizes.inference_seconds)}


EXPERIMENTS: dict[str, Callable[[Bench], dict[str, object]]] = {
    "accuracy": accuracy,
    "speedup": speedup,
    "optimizers": optimizers,
    "inference": inference,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny: few steps, one seed, fewer setups (smoke test)")
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS), help="comma-separated subset, in order")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"), help="MNIST (default $MNIST_DIR); "
                        "full MNIST (mnist.npz, 60k/10k) when you have it")
    parser.add_argument("--synthetic", action="store_true", help="synthetic images (no accuracy to speak of)")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNGs from OUT/trainer.json")
    parser.add_argument("--note", default="", help="recorded in the JSON, e.g. that the machine was shared")
    opts = parser.parse_args(argv)
    unknown = set(opts.experiments.split(",")) - set(EXPERIMENTS)
    if unknown:
        parser.error(f"unknown experiments {sorted(unknown)}; choose from {','.join(EXPERIMENTS)}")
    if not opts.synthetic and not opts.data_dir and not opts.replot:
        parser.error("set MNIST_DIR or --data-dir (or pass --synthetic)")
    return opts


def phases(experiments: Sequence[str], seeds: int) -> list[tuple[str, int]]:
    """(experiment, seeds) in running order: every experiment at one seed first, then the accuracy experiment one
    more seed at a time, so a run cut short still has every figure (the JSON is rewritten after each phase)."""
    more = [("accuracy", n) for n in range(2, seeds + 1)] if "accuracy" in experiments else []
    return [(name, 1) for name in experiments] + more


def write(out: Path, result: dict[str, object], started: float, complete: bool) -> None:
    """The JSON as it stands (rewritten after each phase)."""
    result["complete"] = complete
    result["bench_seconds"] = round(time.time() - started, 1)
    (out / "trainer.json").write_text(json.dumps(result, indent=2) + "\n")


def replot(out: Path) -> None:
    """Redraw every experiment's PNG from OUT/trainer.json (derived speedup figures recomputed)."""
    result = json.loads((out / "trainer.json").read_text())
    if "speedup" in result:
        result["speedup"]["rows"] = speedup_rows(result["speedup"]["rows"], result["speedup"]["cores"])
    for name in EXPERIMENTS:
        if name in result:
            plots.PLOTS[name](result, out / f"trainer_{name}.png")
    (out / "trainer.json").write_text(json.dumps(result, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen experiments, write the JSON and one PNG per experiment."""
    opts = parse_args(argv)
    if opts.replot:
        return replot(opts.out)
    sizes = QUICK if opts.quick else DEFAULT
    data_args = ["--synthetic"] if opts.synthetic else ["--data-dir", str(opts.data_dir)]
    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result: dict[str, object] = {"machine": machine(opts.note), "target_accuracy": TARGET, "quick": opts.quick,
                                 "sizes": sizes.__dict__, "data_args": data_args, "notes": NOTES,
                                 "trainer_source": source()}
    with tempfile.TemporaryDirectory(prefix="disttrain-bench-") as scratch:
        bench = Bench(opts.out, sizes, data_args, Path(scratch))
        for name, seeds in phases(opts.experiments.split(","), sizes.seeds):
            bench.seeds = seeds
            result[name] = EXPERIMENTS[name](bench)
            result["data"] = next((r.metrics.get("data") for r in bench.done.values()), None)
            plots.PLOTS[name](result, opts.out / f"trainer_{name}.png")
            write(opts.out, result, started, complete=False)
    result["machine"] = machine(opts.note, result["machine"])  # type: ignore[arg-type]
    write(opts.out, result, started, complete=True)
    print(f"wrote {opts.out / 'trainer.json'} in {result['bench_seconds']} s", flush=True)


if __name__ == "__main__":
    main()
