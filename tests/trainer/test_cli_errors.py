"""The trainer's failure contract: one clear line on stderr and a meaningful exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def trainer(args: list[str], tf_config: dict | str | None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "MNIST_DIR")}
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config if isinstance(tf_config, str) else json.dumps(tf_config)
    return subprocess.run(
        [sys.executable, "-m", "disttrain_trainer", "--output-dir", str(tmp_path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("disttrain-trainer: error:")]


def test_malformed_tf_config_exits_2_with_one_line(tmp_path: Path) -> None:
    result = trainer([], "{not json", tmp_path)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "TF_CONFIG" in error_lines(result)[0]


def test_ps_without_a_chief_exits_2(tmp_path: Path) -> None:
    config = {"cluster": {"ps": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    result = trainer([], config, tmp_path)
    assert result.returncode == 2
    assert "chief" in error_lines(result)[0]


def test_missing_data_folder_exits_1_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    result = trainer(["--data-dir", str(missing)], None, tmp_path)
    assert result.returncode == 1
    (line,) = error_lines(result)
    assert str(missing) in line and "does not exist" in line
