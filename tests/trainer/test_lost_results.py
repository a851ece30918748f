"""A parameter-server closure's results live on the worker that ran it until the chief copies them over; a worker
killed between the two leaves a finished closure whose results cannot be read. The chief must run those steps
again, not fail the job: the real-pods test lost its chief this way (e2e, worker-1 SIGKILLed mid-run)."""

from __future__ import annotations

from concurrent import futures
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from disttrain_trainer.strategies import ParameterServerRunner, results_lost_with_worker

# The chief's error in that run, as it printed it (the remote target is the killed worker).
LOST = (
    "2 root error(s) found. (0) UNAVAILABLE: {{function_node __wrapped__Identity_device_/job:chief/replica:0/task:0/"
    "device:CPU:0}} failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.224:2222: Failed to connect "
    "to remote host: Connection refused Additional GRPC error information from remote target "
    "/job:worker/replica:0/task:1/device:CPU:0 while calling /tensorflow.eager.EagerService/RunComponentFunction"
)


class Remote:
    """A finished closure's RemoteValue; `fetch` raises `error` when given (its worker is gone)."""

    def __init__(self, worker: int, error: Exception | None) -> None:
        self.worker, self.error = worker, error

    def fetch(self) -> tuple[np.ndarray, ...]:
        if self.error:
            raise self.error
        return np.float32(0.5), np.float32(0.75), np.int32(self.worker), np.zeros(1, np.float32)


class Coordinator:
    """Schedules closures alternately on workers 0 and 1; the results of the first `lost` on worker 1 are lost."""

    def __init__(self, lost: int, error: Exception) -> None:
        self.scheduled, self.lost, self.error = 0, lost, error

    def schedule(self, fn: object, args: tuple) -> Remote:
        worker = self.scheduled % 2
        self.scheduled += 1
        losing = worker == 1 and self.lost > 0
        self.lost -= losing
        return Remote(worker, self.error if losing else None)


def runner_with(coordinator: Coordinator) -> ParameterServerRunner:
    """A parameter-server runner around a stand-in coordinator (no cluster: only `run` is exercised)."""
    runner = object.__new__(ParameterServerRunner)
    runner.coordinator = coordinator
    runner.hp = SimpleNamespace(steps_per_dispatch=1)
    runner.replica_names = ("worker-0", "worker-1")
    runner.max_in_flight = 4
    runner._iterator = runner._steps_fn = None
    runner._fetcher = futures.ThreadPoolExecutor(4)
    runner._in_flight = {}
    return runner


def test_steps_whose_worker_was_lost_before_their_results_were_read_are_run_again() -> None:
    coordinator = Coordinator(lost=2, error=tf.errors.UnavailableError(None, None, LOST))
    results = runner_with(coordinator).run(10)
    # failed before: the UnavailableError ended the chief (exit code 1, the job Failed)
    assert results.steps == 10
    assert coordinator.scheduled >= 12  # the two lost closures were scheduled again
    assert sum(results.replica_steps.values()) == 10
    assert results.replica_steps["worker-0"] >= 5


def test_other_errors_still_end_training() -> None:
    broken = tf.errors.InvalidArgumentError(None, None, "logits and labels must have the same first dimension")
    with pytest.raises(tf.errors.InvalidArgumentError):
        runner_with(Coordinator(lost=1, error=broken)).run(10)


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (tf.errors.UnavailableError(None, None, LOST), True),
        (tf.errors.AbortedError(None, None, "from remote target /job:worker/replica:0/task:0: aborted"), True),
        # a restarted worker answers, but no longer holds the tensors
        (
            tf.errors.InvalidArgumentError(
                None,
                None,
                "/job:worker/replica:0/task:1 Unable to find the relevant "
                "tensor remote_handle: Op ID: 55, Output num: 0",
            ),
            True,
        ),
        # a parameter server is gone: not the results' loss, and not for the chief to paper over
        (
            tf.errors.UnavailableError(
                None,
                None,
                "/job:worker/replica:0/task:1 ... GRPC error information from remote target /job:ps/replica:0/task:0",
            ),
            False,
        ),
        (tf.errors.UnavailableError(None, None, "failed to connect to /job:ps/replica:0/task:0"), False),
        (tf.errors.InvalidArgumentError(None, None, "/job:worker/replica:0/task:1 incompatible shapes"), False),
        (ValueError("/job:worker/replica:0/task:1"), False),
    ],
)
def test_which_errors_mean_the_results_went_with_their_worker(error: Exception, lost: bool) -> None:
    assert results_lost_with_worker(error) is lost
