"""The gateway's model worker feeds a server up to its concurrency (COG_MAX_CONCURRENCY, from the
model's cog.yaml overlay), on the real coglet with a small async predictor."""

import os
import signal
import threading
import time

import pytest

from cogkit.gateway.workers import ModelWorker

RUNNER = "tests/concurrent_predictor.py:Sleeper"


class Sink:
    """The gateway's side of a worker: records starts, outputs and results, and how many ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running, self.peak = 0, 0
        self.outputs: dict[str, list] = {}
        self.logs: dict[str, int] = {}
        self.results: dict[str, dict] = {}
        self.canceled: set[str] = set()
        self.done = threading.Condition(self.lock)

    def is_canceled(self, pid):
        return pid in self.canceled

    def resolve_inputs(self, inputs):
        return inputs

    def on_start(self, pid):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.outputs[pid] = []

    def on_output(self, pid, chunk):
        with self.lock:
            self.outputs[pid].append(chunk)

    def on_log(self, pid, text):
        with self.lock:
            self.logs[pid] = self.logs.get(pid, 0) + text.count("tick")

    def on_done(self, pid, result):
        with self.lock:
            if pid in self.outputs:
                self.running -= 1
            self.results[pid] = result
            self.done.notify_all()

    def wait(self, pids, timeout=120):
        with self.lock:
            assert self.done.wait_for(lambda: set(pids) <= set(self.results), timeout), \
                f"unfinished: {set(pids) - set(self.results)}"
            return {pid: self.results[pid] for pid in pids}

    def wait_running(self, n, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                live = [p for p in self.outputs if p not in self.results]
                if len(live) >= n and all(self.logs.get(p, 0) >= 2 for p in live):  # logs stream live
                    return
            time.sleep(0.05)
        raise AssertionError(f"{n} predictions never ran at once: {self.running} running, "
                             f"logs {self.logs}, results {self.results}")


@pytest.fixture
def worker_of():
    workers = []

    def make(concurrency):
        worker = ModelWorker("sleeper", RUNNER, sink := Sink(), setup_timeout=120, concurrency=concurrency)
        workers.append(worker)
        return worker, sink

    yield make
    for worker in workers:
        worker.stop()


def submit(worker, n, ticks):
    pids = [f"p{i}" for i in range(n)]
    for pid in pids:
        worker.submit(pid, {"ticks": ticks})
    return pids


@pytest.mark.parametrize("concurrency", [1, 3])
def test_the_worker_runs_as_many_at_once_as_the_server_takes(worker_of, concurrency):
    worker, sink = worker_of(concurrency)
    pids = submit(worker, 6, ticks=5)
    results = sink.wait(pids)
    assert all(r["status"] == "succeeded" for r in results.values()), results
    texts = ["".join(sink.outputs[p]) for p in pids]
    assert all(t.startswith("0 1 2 3 4 peak=") for t in texts), texts  # no output crossed streams
    # the predictor itself saw that many running at once: never more, and never fewer while work waited
    assert max(int(t.rsplit("=", 1)[1]) for t in texts) == concurrency
    assert sink.peak == concurrency
    assert worker.info()["concurrency"] == concurrency and worker.restarts == 0


def test_cancel_one_leaves_the_others_and_a_crash_fails_all_with_one_restart(worker_of):
    worker, sink = worker_of(3)
    pids = submit(worker, 3, ticks=300)
    sink.wait_running(3)
    assert set(worker.info()["predictions"]) == set(pids)
    assert worker.cancel_running("p1")
    assert sink.wait(["p1"])["p1"]["status"] == "canceled"
    server_pid = worker.info()["pid"]
    os.killpg(server_pid, signal.SIGKILL)  # the server dies under the two still running
    results = sink.wait(["p0", "p2"])
    assert all(r["status"] == "failed" and "crashed" in r["error"] for r in results.values()), results
    assert worker.restarts == 1  # one crash, one restart, however many slots saw it
    worker.submit("after", {"ticks": 2})
    assert sink.wait(["after"])["after"]["status"] == "succeeded"
    assert worker.info()["pid"] != server_pid
