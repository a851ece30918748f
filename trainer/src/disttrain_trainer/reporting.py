"""Outputs: output folders, progress lines, TensorBoard summaries, checkpoints, export, metrics.json and the
container's termination message."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .failure import termination_log_path

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "disttrain-output"
GRID_COLUMNS = 8
GRID_IMAGES = 32


@dataclass(frozen=True)
class OutputPaths:
    """Where TensorBoard logs, checkpoints, the exported model and metrics.json go."""

    logs: Path
    checkpoints: Path
    model: Path
    metrics: Path

    @classmethod
    def resolve(
        cls, output_dir: str | None, log_dir: str | None, checkpoint_dir: str | None, export_dir: str | None
    ) -> OutputPaths:
        """Explicit folders win; the rest are subfolders of `output_dir` (default ./disttrain-output)."""
        root = Path(output_dir or DEFAULT_OUTPUT_DIR)
        return cls(
            logs=Path(log_dir) if log_dir else root / "logs",
            checkpoints=Path(checkpoint_dir) if checkpoint_dir else root / "checkpoints",
            model=Path(export_dir) if export_dir else root / "model",
            metrics=root / "metrics.json",
        )


def progress_line(step: int, max_steps: int, loss: float, accuracy: float, examples_per_sec: float) -> str:
    """The line local mode parses: `progress step=120/600 loss=0.2310 accuracy=0.9340 examples_per_sec=812.5`."""
    return (
        f"progress step={step}/{max_steps} loss={loss:.4f} accuracy={accuracy:.4f} "
        f"examples_per_sec={examples_per_sec:.1f}"
    )


def emit(line: str) -> None:
    """Print one line to stdout and flush it (stdout is the chief's progress channel)."""
    print(line, flush=True)


def write_metrics(path: Path, metrics: dict[str, object]) -> None:
    """Write metrics.json atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_termination_message(metrics: dict[str, object]) -> Path | None:
    """In a pod, the final metrics as one JSON line in the termination message, which the kubelet puts in the
    container's status and the operator into the job's `status.results`. Only a file that already exists is
    written (the kubelet creates it), so outside Kubernetes nothing happens. Returns the path written."""
    path = termination_log_path()  # $DISTTRAIN_TERMINATION_LOG, else /dev/termination-log
    if not path.is_file():
        return None
    try:
        path.write_text(json.dumps(metrics, sort_keys=True, separators=(",", ":")))
    except OSError as error:
        log.warning("could not write the termination message to %s: %s", path, error)
        return None
    return path


def prediction_grid(images: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """An RGB grid (1xHxWx3 uint8) of digits framed green when predicted right, red when wrong."""
    count = min(len(images), GRID_IMAGES)
    rows = -(-count // GRID_COLUMNS)
    cell = 28 + 4
    grid = np.zeros((rows * cell, GRID_COLUMNS * cell, 3), dtype=np.uint8)
    for i in range(count):
        r, c = divmod(i, GRID_COLUMNS)
        frame = (0, 200, 0) if predicted[i] == labels[i] else (220, 0, 0)
        y, x = r * cell, c * cell
        grid[y : y + cell, x : x + cell] = frame
        grid[y + 2 : y + 30, x + 2 : x + 30] = np.repeat(images[i][..., None], 3, axis=-1)
    return grid[None]


def hparams_markdown(hparams: dict[str, object]) -> str:
    """Hyperparameters as a markdown table (TensorBoard's Text tab)."""
    rows = "\n".join(f"| {key} | {value} |" for key, value in sorted(hparams.items()))
    return f"| hyperparameter | value |\n|---|---|\n{rows}"


class Summaries:
    """TensorBoard writer for one role (train or eval); a no-op when `log_dir` is None."""

    def __init__(self, log_dir: Path | None) -> None:
        self._writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else tf.summary.create_noop_writer()
        self.enabled = log_dir is not None  # False: nothing is written, so nothing need be computed for it

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One scalar per tag at `step`."""
        with self._writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)
        self._writer.flush()

    def histograms(self, step: int, values: dict[str, np.ndarray]) -> None:
        """One histogram per tag at `step` (TensorBoard's Histograms and Distributions tabs)."""
        with self._writer.as_default(step=step):
            for tag, data in values.items():
                tf.summary.histogram(tag, data)
        self._writer.flush()

    def predictions(self, step: int, images: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> None:
        """The image grid of sample predictions, and the same as text."""
        text = " ".join(f"{p}{'' if p == t else f'(≠{t})'}" for p, t in zip(predicted, labels, strict=False))
        with self._writer.as_default(step=step):
            tf.summary.image("predictions", prediction_grid(images, predicted, labels))
            tf.summary.text("predictions_text", text[:2000])
        self._writer.flush()

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """A markdown text summary."""
        with self._writer.as_default(step=step):
            tf.summary.text(tag, markdown)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close."""
        self._writer.close()


def export_model(model: keras.Model, export_dir: Path) -> None:
    """Save the trained model: a TF SavedModel (serving) and a .keras file; library chatter goes to stderr."""
    export_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        model.export(str(export_dir / "saved_model"), verbose=False)
        model.save(export_dir / "mnist_cnn.keras")
