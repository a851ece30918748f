"""Local mode's console: what the closing summary shows."""

from __future__ import annotations

import io
import json
from pathlib import Path

from disttrain_operator.api import DistTrainJobStatus, ReplicaType
from disttrain_operator.local_console import Console


def test_local_summary_skips_figures_a_resumed_run_leaves_null(tmp_path: Path):
    """A finished run started again reports train_seconds and examples_per_second as null (docs/contract.md)."""
    (tmp_path / "metrics.json").write_text(
        json.dumps({"train_seconds": None, "examples_per_second": None, "accuracy": 0.98})
    )
    out = io.StringIO()
    Console(out, quiet=True, reporter=(ReplicaType.CHIEF, 0)).summary("j", DistTrainJobStatus(), 1.0, tmp_path)
    shown = out.getvalue()
    assert "train time" not in shown and "examples/s" not in shown
    assert "accuracy:    98.00% (held out)" in shown
