"""``train-teacher``: fine-tune a cross-encoder on a dataset's own training qrels.

For when no strong reranker exists for a domain: the teacher is trained on the train
split's judgements with BM25 hard negatives, then its scores are cached and distilled.

- Groups: each training query's best judged document plus ``negatives`` documents drawn
  at random from BM25's top ``negatives_from_top`` (judged-relevant ones excluded); see
  :mod:`distill.training.groups`.
- Objective: ``listnet`` (default) is sentence-transformers' ``ListNetLoss`` on the labels,
  the issue's reference recipe: cross-entropy over the group against ``softmax(labels)``, a
  softened one-hot that asks for a finite margin (on SciFact: test nDCG@10 0.699 over BM25's
  top 100, BM25 0.679); ``listwise`` is the same against the one-hot positive (localized
  contrastive estimation); ``pointwise`` is per-document binary cross-entropy, kept for
  comparison: on SciFact it collapsed to the base rate. All are
  :mod:`distill.training.objectives` (the students' ``HardLabels``).
- Validation: a seeded ``valid_fraction`` of the training queries is held out; after
  every epoch the model reranks their BM25 top ``valid_k`` and its nDCG@10 is reported
  next to BM25's own. Training stops when ``patience`` epochs in a row did not improve on
  the best (``epochs`` is the cap), the best epoch is kept, and a warning is logged when it
  does not beat BM25 (a teacher worse than its first stage is not worth distilling; see
  :mod:`teachers.fusion` for a teacher that cannot fall below it).
- Weak supervision (``weak_titles=N``): N documents' titles become queries whose positive
  is the document's own body, with negatives retrieved by the title over the bodies.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import polars as pl

from distill.core.errors import ConfigError
from distill.core.io import atomic_dir
from distill.core.manifest import frame_hash, write_manifest
from distill.core.outputs import check_folder_output
from distill.core.recorded_paths import record_path
from distill.core.schema import CORPUS_SCHEMA, DOCID, QID, QRELS_SCHEMA, QUERIES_SCHEMA, RELEVANCE, SCORE, TEXT, TITLE
from distill.data.beir import Dataset
from distill.data.views import holdout, restrict
from distill.training.config import TrainConfig
from distill.training.groups import Group, GroupConfig, build_groups

log = logging.getLogger(__name__)

KIND = "teacher"
METRIC = "nDCG@10"
# train-teacher's objectives, as distill.training.objectives kinds
OBJECTIVES = {"listnet": "listnet", "listwise": "listwise_ce", "pointwise": "bce"}


QUICK = "quick"  # a field's value for --quick, a smoke run that finishes in minutes on a laptop CPU, in its metadata
_TRAIN = TrainConfig()  # the defaults a teacher shares with the students
_TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}  # their help texts too


@dataclass(frozen=True)
class TeacherTrainSettings:
    """The optimisation settings ``train-teacher`` offers: fields of
    :class:`~distill.training.config.TrainConfig` with a teacher's defaults where a teacher differs from a
    student (epochs, learning rate, batch size, validation share) and TrainConfig's own elsewhere. Like
    :class:`TeacherTrainConfig`'s, a field's metadata holds its help text, which makes it an option of
    ``distill train-teacher`` (:mod:`distill.app.options`), and its --quick value."""

    epochs: float = field(default=2.0, metadata={"help": "Epochs at most.", QUICK: 1.0})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=4, metadata={
        "help": "Queries per batch (each with 1 + negatives documents).", "min": 1})
    max_length: int = field(default=_TRAIN.max_length, metadata={"help": "Tokens per pair.", QUICK: 128})
    valid_fraction: float = field(default=0.1, metadata={"help": "Share of training queries held out for validation."})
    seed: int = field(default=_TRAIN.seed, metadata=_TRAIN_FIELDS["seed"].metadata)
    precision: str = field(default=_TRAIN.precision, metadata=_TRAIN_FIELDS["precision"].metadata)
    dropout: float | None = field(default=_TRAIN.dropout, metadata=_TRAIN_FIELDS["dropout"].metadata)

    def train_config(self, **more: Any) -> TrainConfig:
        """These settings as a TrainConfig, with ``more`` of its fields."""
        return TrainConfig(**asdict(self), **more)


def _teacher_defaults() -> TrainConfig:
    return TeacherTrainSettings().train_config()


@dataclass
class TeacherTrainConfig:
    """What ``train-teacher`` does beyond the optimisation settings in ``train`` (see :class:`TeacherTrainSettings`).

    The fields with a help text are ``distill train-teacher``'s options; :meth:`from_settings` reads
    the options' values, --quick included."""

    objective: Literal["listnet", "listwise", "pointwise"] = field(default="listnet", metadata={"help": (
        "listnet (softmax CE against softmax(labels), as sentence-transformers' ListNetLoss; default) | listwise "
        "(softmax CE against the one-hot positive) | pointwise (BCE).")})
    negatives: int = field(default=7, metadata={"help": "BM25 negatives per query.", QUICK: 3})
    negatives_from_top: int = field(default=30, metadata={"help": "Negatives are drawn from BM25's top N.", QUICK: 10})
    valid_k: int = field(default=30, metadata={"help": "Validation reranks BM25's top k.", QUICK: 10})
    weak_titles: int = field(default=0, metadata={"help": "Add N title->body weak-supervision queries.", "min": 0})
    # stop once validation nDCG@10 has not improved for this many epochs (train.epochs is the cap);
    # None: train all epochs (0 on the command line). A teacher is kept only at its best epoch either way
    patience: int | None = field(default=1, metadata={"help": (
        "Stop once validation nDCG@10 has not improved for N epochs (0: train every epoch); the best epoch is "
        "kept either way."), "min": 0})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model repository's own code."})
    train: TrainConfig = field(default_factory=_teacher_defaults)

    @classmethod
    def from_settings(cls, *, quick: bool = False, resume: bool = False, **settings: Any) -> TeacherTrainConfig:
        """The config of ``train-teacher``'s ``settings``, fields of this class and of
        :class:`TeacherTrainSettings` by name: one left out or None takes the field's default, or its
        --quick value with ``quick``; ``patience=0`` trains every epoch; ``resume`` continues from the
        latest checkpoint in ``<out>.checkpoints``."""
        unknown = set(settings) - {f.name for config in (cls, TeacherTrainSettings) for f in fields(config)
                                   if "help" in f.metadata}
        if unknown:
            raise TypeError(f"unknown train-teacher setting(s): {', '.join(sorted(unknown))}")
        own, train = _chosen(cls, settings, quick), _chosen(TeacherTrainSettings, settings, quick)
        if own.get("patience") == 0:
            own["patience"] = None
        return cls(**own, train=TeacherTrainSettings(**train).train_config(resume_from_checkpoint=resume or None))

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.negatives < 1 or self.negatives_from_top <= self.negatives:
            raise ConfigError(f"need 1 <= negatives < negatives_from_top, got {self.negatives} negatives from "
                              f"the top {self.negatives_from_top}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 epoch (or None), got {self.patience}", field="patience")
        if self.valid_k < 1 or self.weak_titles < 0:
            raise ConfigError(f"need valid_k >= 1 and weak_titles >= 0, got {self.valid_k}, {self.weak_titles}")


