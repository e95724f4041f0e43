"""Engines run the per-image steps of a predict job: in this process (``local``) or on a Ray cluster (``ray``).

An engine knows nothing of model inputs: it calls the job's ``prepare`` and scoring
steps (:class:`allscan.run.batch.Job`) and hands every result to the driver's
:class:`allscan.run.batch.Scorer`, which commits it to the results store.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from allscan.run.batch import Job, Scorer

ENGINES = ("local", "ray")


class EngineError(Exception):
    """An engine that cannot run here: its extra is not installed or its cluster cannot be reached."""


class Engine(Protocol):
    def run(self, images: Sequence[Path], job: "Job", scorer: "Scorer") -> None:
        """Prepare and score ``images``, handing each result to ``scorer`` (which stores it)."""


def make_engine(name: str, workers: int = 2, address: str | None = None, actors: int = 1,
                actor_cpus: float = 1.0) -> Engine:
    """The engine called ``name``: ``local`` uses ``workers`` decoding threads, ``ray`` the other options.

    Raises:
        EngineError: An unknown name, or ``ray`` without the ``allscan[ray]`` extra.
    """
    if name == "local":
        from allscan.run.engines.local import LocalEngine

        return LocalEngine(workers)
    if name == "ray":
        from allscan.run.engines.ray import RayEngine

        return RayEngine(address, actors, actor_cpus)
    raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
