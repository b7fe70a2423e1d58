"""The ``ray`` engine of :func:`teachers.scoring.score_teacher`: a teacher's missing pairs scored
by a pool of Ray workers, into the same cache as the single-process engine.

The driver (the process that runs ``score-teacher``) plans the pairs the cache lacks as
numbered batches of ``flush_pairs`` pairs, longest texts first, and hands them to Ray Data
with their texts, so workers need the model but no shared filesystem. Each worker is a Ray
actor that loads the teacher once (same class and options as the driver's, in the precision
the cache recorded: :meth:`~teachers.base.Teacher.use_precision`, never measured again) and
refuses to score if its fingerprint differs from the cache's (other weights on that node).
Scored batches stream back to the driver, the only process that writes the cache: one shard
per batch, named by its keys (:func:`distill.cache.store.shard_name`).

Exactly once: Ray restarts a worker that dies and retries its batch; a batch that arrives
twice is written once (the driver remembers the batches it wrote, and a shard's name is its
keys). When Ray gives a batch up (an actor killed for good, a node lost), the driver runs
another pass over the pairs still missing, up to :data:`MAX_PASSES`. A driver that is killed
loses the batches in flight; rerunning it scores only the pairs no shard holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import polars as pl

from distill.cache.scoring import ScoreStats, _progress, missing_pairs, with_texts_by_length
from distill.cache.store import TeacherCache
from distill.core.errors import CacheMismatchError, ConfigError
from distill.core.schema import DOCID, QID, SCORE
from distill.inference.batching import default_max_tokens
from teachers.base import Teacher

if TYPE_CHECKING:
    import pyarrow as pa

    from distill.data.beir import Dataset

log = logging.getLogger(__name__)

BATCH = "batch"  # the driver's number of a batch, carried through the workers
MAX_PASSES = 3  # passes over the missing pairs when Ray gives batches up


@dataclass
class RayConfig:
    """Where and on how many workers the ``ray`` engine scores.

    ``address`` None starts a local Ray with this machine's CPUs and GPUs; "auto" joins the
    cluster this machine belongs to (``ray start``); "HOST:PORT" a given head node. Without
    GPUs and ``cpus_per_worker``, each worker takes the most CPUs that still lets all of them
    fit on the cluster's nodes (one machine: an equal share), and uses as many torch threads.
    ``start_timeout_s`` bounds the wait for the workers of a pass to load the teacher: a worker
    that cannot (the model missing on its node) fails the run at once, and a cluster that never
    finds the resources for them fails it after that many seconds instead of waiting forever.
    """

    address: str | None = None
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    start_timeout_s: int = 600

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"num_workers must be at least 1, got {self.num_workers}", field="num_workers")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}", field="gpus_per_worker")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ConfigError(f"cpus_per_worker must be positive, got {self.cpus_per_worker}",
                              field="cpus_per_worker")
        if self.start_timeout_s < 1:
            raise ConfigError(f"start_timeout_s must be at least 1, got {self.start_timeout_s}",
                              field="start_timeout_s")


def score_on_ray(
    teacher: Teacher,
    dataset: Dataset,
    run: pl.DataFrame,
    cache: TeacherCache,
    *,
    shard: tuple[int, int] | None = None,
    flush_pairs: int = 1024,
    show_progress: bool = True,
    **options: Any,
) -> ScoreStats:
    """Score the pairs of ``run`` the cache lacks on Ray workers; ``options`` are :class:`RayConfig`'s.

    ``teacher`` is the driver's teacher, precision settled; workers build their own copy of it.
    Returns the same counts as the single-process engine. Ray starts only when pairs are missing.
    """
    unknown = sorted(set(options) - {f.name for f in fields(RayConfig)})
    if unknown:
        raise ConfigError(f"unknown ray engine option(s) {', '.join(unknown)}", field=unknown[0])
    config = RayConfig(**options)
    start = time.perf_counter()
    todo, stats = missing_pairs(run, cache, shard)
    if todo.height == 0:
        return stats
    expected = cache.manifest["teacher"]
    if teacher.fingerprint() != expected:
        raise CacheMismatchError("the teacher differs from the cache's; open the cache for this teacher first",
                                 path=cache.folder, field="teacher")
    worker = {"fingerprint": expected, "options": _worker_options(teacher)}
    with _ray_session(config.address), _progress(show_progress, todo.height) as advance:

        def written(pairs: int) -> None:  # counted as written, also in a pass that fails later
            stats.scored += pairs
            advance(pairs)

        for attempt in range(1, MAX_PASSES + 1):
            left = cache.missing(todo)
            if not left.height:
                break
            try:
                _one_pass(worker, config, with_texts_by_length(dataset, left), cache, flush_pairs, written)
            except _start_timeout_error() as err:
                raise RuntimeError(f"the Ray workers did not start within {config.start_timeout_s}s: the cluster "
                                   f"lacks the resources for {config.num_workers} worker(s); lower --num-workers "
                                   "or add nodes") from err
            except _lost_worker_errors() as err:
                if attempt == MAX_PASSES or getattr(err, "actor_init_failed", False):
                    raise _explain(err) from err
                log.warning("Ray gave up on a batch (%s); scoring the pairs still missing again",
                            type(err).__name__)
    missing = cache.missing(todo).height
    if missing:
        raise RuntimeError(f"{missing} pairs are still unscored after {MAX_PASSES} passes; rerun to resume")
    cache.compact()
    stats.seconds = time.perf_counter() - start
    log.info("scored %d pairs on %d Ray worker(s) in %.1fs (%.1f pairs/s)", stats.scored, config.num_workers,
             stats.seconds, stats.pairs_per_s)
    return stats


def _worker_options(teacher: Teacher) -> dict[str, Any]:
    """What a worker's teacher takes from the driver's beyond the fingerprint: trust_remote_code,
    and the token budget when it was set rather than the driver device's default (each worker's
    device has its own default)."""
    budget = teacher.max_tokens_per_batch
    return {"trust_remote_code": teacher.trust_remote_code,
            "max_tokens_per_batch": None if budget == default_max_tokens(teacher.device) else budget}


class _Scorer:
    """A Ray actor holding one teacher, loaded once on the worker's own device in the cache's
    precision (refusing other weights than the cache's); scores batches of (query, doc) pairs."""

    def __init__(self, fingerprint: dict[str, Any], options: dict[str, Any], threads: int | None,
                 registry: Any = None) -> None:
        import ray

        from teachers.loading import teacher_from_fingerprint

        if registry is not None:  # first: a worker whose teacher fails to load is ended too
            registry.add.remote(ray.get_runtime_context().current_actor)
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.teacher = teacher_from_fingerprint(fingerprint, **options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        scores = self.teacher.score(batch["query"].to_pylist(), batch["doc"].to_pylist())
        return pa.table({BATCH: batch[BATCH], QID: batch[QID], DOCID: batch[DOCID], SCORE: pa.array(scores)})


def _one_pass(
    worker: dict[str, Any], config: RayConfig, todo: pl.DataFrame, cache: TeacherCache, flush_pairs: int,
    written: Callable[[int], None],
) -> None:
    """Score ``todo`` (with texts, in order) once through an actor pool, calling ``written(n)``
    after each batch's shard is in the cache."""
    import ray
    import ray.data

    todo = todo.with_row_index(BATCH).with_columns(pl.col(BATCH) // flush_pairs)
    sizes = dict(todo.group_by(BATCH).len().iter_rows())
    blocks = [part.to_arrow(compat_level=pl.CompatLevel.oldest())
              for part in todo.partition_by(BATCH, maintain_order=True)]
    cpus = config.cpus_per_worker or _default_cpus(config)
    registry = ray.remote(_PoolRegistry).options(num_cpus=0).remote()
    scored = ray.data.from_arrow(blocks).map_batches(
        _Scorer, fn_constructor_kwargs={**worker, "threads": None if config.gpus_per_worker else int(cpus),
                                        "registry": registry},
        compute=ray.data.ActorPoolStrategy(size=config.num_workers), batch_size=None, batch_format="pyarrow",
        num_cpus=cpus, num_gpus=config.gpus_per_worker or None,
    )
    # Ray Data starts pool actors in the background and, by default, waits for them without
    # bound: a worker whose constructor fails after a previous pool's actors died can leave the
    # pass waiting forever. Waiting for the pool up front fails fast on a constructor error and
    # after start_timeout_s on missing resources.
    scored.context.wait_for_min_actors_s = config.start_timeout_s
    pending: dict[int, list[pl.DataFrame]] = {}
    done: set[int] = set()
    try:
        for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            for (number,), part in pl.from_arrow(block).partition_by(BATCH, as_dict=True).items():
                if number in done:
                    continue  # a retried task's second copy
                pending.setdefault(number, []).append(part)
                rows = pl.concat(pending[number]).unique([QID, DOCID], maintain_order=True)
                if rows.height == sizes[number]:
                    cache.append(rows.select(QID, DOCID, SCORE))
                    done.add(number)
                    del pending[number]
                    written(rows.height)
    finally:
        _end_pool(registry)


class _PoolRegistry:
    """The actor handles of one pass's pool: each worker adds itself when it starts (again after a
    restart), so the driver can end them all when the pass is over.

    Ray Data leaves a finished or failed pool's actors to reference counting, and after a pass that
    lost a worker to ``ray.kill`` the surviving worker stayed alive, holding its CPUs: on 2 CPUs the
    next pass's pool could not start (reproduced in 2 of 3 runs of the killed-worker test). Ray Data
    has no public handle on its pool's actors, hence this registry."""

    def __init__(self) -> None:
        self.actors: list[Any] = []

    def add(self, actor: Any) -> None:
        self.actors.append(actor)

    def members(self) -> list[Any]:
        return self.actors


def _end_pool(registry: Any) -> None:
    """``ray.kill`` the registered workers of a pass, then the registry itself."""
    import ray

    for actor in ray.get(registry.members.remote()):
        ray.kill(actor)
    ray.kill(registry)


def _default_cpus(config: RayConfig) -> float:
    """A worker's CPUs: one beside a GPU, else the most that still lets all the workers fit on
    the cluster's nodes (on one machine: an equal share of its CPUs)."""
    import ray

    if config.gpus_per_worker:
        return 1.0
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]]
    cpus = max(1, int(sum(nodes) // config.num_workers))
    while cpus > 1 and sum(int(n // cpus) for n in nodes) < config.num_workers:
        cpus -= 1
    return float(cpus)


@contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """Ray connected (or started locally) for the block; one already initialised is used and kept."""
    import os

    chatty = logging.getLogger("ray").isEnabledFor(logging.INFO)  # read before ray's import sets it to INFO
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, include_dashboard=False, log_to_driver=chatty,
                 logging_level=logging.INFO if chatty else logging.ERROR)
    _quiet_ray_data(chatty)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _quiet_ray_data(chatty: bool) -> None:
    """Ray Data's own progress bars and execution logs only when third-party logs are wanted."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = chatty
    context.print_on_execution_start = chatty
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.INFO if chatty else logging.ERROR)


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for work lost with a worker or node (not the teacher's own errors)."""
    from ray import exceptions

    return (exceptions.RayActorError, exceptions.WorkerCrashedError, exceptions.NodeDiedError,
            exceptions.ObjectLostError)


def _start_timeout_error() -> type[BaseException]:
    from ray import exceptions

    return exceptions.GetTimeoutError


def _explain(err: BaseException) -> Exception:
    """One line saying why: a worker that could not build the teacher (its error's last line,
    e.g. the model missing on that node) is the user's to fix; workers lost again and again are not."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    if getattr(err, "actor_init_failed", False):
        return ConfigError(f"a Ray worker could not build the teacher: {last}")
    return RuntimeError(f"Ray workers kept failing ({MAX_PASSES} passes): {last}")
