"""ps/worker serving, and ending by themselves: a shutdown token from the chief, or the chief gone for good.

`tf.distribute.Server.join()` never returns, so a ps/worker pod would never complete. Each server
therefore waits on two things at once:
  * a shutdown token: a FIFO queue with a well-known shared name on its own device, into which the chief
    enqueues one element per task when training succeeded (all tasks exit within a second);
  * the chief's port: once seen open, if it stays closed for `grace` seconds the chief is gone for good
    (crashed and not restarted), and the server exits too, with CHIEF_GONE_EXIT_CODE: not a success.
SIGTERM/SIGINT keep their default action, which ends the process at once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import tensorflow as tf

from .cluster import ClusterConfig, Role, address_accepts, thread_pools
from .failure import redact, write_failure_message

log = logging.getLogger(__name__)

SHUTDOWN_QUEUE = "disttrain_shutdown"
SEND_TIMEOUT = 5.0  # one attempt to hand a task its token
SHUTDOWN_SECONDS = 20.0  # all attempts: on a busy machine one attempt timed out, and the task served on
RETRY_PAUSE = 0.5
CHIEF_GONE_EXIT_CODE = 3  # the chief vanished without sending the shutdown token: not a success
TOKEN_EXIT_DELAY = 1.0  # lets the chief's call that delivered the token return before this server goes


class ChiefWatcher:
    """Says whether the chief has been seen and has since stayed unreachable for `grace` seconds."""

    def __init__(
        self,
        address: str,
        grace: float,
        never_seen_timeout: float,
        probe: Callable[[str], bool] = lambda a: address_accepts(a, timeout=1.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address, self.grace, self.never_seen_timeout = address, grace, never_seen_timeout
        self._probe, self._clock = probe, clock
        self._started = clock()
        self._seen = False
        self._closed_since: float | None = None

    def status(self) -> str:
        """'running', 'gone' (seen, then closed for grace seconds) or 'never-started'."""
        now = self._clock()
        if self._probe(self.address):
            self._seen, self._closed_since = True, None
            return "running"
        if not self._seen:
            return "never-started" if now - self._started > self.never_seen_timeout else "running"
        if self._closed_since is None:
            self._closed_since = now
        return "gone" if now - self._closed_since >= self.grace else "running"


def end_without_chief(state: str, watcher: ChiefWatcher) -> int:
    """Say why a ps, worker or evaluator ends without the chief having finished the run; its exit code."""
    if state == "gone":
        report_failure(
            f"the chief at {watcher.address} has been unreachable for {watcher.grace:.0f}s without ending the run"
        )
        return CHIEF_GONE_EXIT_CODE
    report_failure(f"chief {watcher.address} never came up")
    return 1


def session_config(threads: int) -> tf.compat.v1.ConfigProto:
    """Thread pools sized to the CPUs the process really has; GPU memory taken only as needed."""
    intra_op, inter_op = thread_pools(threads)
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op, inter_op_parallelism_threads=inter_op)
    config.gpu_options.allow_growth = True
    return config


def _wait_for_token(server: tf.distribute.Server, device: str, done: threading.Event) -> None:
    """Block on this task's shutdown queue (graph mode, through the server's own master)."""
    try:
        with tf.Graph().as_default():
            with tf.device(device):
                queue = tf.queue.FIFOQueue(8, tf.int32, shared_name=SHUTDOWN_QUEUE, name=SHUTDOWN_QUEUE)
                dequeue = queue.dequeue()
            with tf.compat.v1.Session(server.target, config=_only(device)) as session:
                session.run(dequeue)
        log.info("shutdown token received")
        done.set()
    except Exception as exc:  # the watcher still ends the process
        log.warning("shutdown-token listener stopped: %s", exc)


def serve(config: ClusterConfig, threads: int, grace: float, never_seen_timeout: float) -> int:
    """Run this task's TensorFlow server until the chief is done; returns the exit code."""
    server = tf.distribute.Server(
        tf.train.ClusterSpec(config.training_cluster),
        job_name=config.task_type,
        task_index=config.task_index,
        protocol="grpc",
        config=session_config(threads),
        start=True,
    )
    log.info("%s %d serving on %s", config.task_type, config.task_index, config.address)
    print(f"serving {config.task_type}:{config.task_index} on {config.address}", flush=True)
    token = threading.Event()
    device = f"/job:{config.task_type}/replica:0/task:{config.task_index}"
    threading.Thread(target=_wait_for_token, args=(server, device, token), daemon=True).start()
    chief = config.cluster[Role.CHIEF][0]
    watcher = ChiefWatcher(chief, grace, never_seen_timeout)
    while not token.wait(1.0):
        state = watcher.status()
        if state != "running":
            return end_without_chief(state, watcher)
    time.sleep(TOKEN_EXIT_DELAY)
    print(f"{config.task_type}:{config.task_index} done", flush=True)
    return 0


def _only(device: str) -> tf.compat.v1.ConfigProto:
    """A session config that looks at one task's devices only. Without the filter the task's master lists the
    devices of every task in the cluster first, and waits for any that is down: a server that has just
    exited on its own token would stall the token to the next one."""
    return tf.compat.v1.ConfigProto(device_filters=[device])


def send_shutdown(config: ClusterConfig) -> None:
    """From the chief after success: enqueue a token on every ps and worker, each tried again until it is taken
    or SHUTDOWN_SECONDS have passed (a dead task never takes it)."""
    targets = [(job, i) for job in (Role.PS, Role.WORKER) for i in range(config.count(job))]
    deadline = time.monotonic() + SHUTDOWN_SECONDS
    threads = [threading.Thread(target=_send_token, args=(config, *t, deadline), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _send_token(config: ClusterConfig, job: str, index: int, deadline: float) -> None:
    """Tries `_enqueue_token` until it succeeds or `deadline` (time.monotonic) comes; says so when it never did."""
    while True:
        try:
            _enqueue_token(config, job, index)
            return
        except Exception as exc:
            if time.monotonic() + RETRY_PAUSE >= deadline:
                log.warning("could not send shutdown token to %s %d: %s", job, index, exc)
                return
        time.sleep(RETRY_PAUSE)


def _enqueue_token(config: ClusterConfig, job: str, index: int) -> None:
    """A graph session straight to the task's own server, so the queue's shared name matches."""
    device = f"/job:{job}/replica:0/task:{index}"
    options = _only(device)
    options.operation_timeout_in_ms = int(SEND_TIMEOUT * 1000)
    with tf.Graph().as_default():
        with tf.device(device):
            queue = tf.queue.FIFOQueue(8, tf.int32, shared_name=SHUTDOWN_QUEUE, name=SHUTDOWN_QUEUE)
            enqueue = queue.enqueue(1)
        with tf.compat.v1.Session(f"grpc://{config.cluster[job][index]}", config=options) as session:
            session.run(enqueue)


def report_failure(message: str) -> None:
    """A server's end that is not a success, as the trainer reports any failure: one line on stderr and in the
    termination message (docs/contract.md), secrets masked."""
    line = redact(f"disttrain-trainer: error: {message}")
    print(line, file=sys.stderr, flush=True)
    write_failure_message(line)


def exit_now(code: int) -> None:
    """Leave without waiting for TensorFlow's non-daemon server threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
