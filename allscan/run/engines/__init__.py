"""Engines run the per-image steps of a predict job: in this process (``local``) or on a Ray cluster (``ray``).

An engine knows nothing of model inputs nor of the results store: it calls the job's
``prepare`` and worker steps (:class:`allscan.run.job.Job`) and hands every item or result
to the driver's :class:`allscan.run.committer.Committer`, which commits it.
"""

from allscan.run.engines.base import Engine, EngineError
from allscan.run.engines.local import LocalEngine
from allscan.run.engines.ray import RayEngine

__all__ = ["ENGINES", "Engine", "EngineError", "LocalEngine", "RayEngine", "make_engine"]

ENGINES = ("local", "ray")


def make_engine(name: str, workers: int = 2, address: str | None = None, actors: int = 1,
                actor_cpus: float = 1.0) -> Engine:
    """The engine called ``name``: ``local`` uses ``workers`` decoding threads, ``ray`` the other options.

    Raises:
        EngineError: An unknown name, or ``ray`` without the ``allscan[ray]`` extra.
    """
    if name == "local":
        return LocalEngine(workers)
    if name == "ray":
        return RayEngine(address, actors, actor_cpus)
    raise EngineError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
