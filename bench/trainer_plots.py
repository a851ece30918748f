"""The trainer benchmark's charts, one PNG per experiment, drawn from the results dict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Result = dict[str, Any]
COLORS = ("#555", "#2a7", "#187", "#064", "#36c", "#13a", "#c63", "#a3c")


def _title(result: Result, what: str) -> str:
    m = result["machine"]
    data = str(result.get("data") or "see data_args")
    data = data[data.find("(") + 1 : -1] if data.endswith(")") else data  # "test set only: fixed 8k train / ..."
    note = f" ({m['note']})" if m["note"] else ""  # what the run said of the machine, e.g. that it was shared
    return f"{what}\n{m['cpu']}, {m['cpus_available']} cores{note}; MNIST: {data}"


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _target_line(ax: plt.Axes, result: Result) -> None:
    ax.axhline(result["target_accuracy"], color="#c00", lw=0.8, ls=":", label=f"{result['target_accuracy']:.0%}")


def accuracy(result: Result, path: Path) -> None:
    """Held-out accuracy against seconds since training started (mean, min-max band), and time to target."""
    exp = result["accuracy"]
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    names = list(exp["setups"])
    for color, name in zip(COLORS, names, strict=False):
        points = exp["setups"][name]["mean_curve"]
        t = [p["seconds"] for p in points]
        curves.plot(t, [p["accuracy"] for p in points], "-o", ms=3, color=color, label=name)
        curves.fill_between(t, [p["accuracy_min"] for p in points], [p["accuracy_max"] for p in points],
                            color=color, alpha=0.2)
    _target_line(curves, result)
    low = min((p["accuracy"] for s in exp["setups"].values() for p in s["mean_curve"]), default=0.9)
    curves.set_ylim(max(low - 0.005, 0.9), 1.0)
    curves.set(xlabel="seconds since training started (after process start and cluster setup)",
               ylabel="held-out accuracy", title=f"mean over {exp['seeds']} seeds, band: min-max")
    curves.legend(fontsize=8)
    times = [exp["setups"][n]["time_to_target_s"] for n in names]
    means = [t["mean"] or 0 for t in times]
    bars.bar(names, means, yerr=[t["std"] or 0 for t in times], color=COLORS[: len(names)], capsize=4)
    for i, t in enumerate(times):
        label = f"{t['mean']:.0f}s ({t['n']}/{t['of']})" if t["mean"] is not None else "not reached"
        bars.text(i, means[i], label, ha="center", va="bottom", fontsize=8)
    bars.set(ylabel="seconds", title=f"time to {result['target_accuracy']:.0%} (mean ± sd; seeds that reached it)")
    bars.tick_params(axis="x", labelsize=8, rotation=20)
    fig.suptitle(_title(result, "Held-out accuracy against wall-clock time"), fontsize=10)
    _save(fig, path)


def speedup(result: Result, path: Path) -> None:
    """Speedup (examples/s, time to target) against workers with the ideal and core-bounded lines."""
    exp = result["speedup"]
    rows = exp["rows"]
    workers = [r["workers"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    left.plot(workers, [r["ideal"] for r in rows], "k--", lw=1, label="ideal (linear)")
    left.plot(workers, [r["ideal_bounded_by_cores"] for r in rows], color="#c00", lw=1.5,
              label=f"ideal on this machine: {exp['cores']} cores shared by every replica")
    for key, label, marker in (("speedup_examples_per_second", "examples/s", "o"),
                               ("speedup_time_to_target", f"time to {result['target_accuracy']:.0%}", "s")):
        pts = [(r["workers"], r[key]) for r in rows if r[key] is not None]
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
    bound = rows[-1]["ideal_bounded_by_cores"]
    left.text(workers[-1], bound, f"bounded by the {exp['cores']} cores: at most {bound:g}x here",
              ha="right", va="bottom", fontsize=8, color="#c00")
    left.set(xlabel=f"parameter-server workers ({exp['threads_per_process']} TensorFlow threads each)",
             ylabel="speedup over 1 worker", xticks=workers)
    left.legend(fontsize=8)
    width = 0.4
    for offset, key, label in ((-width / 2, "examples_per_second_per_core", "per core"),
                               (width / 2, "examples_per_second_per_worker", "per worker")):
        right.bar([i + offset for i in range(len(rows))], [r[key] or 0 for r in rows], width, label=label)
    right.set_xticks(range(len(rows)), [str(w) for w in workers])
    right.set(xlabel="workers", ylabel="examples / s", title="throughput per core and per worker")
    right.legend(fontsize=8)
    fig.suptitle(_title(result, "Parameter-server speedup against workers (same threads per replica)"),
                 fontsize=10)
    _save(fig, path)


def optimizers(result: Result, path: Path) -> None:
    """Adagrad against SGD: final and best accuracy, time to target and the updates' staleness, against workers."""
    rows = result["optimizers"]["rows"]
    fig, (acc, time, stale) = plt.subplots(1, 3, figsize=(17, 4.5))
    missing = time.get_xaxis_transform()  # x in data, y in axes fraction
    for optimizer, color in (("adagrad", "#2a7"), ("sgd", "#c63")):
        mine = [r for r in rows if r["optimizer"] == optimizer]
        workers = [r["workers"] for r in mine]
        acc.plot(workers, [r["final_accuracy"] for r in mine], "-o", color=color, label=f"{optimizer} final")
        acc.plot(workers, [r["best_accuracy"] for r in mine], ":", color=color, label=f"{optimizer} best")
        reached = [(r["workers"], r["time_to_target_s"]) for r in mine if r["time_to_target_s"] is not None]
        time.plot([p[0] for p in reached], [p[1] for p in reached], "-o", color=color, label=optimizer)
        for r in mine:
            if r["time_to_target_s"] is None:
                y = 0.04 if optimizer == "sgd" else 0.1
                time.text(r["workers"], y, f"{optimizer}: not reached", transform=missing, fontsize=8, color=color,
                          ha="center")
        measured = [r for r in mine if r.get("staleness")]
        for key, style in (("p50", "-o"), ("p99", "--s"), ("max", ":^")):
            stale.plot([r["workers"] for r in measured], [r["staleness"][key] for r in measured], style, color=color,
                       label=f"{optimizer} {key}")
    _target_line(acc, result)
    acc.set(xlabel="parameter-server workers", ylabel="held-out accuracy", xticks=workers)
    time.set(xlabel="parameter-server workers", ylabel=f"seconds to {result['target_accuracy']:.0%}",
             xticks=workers)
    stale.set(xlabel="parameter-server workers", ylabel="staleness: other updates during a step", xticks=workers)
    acc.legend(fontsize=8)
    time.legend(fontsize=8)
    stale.legend(fontsize=8)
    fig.suptitle(_title(result, "Adagrad against plain SGD under asynchrony (Downpour)"), fontsize=10)
    _save(fig, path)


def inference(result: Result, path: Path) -> None:
    """Latency percentiles and throughput against batch size (log axes)."""
    exp = result["inference"]
    rows = exp["rows"]
    sizes = [r["batch_size"] for r in rows]
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.5))
    lat.plot(sizes, [r["p50_ms"] for r in rows], "-o", label="p50")
    lat.plot(sizes, [r["p99_ms"] for r in rows], "-s", label="p99")
    lat.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per call", title="latency")
    lat.legend(fontsize=8)
    thr.plot(sizes, [r["examples_per_second"] for r in rows], "-o", color="#36c")
    thr.set(xscale="log", xlabel="batch size", ylabel="examples / s", title="throughput")
    fig.suptitle(_title(result, f"Inference: {exp['model']} on {exp['device']}"), fontsize=10)
    _save(fig, path)


PLOTS: dict[str, Callable[[Result, Path], None]] = {
    "accuracy": accuracy,
    "speedup": speedup,
    "optimizers": optimizers,
    "inference": inference,
}
