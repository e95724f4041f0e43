"""The local engine: images read and decoded on threads while the models run in this process."""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from allscan.run.committer import Committer
from allscan.run.job import Job, Source, iter_prepared


@dataclass(frozen=True)
class LocalEngine:
    """Prepares on ``workers`` threads, a few batches ahead, and scores through the driver's committer."""

    workers: int = 2

    def run(self, images: Sequence[Path | Source], job: Job, committer: Committer) -> None:
        """Prepare and score ``images`` (files, or :class:`~allscan.run.job.Source` items for arrays)."""
        known = frozenset() if job.rescore else committer.known_hashes()
        prepare = partial(job.prepare, known=known)
        for item in iter_prepared(images, prepare, self.workers, window=2 * job.batch_size):
            committer.add(item)
        committer.flush()
