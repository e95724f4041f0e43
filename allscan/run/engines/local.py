"""The local engine: images read and decoded on threads while the models run in this process."""

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from allscan.run.batch import Job, Prepared, Scorer


@dataclass(frozen=True)
class LocalEngine:
    """Prepares on ``workers`` threads, a few batches ahead, and scores through the driver's Scorer."""

    workers: int = 2

    def run(self, images: Sequence[Path], job: "Job", scorer: "Scorer") -> None:
        known = frozenset() if job.rescore else scorer.store.scored_hashes()
        prepare = partial(job.prepare, known=known)
        for item in iter_prepared(images, prepare, self.workers, window=2 * job.batch_size):
            scorer.add(item)
        scorer.flush()


def iter_prepared(paths: Iterable[Path], prepare: Callable[[Path], "Prepared"], workers: int,
                  window: int) -> Iterator["Prepared"]:
    """Prepare files on ``workers`` threads, at most ``window`` ahead, yielding in input order."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="allscan-decode") as pool:
        queue: deque[Future] = deque()
        for path in paths:
            queue.append(pool.submit(prepare, path))
            if len(queue) >= window:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
