"""Benchmark: single process vs parameter server (1+1, 2+2) vs multi-worker mirrored (2 workers).

Every setup trains the same CNN on the same data for the same number of steps with 128 images per
global step (mirrored: 2 x 64), then reports examples/s, training time, inference time and held-out
accuracy. Writes bench/results/trainer.json and bench/results/trainer.png.

    .venv/bin/python bench/trainer.py [--steps 600] [--synthetic]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from disttrain_trainer.cluster import available_cpus
from disttrain_trainer.launch import local_cluster, start_cluster, start_task

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Setup:
    """One row of the table."""

    name: str
    ps: int
    workers: int
    chief: int
    batch_size: int

    @property
    def single(self) -> bool:
        """No TF_CONFIG at all."""
        return self.workers == 0


SETUPS = (
    Setup("single process", ps=0, workers=0, chief=0, batch_size=128),
    Setup("PS 1 ps + 1 worker", ps=1, workers=1, chief=1, batch_size=128),
    Setup("PS 2 ps + 2 workers", ps=2, workers=2, chief=1, batch_size=128),
    Setup("mirrored 2 workers", ps=0, workers=2, chief=0, batch_size=64),
)


def run_setup(setup: Setup, steps: int, data_args: list[str], root: Path) -> dict[str, object]:
    """Run one setup to completion; its final metrics plus wall time."""
    out = root / setup.name.replace(" ", "-")
    args = [
        "--max-steps",
        str(steps),
        "--batch-size",
        str(setup.batch_size),
        "--output-dir",
        str(out / "out"),
        "--log-every",
        "100",
        "--checkpoint-every",
        "0",
        *data_args,
    ]
    start = time.monotonic()
    if setup.single:
        task = start_task({}, None, 0, args, out / "logs")
        code, chief_out = task.process.wait(900), task
    else:
        cluster = local_cluster(chief=setup.chief, ps=setup.ps, worker=setup.workers)
        running = start_cluster(cluster, args, out / "logs")
        codes = running.wait(900)
        running.stop()
        chief_out = running.task("chief" if setup.chief else "worker")
        code = max(abs(c) if c is not None else 1 for c in codes.values())
    wall = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"{setup.name} failed: {chief_out.stderr.read_text()[-2000:]}")
    final = next(line for line in chief_out.output().splitlines() if line.startswith("final "))
    metrics = json.loads(final.removeprefix("final "))
    metrics["wall_seconds"] = round(wall, 1)
    metrics["setup"] = setup.name
    metrics["workers"] = max(1, setup.workers)
    metrics["examples_per_second_per_worker"] = round(metrics["examples_per_second"] / metrics["workers"], 1)
    return metrics


def table(rows: list[dict[str, object]]) -> str:
    """A markdown table of the results."""
    head = (
        "| setup | examples/s | per worker | train s (to N steps) | wall s | held-out acc "
        "| inference ms/example (batch 500) | latency ms (1 image) |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['setup']} | {r['examples_per_second']} | {r['examples_per_second_per_worker']} "
        f"| {r['train_seconds']} | {r['wall_seconds']} | {r['accuracy']:.4f} "
        f"| {r['inference_ms_per_example']} | {r['inference_latency_ms']} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def chart(rows: list[dict[str, object]], path: Path) -> None:
    """Three bar charts: throughput, training time, accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["setup"]).replace(" + ", "+\n").replace(" 2 w", "\n2 w") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (
        ("examples_per_second", "examples / s"),
        ("train_seconds", "training seconds"),
        ("accuracy", "held-out accuracy"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = [float(r[key]) for r in rows]  # type: ignore[arg-type]
        ax.bar(names, values, color=["#777", "#2a7", "#1a5", "#36c"][: len(rows)])
        ax.set_title(label)
        ax.tick_params(axis="x", labelsize=8)
        if key == "accuracy":
            ax.set_ylim(min(values) - 0.01, 1.0)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.4g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"disttrain trainer on {available_cpus()} CPUs: MNIST CNN, same steps and data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    """Run every setup, print the table, write JSON and PNG."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--synthetic", action="store_true")
    opts = parser.parse_args()
    if not opts.synthetic and not os.environ.get("MNIST_DIR"):
        raise SystemExit("set MNIST_DIR (or pass --synthetic)")
    data_args = ["--synthetic"] if opts.synthetic else ["--data-dir", os.environ["MNIST_DIR"]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="disttrain-bench-") as tmp:
        for setup in SETUPS:
            print(f"running {setup.name} ...", flush=True)
            rows.append(run_setup(setup, opts.steps, data_args, Path(tmp)))
            print(f"  {rows[-1]['examples_per_second']} examples/s, accuracy {rows[-1]['accuracy']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "steps": opts.steps,
        "examples_per_step": 128,
        "cpus": available_cpus(),
        "machine": platform.platform(),
        "rows": rows,
        "markdown": table(rows),
    }
    (RESULTS / "trainer.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(rows, RESULTS / "trainer.png")
    print(table(rows))


if __name__ == "__main__":
    main()
