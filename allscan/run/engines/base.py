"""What every engine is: the protocol the driver calls, and the error an engine raises when it cannot run."""

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from allscan.run.committer import Committer
from allscan.run.job import Job


class EngineError(ValueError):
    """An engine that cannot run here: its extra is not installed or its cluster cannot be reached."""


class Engine(Protocol):
    def run(self, images: Sequence[Path], job: Job, committer: Committer) -> None:
        """Prepare and score ``images``, handing each result to ``committer`` (which stores it)."""
