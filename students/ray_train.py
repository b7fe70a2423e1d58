"""A neural student trained on a Ray cluster: Ray Train's ``TorchTrainer`` runs the training in N workers.

``distill train-student --engine ray --num-workers N`` hands the same training function torchrun runs
(``train-student`` itself, with the local engine) to Ray Train, which starts N workers (Ray actors),
initialises a PyTorch process group among them (gloo on CPUs, NCCL with GPUs, each worker on its own
GPU) and calls the function in each. From there on it is data-parallel training as under torchrun
(:mod:`distill.training.distributed` takes the rank and world size from the group Ray Train made):
the same sharding, global batch and learning rate, and rank 0 writes ``--out``, its ``distill.json``,
the rounds and the checkpoints (docs/distributed.md). Every worker reads the cache, the data and the
initial model at the paths given, and rank 0 writes ``--out`` where it runs: on several machines
these must be one shared folder.

Ray Train keeps a record of the run (its storage folder, ``RunConfig.storage_path``): here
``<out>.ray/``, next to ``--out`` and its ``.checkpoints``/``.rounds`` folders, never the current
folder or ``~/ray_results``. It holds no model (no checkpoint is reported to Ray: resuming is
``--resume`` from ``<out>.checkpoints/``, as under torchrun).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from distill.core.errors import ConfigError, DistillError

T = TypeVar("T")
log = logging.getLogger(__name__)

RUN_NAME = "train-student"  # Ray Train's name of the run, a folder in its storage folder


@dataclass
class RayTrainConfig:
    """Where and on how many workers a student trains on Ray.

    ``address`` None starts a local Ray with this machine's CPUs and GPUs (shut down at the end); "auto"
    joins the cluster this machine belongs to (``ray start``); "HOST:PORT" a given head node. Each worker
    reserves ``cpus_per_worker`` CPUs (torch uses as many threads) and ``gpus_per_worker`` GPUs: 0 (CPU
    workers, gloo) or 1 (a GPU each, NCCL): DDP trains one device per process, so more GPUs are more
    workers, and NCCL refuses two ranks on one GPU.
    """

    address: str | None = None
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"num_workers must be at least 1, got {self.num_workers}", field="num-workers")
        if self.gpus_per_worker not in (0, 1):
            raise ConfigError(f"gpus_per_worker must be 0 or 1 (one device per DDP process; more GPUs: more "
                              f"workers), got {self.gpus_per_worker}", field="gpus-per-worker")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}",
                              field="cpus-per-worker")


def storage_folder(out: Path) -> Path:
    """Ray Train's storage folder for the student at ``out``: ``<out>.ray/``."""
    return out.with_name(out.name + ".ray")


def train_on_ray(work: Callable[[], T], config: RayTrainConfig, out: Path) -> T:
    """``work()`` run in each of ``config.num_workers`` Ray Train workers joined in one process group;
    rank 0's return value.

    ``work`` is pickled to the workers (a module-level function, or a ``functools.partial`` of one, with
    picklable arguments): it trains and, on rank 0, writes the student at ``out``. The workers log as this
    process does, ranks other than 0 their errors only. A worker's :class:`DistillError` (a bad input) is
    raised here as it is; other failures as a RuntimeError naming the rank and its error.
    """
    from ray.train import Result, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not hasattr(Result, "return_value"):  # rank 0's StudentResult comes back as the run's return value
        raise ConfigError("this Ray Train returns no result from its workers: --engine ray needs Ray Train V2 "
                          "with Result.return_value (ray 2.60 has it; RAY_TRAIN_V2_ENABLED unset or 1)", field="engine")
    resources = {"CPU": config.cpus_per_worker, **({"GPU": config.gpus_per_worker} if config.gpus_per_worker else {})}
    storage = storage_folder(Path(out)).resolve()
    with _ray_session(config.address):
        trainer = TorchTrainer(
            _worker, train_loop_config={"work": work, "logging": _logging_state()},
            scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=bool(config.gpus_per_worker),
                                         resources_per_worker=resources),
            run_config=RunConfig(name=RUN_NAME, storage_path=str(storage)))
        log.info("training on Ray: %d workers (%s each); Ray Train's record in %s", config.num_workers,
                 ", ".join(f"{v:g} {k}" for k, v in resources.items()), storage)
        try:
            result = trainer.fit()
        except Exception as err:  # Ray's errors, turned into the failed worker's own
            raise _worker_error(err) from err
    return result.return_value


def _worker(settings: dict[str, Any]) -> Any:
    """One Ray Train worker: logging as the driver's, then the work (its result returned on rank 0)."""
    from distill.training.distributed import quiet_other_ranks

    _log_alike(settings["logging"])
    quiet_other_ranks()
    return settings["work"]()


def _logging_state() -> dict[str, Any]:
    """How this process logs, for the workers to log alike: the root logger's level and its handlers' filters
    (distill's command line lets other libraries' records through only with --verbose), and the levels set on
    named loggers."""
    root = logging.getLogger()
    levels = {name: logger.level for name, logger in root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET}
    return {"level": root.level, "levels": levels, "filters": [f for h in root.handlers for f in h.filters]}


def _log_alike(state: dict[str, Any]) -> None:
    """Log as :func:`_logging_state` describes, plain lines on stderr (which Ray shows on the driver's
    console, each prefixed with its worker)."""
    handler = logging.StreamHandler()
    for found in state["filters"]:
        handler.addFilter(found)
    logging.basicConfig(level=state["level"], format="%(message)s", handlers=[handler], force=True)
    for name, level in state["levels"].items():
        logging.getLogger(name).setLevel(level)


def _worker_error(err: Exception) -> Exception:
    """The error to raise for a failed Ray Train run: the lowest failing rank's own DistillError when it
    is one (a bad input, exit 2 on the command line), else a RuntimeError with that rank's last line."""
    failures = getattr(err, "worker_failures", None) or {}
    if not failures:
        return RuntimeError(f"Ray Train failed: {_last_line(err)}")
    first = min(failures)  # Ray Train's WorkerGroupError: each failed rank's own exception
    cause = failures[first]
    if isinstance(cause, DistillError):
        return cause
    return RuntimeError(f"Ray Train worker {first} failed: {_last_line(cause)}")


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


@contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """Ray connected (or started locally) for the block; one already initialised is used and kept.

    Workers' output reaches this console (rank 0's messages; the other ranks log errors only); Ray's own
    logs only when third-party logs are wanted (``--verbose``).
    """
    chatty = logging.getLogger("ray").isEnabledFor(logging.INFO)  # read before ray's import sets it to INFO
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, include_dashboard=False, logging_level=logging.INFO if chatty else logging.ERROR)
    try:
        yield
    finally:
        if started:
            ray.shutdown()
