"""`disttrain-trainer`: every replica gets the same command line; its role comes from TF_CONFIG."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .cluster import (
    STRATEGIES,
    ClusterConfig,
    ConfigError,
    Role,
    Strategy,
    available_cpus,
    choose_strategy,
    parse_tf_config,
    thread_pools,
)
from .failure import failure_line, redact, write_failure_message

if TYPE_CHECKING:
    from .data import Mnist
    from .reporting import OutputPaths

log = logging.getLogger("disttrain_trainer")

DEFAULT_STEPS = 1000
DEFAULT_BATCH = 128
DEFAULT_LR = 0.05
DEFAULT_STEPS_PER_DISPATCH = 5


def build_parser() -> argparse.ArgumentParser:
    """The command line shared by every role (ps/worker ignore the training flags)."""
    p = argparse.ArgumentParser(prog="disttrain-trainer", description=__doc__)
    p.add_argument("--strategy", choices=STRATEGIES, default=Strategy.AUTO.value, help="auto: from TF_CONFIG")
    p.add_argument("--max-steps", type=int, default=None, help=f"global steps (default {DEFAULT_STEPS})")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training set (instead of steps)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per replica per step")
    p.add_argument("--learning-rate", type=float, default=DEFAULT_LR)
    p.add_argument("--optimizer", choices=("adagrad", "sgd", "adam"), default="adagrad")
    p.add_argument("--data-dir", default=None, help="IDX .gz files or mnist.npz (else MNIST_DIR, else download)")
    p.add_argument("--synthetic", action="store_true", help="synthetic images (throughput runs)")
    p.add_argument(
        "--output-dir",
        default=os.environ.get("DISTTRAIN_OUTPUT_DIR"),
        help="default $DISTTRAIN_OUTPUT_DIR (set by the operator for shared storage and by local mode), "
        "else ./disttrain-output",
    )
    p.add_argument("--log-dir", default=None, help="TensorBoard logs (default OUTPUT/logs)")
    p.add_argument("--checkpoint-dir", default=None, help="default OUTPUT/checkpoints")
    p.add_argument("--export-dir", default=None, help="default OUTPUT/model")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (0: only at end)")
    p.add_argument("--log-every", type=int, default=50, help="steps between progress lines")
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float16 on GPUs (dynamic loss scaling), bfloat16 on CPUs: from the devices of the replicas that compute",
    )
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for peers")
    p.add_argument(
        "--chief-grace",
        type=float,
        default=300.0,
        help="ps/worker/evaluator: seconds the chief may be away (e.g. restarting from its checkpoint) before they end",
    )
    p.add_argument("--threads", type=int, default=0, help="TensorFlow threads per process (0: CPUs available)")
    p.add_argument(
        "--steps-per-dispatch",
        type=int,
        default=DEFAULT_STEPS_PER_DISPATCH,
        help="parameter-server mode: steps a worker runs per closure the chief sends (amortizes the dispatch)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="also show TensorFlow's INFO logs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, pick the role, run it; on failure a one-line error (values of the variables named in
    DISTTRAIN_REDACT_ENV replaced by ***) on stderr and in the termination message, and a non-zero exit."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # end at once, even inside TensorFlow calls
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's own chatter (session config dumps, "waiting for closures", gRPC retries while servers
    # shut down) drowns the replicas' logs; TF_CPP_MIN_LOG_LEVEL=0 and --verbose bring it back.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.verbose:
        log.setLevel(logging.DEBUG)  # includes the traceback of a failure
    else:
        for noisy in ("absl", "tensorflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # Each checkpoint of sharded, remote variables retraces TensorFlow's own saver function; harmless,
        # but it warns from the fifth save on.
        logging.getLogger("tensorflow").addFilter(lambda record: "MultiDeviceSaver" not in record.getMessage())
    try:
        config = parse_tf_config(os.environ.get("TF_CONFIG"))
        code = run(args, config)
    except Exception as exc:  # the contract: a clear one-line message and a non-zero exit
        if log.isEnabledFor(logging.DEBUG):  # --verbose: the traceback, with the same secrets hidden
            log.debug("failure\n%s", redact(traceback.format_exc().rstrip()))
        line = failure_line(exc)  # secrets named in DISTTRAIN_REDACT_ENV are *** in it
        print(line, file=sys.stderr, flush=True)
        write_failure_message(line)  # in a pod, the termination message (terminationMessagePolicy File)
        code = 2 if isinstance(exc, ConfigError) else 1
    from .servers import exit_now

    exit_now(code)
    return code


def run(args: argparse.Namespace, config: ClusterConfig | None) -> int:
    """Dispatch on the role."""
    threads = args.threads or available_cpus()
    role = config.task_type if config else None
    if role in (Role.PS, Role.WORKER) and config is not None and config.count(Role.PS) > 0:
        from .servers import serve

        choose_strategy(Strategy.PARAMETER_SERVER, config)  # a clear error when the cluster has no chief
        return serve(config, threads, args.chief_grace, args.startup_timeout + args.chief_grace)
    kind = None if role == Role.EVALUATOR else choose_strategy(args.strategy, config)
    _configure_tensorflow(threads)
    from .data import load_mnist

    data = load_mnist(args.data_dir, args.synthetic)
    log.info("data: %s (%d train / %d held out)", data.source, len(data.x_train), len(data.y_held))
    if kind is None:
        return _evaluate_forever(args, config, data)
    return _train(args, config, kind, data)


def _configure_tensorflow(threads: int) -> None:
    import tensorflow as tf

    intra_op, inter_op = thread_pools(threads)
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # take memory as needed: local mode may put several replicas on one card
        tf.config.experimental.set_memory_growth(gpu, True)


def _paths(args: argparse.Namespace) -> OutputPaths:
    from .reporting import OutputPaths

    return OutputPaths.resolve(args.output_dir, args.log_dir, args.checkpoint_dir, args.export_dir)


def _train(args: argparse.Namespace, config: ClusterConfig | None, kind: Strategy, data: Mnist) -> int:
    from .cluster import peers_to_wait_for, wait_for_peers
    from .reporting import emit, write_termination_message
    from .servers import send_shutdown
    from .strategies import HParams
    from .training import Budget, train

    if config is not None:
        # mirrored workers open their ports only inside the strategy: for them, names must resolve
        waited = wait_for_peers(
            peers_to_wait_for(config, kind), args.startup_timeout, connect=kind == Strategy.PARAMETER_SERVER
        )
        log.info("all peers reachable after %.1fs", waited)
    hp = HParams(
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        seed=args.seed,
        mixed_precision=args.mixed_precision,  # the runner picks the precision from the computing replicas
        steps_per_dispatch=args.steps_per_dispatch,
    )
    max_steps = args.max_steps if args.max_steps or args.epochs else DEFAULT_STEPS
    budget = Budget(max_steps, args.epochs, max(1, args.log_every), args.checkpoint_every)
    metrics = train(kind, config, data, hp, budget, _paths(args))
    if kind == Strategy.PARAMETER_SERVER and config is not None:
        send_shutdown(config)
    if metrics:
        emit("final " + json.dumps(metrics, sort_keys=True))
        write_termination_message(metrics)
    return 0


def _evaluate_forever(args: argparse.Namespace, config: ClusterConfig | None, data: Mnist) -> int:
    """Evaluate checkpoints until the run's metrics.json appears (exit 0) or the chief is gone without it
    (exit as a ps or worker would: not a success)."""
    from .evaluation import run_evaluator
    from .servers import ChiefWatcher, end_without_chief

    paths = _paths(args)
    chief = config.chief_address if config else None
    watcher = ChiefWatcher(chief, args.chief_grace, args.startup_timeout + args.chief_grace) if chief else None
    started = time.time()
    chief_state = "running"

    def finished() -> bool:
        nonlocal chief_state
        if paths.metrics.exists() and paths.metrics.stat().st_mtime >= started:  # not one left by an earlier run
            return True
        chief_state = watcher.status() if watcher else chief_state
        return chief_state != "running"

    result = run_evaluator(data, paths.checkpoints, paths.logs, finished)
    log.info("evaluator done: %s", result)
    return end_without_chief(chief_state, watcher) if watcher and chief_state != "running" else 0