def _chosen(config: type, settings: dict[str, Any], quick: bool) -> dict[str, Any]:
    """The values ``settings`` gives ``config``'s fields, or with ``quick`` their --quick values where they
    give none (a field left out keeps its default)."""
    chosen = {}
    for f in fields(config):
        value = settings.get(f.name)
        if value is None and quick:
            value = f.metadata.get(QUICK)
        if value is not None:
            chosen[f.name] = value
    return chosen


def bm25_groups(dataset: Dataset, config: TeacherTrainConfig) -> list[Group]:
    """One group per query with a judged positive: the positive and BM25 negatives."""
    from distill.data.bm25 import bm25_run

    run = bm25_run(dataset, config.negatives_from_top, add_positives=True)
    groups = build_groups(dataset, run.select(QID, DOCID, SCORE),
                          GroupConfig(mode="sampled", n_negatives=config.negatives, seed=config.train.seed))
    return [g for g in groups if g.labels[0] > 0]


def weak_title_dataset(dataset: Dataset, n: int, seed: int) -> Dataset:
    """Titles as queries for their own bodies: a corpus of bodies only (titles would give the
    answer away), one query ``title:<docid>`` per sampled document with a non-empty title and body."""
    usable = dataset.corpus.filter((pl.col(TITLE).str.strip_chars() != "") & (pl.col(TEXT).str.strip_chars() != ""))
    if usable.height == 0:
        raise ConfigError("--weak-titles needs documents with both a title and a body; this corpus has none")
    if n > usable.height:
        log.warning("--weak-titles %d: only %d documents have a title and a body; using all", n, usable.height)
    picked = sorted(random.Random(seed).sample(range(usable.height), min(n, usable.height)))
    chosen = usable[picked]
    qids = [f"title:{d}" for d in chosen[DOCID]]
    bodies = dataset.corpus.select(DOCID, pl.lit("").alias(TITLE), TEXT).filter(pl.col(TEXT).str.strip_chars() != "")
    return Dataset(
        corpus=bodies.cast(CORPUS_SCHEMA),
        queries=pl.DataFrame({QID: qids, TEXT: chosen[TITLE].to_list()}, schema=QUERIES_SCHEMA),
        qrels=pl.DataFrame({QID: qids, DOCID: chosen[DOCID].to_list(), RELEVANCE: [1] * len(qids)},
                           schema=QRELS_SCHEMA),
        name=f"{dataset.name}-titles", split="weak-titles", path=dataset.path,
    )


