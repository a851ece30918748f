"""A stand-in for disttrain-trainer that needs no TensorFlow, to test local mode's job semantics fast.

It reads TF_CONFIG like the real trainer. FAKE_PLAN (JSON) says what each replica does, keyed by
`<role>-<index>`: {"exit": code, "after": seconds, "fail_times": n, "hang": true, "child": true,
"slow": seconds before the chief trains,
"linger": seconds a ps or worker takes to exit once the chief is done}.
Every process writes its PID (and its child's) under $DISTTRAIN_OUTPUT_DIR/pids/. The chief prints
progress lines, a `final` line and writes chief.done; ps and workers exit 0 once that file appears.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Writes a file that readers never see empty (a test polls these while they are written)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def main() -> int:
    config = json.loads(os.environ["TF_CONFIG"])
    name = f"{config['task']['type']}-{config['task']['index']}"
    out = Path(os.environ["DISTTRAIN_OUTPUT_DIR"])
    plan = json.loads(os.environ.get("FAKE_PLAN", "{}")).get(name, {})
    pids = out / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    write_atomically(pids / f"{name}-{os.getpid()}", str(os.getpid()))
    if plan.get("child"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        write_atomically(pids / f"{name}-child-{child.pid}", str(child.pid))
    if plan.get("hang"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"{name} hanging", flush=True)
        time.sleep(600)
    attempts_file = out / f"{name}.attempts"
    attempts = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
    attempts_file.write_text(str(attempts))
    if "exit" in plan and attempts <= plan.get("fail_times", 10**6):
        time.sleep(plan.get("after", 0.2))
        print(f"{name} failing with {plan['exit']}", flush=True)
        return int(plan["exit"])
    if config["task"]["type"] == "chief":
        time.sleep(plan.get("slow", 0))
        for step in (10, 20):
            print(f"progress step={step}/20 loss=0.5 accuracy=0.9 examples_per_sec=100.0", flush=True)
            time.sleep(0.3)
        metrics = {"accuracy": 0.98, "train_seconds": 0.6, "examples_per_second": 100.0, "steps": 20}
        (out / "metrics.json").write_text(json.dumps(metrics))
        print("final " + json.dumps(metrics), flush=True)
        (out / "chief.done").write_text("done")
        return 0
    deadline = time.monotonic() + 120
    while not (out / "chief.done").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(plan.get("linger", 0))
    print(f"{name} exiting: the chief is done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
