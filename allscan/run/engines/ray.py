"""The Ray engine (``allscan[ray]``): Ray Data reads and decodes in CPU tasks, an actor pool scores.

The driver lists the images and leaves out those the results store already holds
with a score (and a figure, when the run wants one); Ray Data prepares the rest in
CPU tasks, and a fixed pool of actors, each loading the ensemble once, runs the
job's scoring step on batches. Results stream back to the driver, which commits each
batch to the same store as the local engine before reporting it, so resuming and
exactly-once storage work the same.

Prepared images and results travel between processes as pickles: the engine never
looks inside them, so it does not depend on how an image becomes model inputs.
"""

import gc
import logging
import math
import os
import pickle
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from allscan.run.committer import Committer
from allscan.run.engines.base import EngineError
from allscan.run.job import Job, Source

PREPARE_CPUS = 0.25
"""CPUs reserved by each prepare task: decoding a field takes a few ms against tens of ms to score it."""

MISSING_EXTRA = 'the ray engine needs Ray: pip install "allscan[ray]"'

INSTALLED_ROOT = Path(__file__).resolve().parents[3]
"""The folder holding the ``allscan`` package this process runs (site-packages, or a source checkout)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise EngineError(MISSING_EXTRA) from None
    return ray


@dataclass(frozen=True)
class RayEngine:
    """Runs a job on Ray: an existing cluster at ``address``, or a local runtime started and shut down here.

    Attributes:
        address: ``auto``, ``ray://HOST:PORT`` or a GCS address; None starts a local runtime (or uses the
            one this process already started, e.g. in a notebook, and leaves it running).
        actors: Scoring actors, each holding the ensemble in memory.
        actor_cpus: CPUs each actor reserves; its models run on as many threads, rounded up.
        num_cpus: CPUs of a local runtime [default: this machine's].
    """

    address: str | None = None
    actors: int = 1
    actor_cpus: float = 1.0
    num_cpus: int | None = None

    def __post_init__(self):
        _import_ray()
        if self.actors < 1 or self.actor_cpus <= 0:
            raise EngineError("--actors must be at least 1 and --actor-cpus above 0")
        try:
            _check_reachable(self.address)
        except OSError as err:
            raise EngineError(f"cannot reach Ray at {self.address}: {err.strerror or err}") from None

    def run(self, images: Sequence[Path], job: Job, committer: Committer) -> None:
        todo = list(images)
        if not job.rescore:
            # A stored content this run wants a figure for and has none in its heatmaps folder is scored again to
            # draw it, as the local engine does.
            known = committer.known_hashes()
            stored = {str(r.path): r for r in committer.stored(images) if r.sha256 in known}
            for result in stored.values():
                committer.already_stored(result)
            todo = [p for p in images if str(p) not in stored]
        if not todo:
            return
        ray = _import_ray()
        failure: BaseException | None = None
        with _interrupts_between_batches() as interrupts, _runtime(ray, self.address, self.num_cpus), \
                _driver_logs_muted():
            self._check_resources(ray)
            batches = self._stream(ray, todo, job.for_workers())
            try:
                interrupts.check()
                for results in batches:
                    committer.commit(results)
                    interrupts.check()
                interrupts.check()
            except (KeyboardInterrupt, EngineError) as exc:
                # Raised again once Ray is down, without the frames it came through: they hold Ray objects,
                # which must be released while Ray runs (else each prints "Exception ignored" at exit).
                failure = exc.with_traceback(None)
                failure.__context__ = None
            finally:
                batches.close()
        if failure is not None:
            raise failure

    def _stream(self, ray, images: list[Path], job: Job) -> Iterator[list]:
        items = [{"source": str(Path(p).resolve()), "name": str(p)} for p in images]
        dataset = ray.data.from_items(items).map_batches(
            _prepare_batch, fn_kwargs={"job": job}, batch_size=job.batch_size, batch_format="numpy",
            num_cpus=PREPARE_CPUS,
        ).map_batches(
            _ScoreBatch, fn_constructor_kwargs={"job": job, "threads": math.ceil(self.actor_cpus)},
            batch_size=job.batch_size, batch_format="numpy", num_cpus=self.actor_cpus,
            compute=ray.data.ActorPoolStrategy(size=self.actors),
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                yield [pickle.loads(blob) for blob in batch["result"]]
        except ray.exceptions.RayError as err:
            raise EngineError(f"the Ray job failed: {_first_line(err)}") from None

    def _check_resources(self, ray) -> None:
        """Refuse a pool that leaves no CPU for decoding (Ray Data would wait for ever), unless a cluster may grow."""
        if self.address is not None:
            return
        cpus = ray.cluster_resources().get("CPU", 0)
        needed = self.actors * self.actor_cpus + PREPARE_CPUS
        if needed > cpus:
            raise EngineError(
                f"{self.actors} actor(s) x {self.actor_cpus:g} CPU plus {PREPARE_CPUS:g} CPU for decoding need"
                f" {needed:g} CPUs; the Ray runtime has {cpus:g}: lower --actors or --actor-cpus"
            )


def _prepare_batch(batch: dict[str, np.ndarray], job: Job) -> dict[str, np.ndarray]:
    """Ray CPU task: the job's prepare step on each file of a batch."""
    prepared = [job.prepare(Source(Path(source), name)) for source, name in zip(batch["source"], batch["name"])]
    return {"prepared": _pickles(prepared)}


class _ScoreBatch:
    """Ray actor: loads the ensemble once, then runs the job's worker step on each batch, its models on
    ``threads`` threads."""

    def __init__(self, job: Job, threads: int):
        self.score = job.worker(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.score([pickle.loads(blob) for blob in batch["prepared"]])
        return {"result": _pickles(results)}


def _pickles(items: list) -> np.ndarray:
    blobs = np.empty(len(items), dtype=object)
    blobs[:] = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
    return blobs


USAGE_STATS = "RAY_USAGE_STATS_ENABLED"
"""Ray reports usage statistics from every cluster it starts unless this is "0"; a cluster started elsewhere
(``--address``) keeps its own setting."""


@contextmanager
def _runtime(ray, address: str | None, num_cpus: int | None):
    """Connect to ``address`` or start a local runtime, quietly; shut down only what was started here."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault(USAGE_STATS, "0")  # a runtime started here reports nothing (a user's "1" stands)
    try:
        try:
            with _working_folder(INSTALLED_ROOT), _sigint_blocked(), _sigterm_handler_kept():
                ray.init(address=address, num_cpus=None if address else (num_cpus or os.cpu_count()),
                         include_dashboard=False if address is None else None, log_to_driver=False,
                         logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise EngineError(f"cannot start or reach Ray at {address or 'a local runtime'}: {_first_line(err)}") \
                from None
        yield
    finally:
        gc.collect()  # objects that still hold Ray references go while Ray can release them
        if ray.is_initialized():
            ray.shutdown()


REACH_TIMEOUT_S = 10.0
"""How long a cluster's ``HOST:PORT`` may take to accept a connection: Ray retries one that accepts none for
about 13 minutes (20 tries of 40 s), deaf to Ctrl-C while it starts."""


def _check_reachable(address: str | None) -> None:
    """Fail at once, before the run's outputs are made, when a ``HOST:PORT`` or ``ray://HOST:PORT`` address
    accepts no connection (``auto`` and a local runtime are Ray's to find).

    Raises:
        OSError: Nothing listens there, or the host cannot be reached or resolved.
    """
    host, colon, port = (address or "").removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S):
        pass


class _Interrupts:
    """Ctrl-C while Ray runs, and SIGTERM where the caller handles it in Python (the CLI ends the run as on
    Ctrl-C): the first is recorded and acted on between batches, the second at once.

    A KeyboardInterrupt raised inside Ray's own code (while it starts, or waits on a task) can be
    caught there and lost: the run then went on to the end and exited 0.
    """

    def __init__(self, on_sigterm: Callable = signal.default_int_handler):
        self.handlers = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: on_sigterm}
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signum is not None:
            self.handlers[signum](signum, frame)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            signum, self.signum = self.signum, None
            self.handlers[signum](signum, None)


@contextmanager
def _interrupts_between_batches():
    """Handle SIGINT, and SIGTERM where a Python handler takes it (not where it ends the process), with an
    :class:`_Interrupts` while the block runs (on the main thread only, where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield _Interrupts()
        return
    on_sigterm = signal.getsignal(signal.SIGTERM)
    interrupts = _Interrupts(on_sigterm) if callable(on_sigterm) else _Interrupts()
    numbers = (signal.SIGINT, signal.SIGTERM) if callable(on_sigterm) else (signal.SIGINT,)
    previous = {number: signal.signal(number, interrupts) for number in numbers}
    try:
        yield interrupts
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def _sigterm_handler_kept():
    """Keep this process's SIGTERM handler while Ray starts.

    ``ray.init`` replaces it with one that kills the local runtime and exits at once: a SIGTERM then
    ended the run with exit code 134, no message and no results file.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _working_folder(folder: Path):
    """Run in ``folder`` while Ray starts.

    Ray puts the driver's current folder first on every worker's ``sys.path``, so an
    ``allscan/`` folder there (a clone's, a stale copy) would shadow the installed package in
    the workers; from the folder holding the installed package they import the driver's
    allscan, and a local runtime's workers run there. The current folder is the process's:
    another thread resolving a relative path during ``ray.init`` would see this one.
    """
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@contextmanager
def _sigint_blocked():
    """Block SIGINT while Ray starts its processes, which inherit the mask.

    Ctrl-C goes to the terminal's whole process group: it is this process's to handle (it shuts Ray
    down once what it holds is released); Ray's processes dying under it first crash the driver's
    shutdown. A Ctrl-C meanwhile is delivered here when the mask is restored.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextmanager
def _driver_logs_muted():
    """Point this process's stderr at /dev/null while Ray runs.

    Ray's C++ core in the driver prints an error-level notice for every actor Ray Data
    starts (ray-project/ray#53727); real failures reach us as exceptions, and the
    workers' logs stay in Ray's session folder.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _first_line(err: BaseException) -> str:
    """The first line of an error's message, without the terminal colours Ray puts in its errors; for a
    task's error, that of the exception the task raised (Ray's own first line only names the task)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, Exception) and cause is not err:
        return f"{type(cause).__name__}: {_first_line(cause)}"
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