def __getattr__(name: str) -> Any:
    """``RerankEvaluator`` is defined on first use (PEP 562): its base class imports torch and
    sentence-transformers, which ``distill --help`` must not while it reads this module's configs
    for train-teacher's options."""
    if name == "RerankEvaluator":
        return _rerank_evaluator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _rerank_evaluator_class() -> type:
    from sentence_transformers.base.evaluation import BaseEvaluator

    class RerankEvaluator(BaseEvaluator):
        """A sentence-transformers evaluator: the model reranks a fixed run; metric from ir-measures.

        Logs the model's metric next to the run's own (the first stage, :attr:`baseline`); the
        trainer keeps each value in its log history as ``eval_<metric>``.
        """

        def __init__(self, dataset: Dataset, run: pl.DataFrame, metric: str = METRIC, batch_size: int = 64) -> None:
            from distill.evaluation.metrics import metric_means

            super().__init__()
            self.dataset, self.run, self.primary_metric, self.batch_size = dataset, run, metric, batch_size
            self.pairs = list(zip(dataset.query_texts(run[QID]), dataset.doc_texts(run[DOCID])))
            self.baseline = metric_means(dataset.qrels, run, [metric])[metric]

        def __call__(self, model, output_path: str | None = None, epoch: float = -1,
                     steps: int = -1) -> dict[str, float]:
            from distill.evaluation.metrics import metric_means

            scores = model.predict(self.pairs, batch_size=self.batch_size, show_progress_bar=False)
            value = metric_means(self.dataset.qrels, self.run.with_columns(pl.Series(SCORE, scores, dtype=pl.Float64)),
                             [self.primary_metric])[self.primary_metric]
            log.info("epoch %.2f: validation %s %.4f (BM25 %.4f, %+.4f)", epoch, self.primary_metric, value,
                     self.baseline, value - self.baseline)
            return {self.primary_metric: value}

        def get_config_dict(self) -> dict[str, Any]:
            return {"metric": self.primary_metric, "queries": self.dataset.queries.height}

    RerankEvaluator.__qualname__ = RerankEvaluator.__name__  # as if at module level: teachers.train.RerankEvaluator
    return RerankEvaluator


def train_teacher(dataset: Dataset, out: str | Path, *, init: str,
                  config: TeacherTrainConfig | None = None, overwrite: bool = False) -> Path:
    """Fine-tune a cross-encoder from ``init`` (any Hugging Face path or id; a fresh 1-label
    head is expected) on ``dataset``'s qrels and save it at ``out`` with ``distill.json`` (``out``
    replaces only an earlier teacher, unless ``overwrite``: see :mod:`distill.core.outputs`)."""
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import set_seed

    from distill.data.bm25 import bm25_run
    from distill.training.objectives import HardLabelObjective
    from distill.training.trainer import CrossEncoderGroupLoss, fit

    config = config or TeacherTrainConfig()
    train_cfg = config.train
    out = Path(out)
    check_folder_output(out, KIND, overwrite=overwrite)  # before training, not after
    valid_qids = holdout(dataset.queries[QID].to_list(), train_cfg.valid_fraction, train_cfg.seed)
    train_ds = restrict(dataset, set(dataset.queries[QID]) - valid_qids)
    groups = bm25_groups(train_ds, config)
    if config.weak_titles:
        weak = bm25_groups(weak_title_dataset(dataset, config.weak_titles, train_cfg.seed), config)
        log.info("weak supervision: %d title queries", len(weak))
        groups += weak
    if not groups:
        raise ConfigError(f"no training query of split {dataset.split!r} has a judged-relevant document")
    evaluator = None
    if valid_qids:
        valid_ds = restrict(dataset, valid_qids)
        evaluator = _rerank_evaluator_class()(valid_ds, bm25_run(valid_ds, config.valid_k))
    log.info("training the teacher on %d groups (%s), validating on %d queries", len(groups), config.objective,
             len(valid_qids))
    set_seed(train_cfg.seed)
    model = CrossEncoder(init, num_labels=1, max_length=train_cfg.max_length,
                         trust_remote_code=config.trust_remote_code)
    _note_new_head(model, init)
    loss = HardLabelObjective(OBJECTIVES[config.objective])
    fitted = fit(model, CrossEncoderGroupLoss(model, loss), groups, [], train_cfg, train_cfg.checkpoints_for(out),
                 evaluator=evaluator, patience=config.patience)
    validation = summarize_validation(fitted.history, evaluator.baseline if evaluator else None)
    with atomic_dir(out, kind=KIND, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp))
        write_manifest(tmp, KIND, {**asdict(config), "init": init}, loss=loss.get_config_dict(),
                       validation=validation, precision=fitted.precision.to_dict(),
                       data={"dataset": dataset.name, "split": dataset.split,
                             **(record_path(dataset.path, out) if dataset.path else {}),
                             "qrels_hash": frame_hash(dataset.qrels.sort([QID, DOCID])),
                             "train_groups": len(groups), "valid_queries": len(valid_qids)})
    log.info("saved the teacher to %s", out)
    return out


def summarize_validation(history: list[dict[str, Any]], bm25: float | None) -> dict[str, Any] | None:
    """Validation nDCG@10 per evaluation from the trainer's log ``history`` (which a resumed run
    carries over from its checkpoint), BM25's (``bm25``), and a loud warning when the best
    does not beat BM25."""
    if bm25 is None:
        log.warning("no validation queries held out: the teacher was not compared with BM25")
        return None
    key = f"eval_{METRIC}"
    epochs = [{"epoch": h["epoch"], "step": h["step"], METRIC: h[key]} for h in history if key in h]
    best = max((e[METRIC] for e in epochs), default=float("nan"))
    beats = best > bm25
    if not beats:
        log.warning("the trained teacher does NOT beat BM25 on the validation queries (best %s %.4f vs BM25 "
                    "%.4f): distilling it would teach students a worse ranking; train longer, add data "
                    "(--weak-titles) or start from a stronger model", METRIC, best, bm25)
    return {"metric": METRIC, "bm25": bm25, "epochs": epochs, "best": best, "beats_bm25": beats}


def _note_new_head(model: Any, init: str) -> None:
    """Say in one line that a backbone got a fresh classification head: expected when a teacher is
    trained from an encoder, and what transformers' load report (hidden unless --verbose) lists as MISSING."""
    from teachers.base import is_local
    from teachers.cross_encoder import untrained_head

    if is_local(init) and untrained_head(model.model, init):
        log.info("%s has no classification head yet: a new one is trained with the teacher", Path(init).name)
