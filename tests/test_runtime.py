"""The cascade runtime: one query's documents ranked in process, as the offline cascade ranks them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from distill.cascade.model import Cascade, StageCost, stage
from distill.cascade.runtime import RankResult, StageReport
from distill.core.errors import ConfigError, InputError
from distill.core.schema import CORPUS_SCHEMA, DOCID, QID, QRELS_SCHEMA, QUERIES_SCHEMA, SCORE, TEXT
from distill.data.beir import Dataset
from distill.rankers.base import BaseRanker
from distill.rankers.loading import RunRanker


class ByText(BaseRanker):
    """A ranker scoring a document by a seeded hash of its query and text: no state, any corpus."""

    def __init__(self, name: str, seed: int) -> None:
        self.name, self.seed = name, seed

    def rerank(self, dataset: Dataset, run: pl.DataFrame) -> pl.DataFrame:
        queries = dataset.query_texts(run[QID])
        docs = dataset.doc_texts(run[DOCID])
        scores = [float(np.random.default_rng([self.seed, *map(ord, q + "|" + d)]).integers(0, 5))
                  for q, d in zip(queries, docs, strict=True)]  # few values: ties go by id
        return run.select(QID, DOCID).with_columns(pl.Series(SCORE, scores, dtype=pl.Float64))

    def get_config_dict(self) -> dict:
        return {"by_text": self.seed}


def toy() -> tuple[Dataset, pl.DataFrame]:
    docs = {f"d{i}": f"document {i} about {'cats' if i % 2 else 'dogs'} and {i * 7 % 11}" for i in range(12)}
    corpus = pl.DataFrame({DOCID: list(docs), "title": "", TEXT: list(docs.values())}, schema=CORPUS_SCHEMA)
    queries = pl.DataFrame({QID: ["a", "b"], TEXT: ["cats 3", "dogs 5"]}, schema=QUERIES_SCHEMA)
    run = pl.DataFrame({QID: ["a"] * 12 + ["b"] * 9, DOCID: [f"d{i}" for i in [*range(12), *range(9)]],
                        SCORE: [float(x) for x in [*range(12, 0, -1), 3, 3, 2, 9, 1, 0, 5, 5, 4]]})
    return Dataset(corpus, queries, pl.DataFrame(schema=QRELS_SCHEMA)), run


def toy_cascade() -> Cascade:
    return (stage("bm25", RunRanker(), "bm25") % 8
            >> stage("a", ByText("a", 1)) % 4 >> stage("b", ByText("b", 2)))


def offline_order(cascade: Cascade, dataset: Dataset, run: pl.DataFrame, qid: str) -> list[str]:
    ranked = cascade.rerank(dataset, run.filter(pl.col(QID) == qid), per_query=True)
    return ranked.sort(SCORE, descending=True)[DOCID].to_list()


@pytest.mark.parametrize("qid", ["a", "b"])
def test_rank_equals_the_offline_cascade(qid):
    cascade, (dataset, run) = toy_cascade(), toy()
    part = run.filter(pl.col(QID) == qid)
    texts = dict(zip(dataset.corpus[DOCID], dataset.corpus[TEXT]))
    docs = [{"id": d, "text": texts[d], "score": s} for d, s in zip(part[DOCID], part[SCORE])]
    result = cascade.rank(dataset.query_texts([qid])[0], docs)
    assert isinstance(result, RankResult)
    assert result.ids == offline_order(cascade, dataset, run, qid)
    assert result.scores == [float(part.height - i) for i in range(part.height)]
    assert [(s.name, s.ran, s.n_in, s.n_out) for s in result.stages] == [
        ("bm25", True, part.height, 8), ("a", True, 8, 4), ("b", True, 4, 4)]


def test_plain_texts_take_their_input_order_as_first_stage():
    cascade, (dataset, _) = toy_cascade(), toy()
    texts = dataset.corpus[TEXT].to_list()
    result = cascade.rank("cats 3", texts, top_k=5)
    # the input order as first-stage scores equals a run scoring n, n-1, ... with ids "0", "1", ...
    ids = [str(i) for i in range(len(texts))]
    corpus = pl.DataFrame({DOCID: ids, "title": "", TEXT: texts}, schema=CORPUS_SCHEMA)
    same = Dataset(corpus, pl.DataFrame({QID: ["a"], TEXT: ["cats 3"]}, schema=QUERIES_SCHEMA),
                   pl.DataFrame(schema=QRELS_SCHEMA))
    as_run = pl.DataFrame({QID: "a", DOCID: ids, SCORE: [float(len(ids) - i) for i in range(len(ids))]})
    assert result.ids == offline_order(cascade, same, as_run, "a")[:5]
    assert len(result.scores) == 5


def test_a_short_deadline_skips_the_expensive_stages():
    cascade = toy_cascade()
    cascade.costs = {"bm25": StageCost(), "a": StageCost(0.0, 0.01), "b": StageCost(50.0, 1.0)}
    texts = toy()[0].corpus[TEXT].to_list()
    assert cascade.estimate_ms(12) == [0.0, pytest.approx(0.08), pytest.approx(54.0)]
    result = cascade.rank("cats", texts, deadline_ms=20.0)
    assert [s.ran for s in result.stages] == [True, True, False]
    skipped = result.stages[2]
    assert skipped == StageReport("b", False, 0.0, 4, 4, skipped.skipped) and "deadline" in skipped.skipped
    full = cascade.rank("cats", texts)
    assert all(s.ran for s in full.stages)
    # the skipped stage keeps the order of the stage before it
    assert result.ids[:4] == sorted(full.ids[:4], key=result.ids.index)
    # a deadline already spent: only the first stage, whose order is the input order
    late = cascade.rank("cats", texts, deadline_ms=1.0, started=0.0)
    assert [s.ran for s in late.stages] == [True, False, False]
    assert late.stages[2].skipped.startswith("after skipped stage")
    assert late.ids == [str(i) for i in range(12)]


@pytest.mark.parametrize(("documents", "field"), [
    ("text", "documents"),
    ([1], "documents[0]"),
    ([{"id": "x"}], "documents[0].text"),
    ([{"id": "x", "text": ""}], "documents[0].text"),
    ([{"id": "x", "text": 5}], "documents[0].text"),
    ([{"id": True, "text": "t"}], "documents[0].id"),
    ([{"id": "x", "text": "t"}, {"id": "x", "text": "u"}], "documents[1].id"),
    ([{"id": "x", "text": "t", "score": 1}, {"id": "y", "text": "u"}], "documents[1].score"),
    ([{"id": "x", "text": "t", "score": float("nan")}], "documents[0].score"),
    ([{"id": "x", "text": "t", "score": "1"}], "documents[0].score"),
    ([{"id": "x", "text": "t", "body": "u"}], "documents[0]"),
])
def test_bad_documents_name_their_field(documents, field):
    with pytest.raises(InputError) as err:
        toy_cascade().rank("q", documents)
    assert err.value.field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"query": ""}, "query"), ({"query": 3}, "query"), ({"deadline_ms": 0}, "deadline_ms"),
    ({"deadline_ms": float("inf")}, "deadline_ms"), ({"top_k": 0}, "top_k"), ({"top_k": 1.5}, "top_k"),
])
def test_bad_requests_name_their_field(kwargs, field):
    args = {"query": "q", "documents": ["a b"], **kwargs}
    with pytest.raises(InputError) as err:
        toy_cascade().rank(**args)
    assert err.value.field == field


def test_no_documents_give_an_empty_ranking():
    result = toy_cascade().rank("q", [])
    assert result.ids == [] and result.scores == [] and all(s.n_in == 0 for s in result.stages)


def test_documents_known_by_id_come_from_the_corpus(tmp_path):
    dataset, run = toy()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                              for d, t in zip(dataset.corpus[DOCID], dataset.corpus[TEXT])))
    spec = tmp_path / "cascade.json"
    spec.write_text(json.dumps({"format": "distill-cascade/1", "stages": [
        {"name": "bm25", "ranker": "bm25", "cutoff": None}]}))
    cascade = Cascade.load(spec, corpus=corpus)
    by_id = cascade.rank("q", [{"id": "d3", "score": 1.0}, {"id": "d5", "score": 2.0}])
    assert by_id.ids == ["d5", "d3"]
    with pytest.raises(InputError, match="corpus has no document"):
        cascade.rank("q", [{"id": "nope"}])


def test_threads_rank_as_one_thread_does():
    cascade, (dataset, _) = toy_cascade(), toy()
    texts = dataset.corpus[TEXT].to_list()
    expected = {q: cascade.rank(q, texts).ids for q in ("cats", "dogs 5", "about 3")}
    results: list[tuple[str, list[str]]] = []

    def work(query: str) -> None:
        for _ in range(20):
            results.append((query, cascade.rank(query, texts).ids))

    threads = [threading.Thread(target=work, args=(q,)) for q in expected for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 120 and all(ids == expected[q] for q, ids in results)


def test_a_run_file_stage_cannot_serve(tmp_path):
    run_file = tmp_path / "run.trec"
    run_file.write_text("q 0 d 1 1.0 x\n")
    spec = tmp_path / "cascade.json"
    spec.write_text(json.dumps({"format": "distill-cascade/1", "stages": [
        {"name": "bm25", "ranker": "bm25", "cutoff": 5}, {"name": "fixed", "ranker": str(run_file), "cutoff": None}]}))
    with pytest.raises(ConfigError, match="run file"):
        Cascade.load(spec)


def test_the_contract_is_importable_from_where_the_server_takes_it():
    assert Path(Cascade.load.__code__.co_filename).relative_to(Path(__file__).parents[1]).as_posix() \
        == "distill/cascade/model.py"
    assert {f for f in StageReport.__dataclass_fields__} == {"name", "ran", "ms", "n_in", "n_out", "skipped"}


# -- real models: the runtime against `distill cascade run` ------------------------------------

@pytest.fixture(scope="module")
def models(tiny_beir, tiny_bi_encoder, tmp_path_factory) -> dict[str, Path]:
    """A LightGBM student (with first-stage features) trained on BM25's order, the tiny bi-encoder,
    the test split's BM25 candidates as a run file and a spec ``bm25 % 15 >> lightgbm % 8 >> bi``."""
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.data.runs import write_run
    from students.lightgbm import LightGBMConfig, train_lightgbm_student

    folder = tmp_path_factory.mktemp("runtime")
    train = load_beir(tiny_beir, "train")
    train_run = bm25_run(train, 20)
    teacher = train_run.select(QID, DOCID, (pl.col(SCORE) * -1.0 + pl.col(DOCID).str.len_chars()).cast(pl.Float32))
    config = LightGBMConfig(n_estimators=20, min_data_in_leaf=5, num_leaves=8, valid_fraction=0.25)
    lightgbm = train_lightgbm_student(train, train_run, teacher, folder / "lgbm", config)
    run_file = folder / "test.trec"
    write_run(bm25_run(load_beir(tiny_beir, "test"), 20), run_file, tag="bm25")
    spec = folder / "cascade.json"
    spec.write_text(json.dumps({"format": "distill-cascade/1", "stages": [
        {"name": "bm25", "ranker": "bm25", "cutoff": 15}, {"name": "lightgbm", "ranker": str(lightgbm), "cutoff": 8},
        {"name": "bi", "ranker": str(tiny_bi_encoder), "cutoff": None}]}))
    return {"spec": spec, "run": run_file, "lightgbm": lightgbm, "bi": tiny_bi_encoder}


def offline_rankings(tiny_beir, models, tmp_path, capsys) -> dict[str, list[str]]:
    """Each query's ranking as `distill cascade run --no-budget` writes it."""
    import tiny

    from distill.data.runs import read_run

    out = tmp_path / "cascade.trec"
    code, _, err = tiny.run_cli(["cascade", "run", models["spec"], "--data", tiny_beir, "--split", "test",
                                 "--run", models["run"], "--out", out, "--no-budget"], capsys)
    assert code == 0, err
    ranked = read_run(out).sort([QID, SCORE], descending=[False, True])
    return {part[QID][0]: part[DOCID].to_list() for part in ranked.partition_by(QID, maintain_order=True)}


def test_runtime_ranks_as_distill_cascade_run(tiny_beir, models, tmp_path, capsys):
    from distill.data.beir import load_beir
    from distill.data.runs import read_run
    from students.embedding_store import STORE_DIR

    expected = offline_rankings(tiny_beir, models, tmp_path, capsys)
    dataset = load_beir(tiny_beir, "test")
    texts = dict(zip(dataset.queries[QID], dataset.queries[TEXT], strict=True))
    corpus = {d: (t, x) for d, t, x in dataset.corpus.select(DOCID, "title", TEXT).iter_rows()}
    run = read_run(models["run"])
    by_id = Cascade.load(models["spec"], corpus=tiny_beir)  # documents by id: stored index and embeddings
    assert list((Path(models["bi"]) / STORE_DIR).glob("*.npy"))
    as_text = Cascade.load(models["spec"])  # no corpus: every document analysed and embedded now
    for part in run.partition_by(QID, maintain_order=True):
        qid = part[QID][0]
        ids, scores = part[DOCID].to_list(), part[SCORE].to_list()
        result = by_id.rank(texts[qid], [{"id": d, "score": s} for d, s in zip(ids, scores, strict=True)])
        assert result.ids == expected[qid], qid
        assert [s.n_out for s in result.stages] == [15, 8, 8]
        sent = as_text.rank(texts[qid], [{"id": d, "title": corpus[d][0], "text": corpus[d][1], "score": s}
                                         for d, s in zip(ids, scores, strict=True)])
        assert sent.ids[8:] == expected[qid][8:]  # LightGBM's cut: exact on analysed texts
        assert set(sent.ids[:8]) == set(expected[qid][:8])


def test_lightgbm_cascade_loads_without_torch(models, tmp_path):
    """Only the LightGBM stage: loading and ranking import no torch (run in a fresh interpreter)."""
    import subprocess
    import sys

    spec = tmp_path / "lgbm.json"
    spec.write_text(json.dumps({"format": "distill-cascade/1", "stages": [
        {"name": "bm25", "ranker": "bm25", "cutoff": 10}, {"name": "lightgbm", "ranker": str(models["lightgbm"]),
                                                            "cutoff": None}]}))
    code = ("import sys; from distill.cascade.model import Cascade; c = Cascade.load(sys.argv[1]); "
            "r = c.rank('cats and dogs', [{'id': 'a', 'text': 'cats', 'score': 1.0}, "
            "{'id': 'b', 'text': 'dogs and cats', 'score': 0.5}]); "
            "assert sorted(r.ids) == ['a', 'b']; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    done = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_real_stages_rank_alike_from_many_threads(tiny_beir, models):
    from distill.data.runs import read_run

    cascade = Cascade.load(models["spec"], corpus=tiny_beir)
    requests = [[{"id": d, "score": s} for d, s in zip(part[DOCID], part[SCORE], strict=True)]
                for part in read_run(models["run"]).partition_by(QID, maintain_order=True)][:4]
    expected = [cascade.rank("cats and dogs", docs).ids for docs in requests]
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                assert cascade.rank("cats and dogs", requests[i]).ids == expected[i]
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def test_a_restart_reads_the_stored_embeddings(tiny_beir, models, monkeypatch):
    import students.embedding_store as store

    first = Cascade.load(models["spec"], corpus=tiny_beir)  # stores them, if no test did before
    request = [{"id": d, "score": float(-i)} for i, d in enumerate(first._runtime.corpus.ids[:20])]
    expected = first.rank("cats", request)
    real_encode = store.encode

    def encode_few(ranker, texts):  # a query and a request's new documents, never the corpus
        assert len(texts) < 10, f"embedded {len(texts)} texts again"
        return real_encode(ranker, texts)

    monkeypatch.setattr(store, "encode", encode_few)
    again = Cascade.load(models["spec"], corpus=tiny_beir)
    assert again.rank("cats", request).ids == expected.ids


# -- costs by length, model faults ---------------------------------------------------------------

def test_stages_are_costed_by_the_length_of_their_documents():
    """``b`` costs 1 s per reference pair and reads documents whole: three short documents (3 s)
    fit a 10 s deadline, three of 20,000 characters (~20 reference pairs each, ~59 s) do not.
    Counted per document, both were 3 s."""
    from distill.inference.lengths import pair_weights

    cascade = stage("bm25", RunRanker(), "bm25") >> stage("b", ByText("b", 2))
    cascade.costs = {"bm25": StageCost(), "b": StageCost(0.0, 1000.0)}
    short, long = ["cats and dogs"] * 3, ["cats " * 4000] * 3
    assert cascade.estimate_ms(3) == [0.0, 3000.0]
    assert cascade.estimate_ms([len("cats") + len(t) for t in short]) == [0.0, 3000.0]
    expected = 1000.0 * float(pair_weights([len("cats") + 20_000] * 3).sum())
    assert cascade.estimate_ms([len("cats") + len(t) for t in long]) == [0.0, pytest.approx(expected)]
    assert expected > 50_000
    assert all(s.ran for s in cascade.rank("cats", short, deadline_ms=10_000).stages)
    skipped = cascade.rank("cats", long, deadline_ms=10_000).stages[1]
    assert not skipped.ran and "deadline" in skipped.skipped and f"{expected:.2f} ms expected" in skipped.skipped


def test_a_token_capped_stage_costs_no_more_beyond_its_cap():
    from distill.inference.lengths import REFERENCE_TOKENS, pair_weights, token_cap

    class Capped(ByText):
        max_length = 512

    assert token_cap(Capped("c", 1)) == 512 and token_cap(ByText("b", 2)) is None
    weights = pair_weights([100, 4 * 512, 20_000], max_tokens=512)
    assert weights.tolist() == [1.0, 512 / REFERENCE_TOKENS, 512 / REFERENCE_TOKENS]


def test_a_stage_returning_nan_is_a_model_fault_not_bad_input():
    from distill.cascade.runtime import ModelFault

    class Broken(ByText):
        def score_documents(self, query, docs):
            return np.full(len(docs), np.nan)

    cascade = stage("bm25", RunRanker(), "bm25") >> stage("broken", Broken("broken", 1))
    with pytest.raises(ModelFault, match="'broken'") as err:
        cascade.rank("cats", ["cats and dogs", "dogs"])
    assert not isinstance(err.value, InputError)


def test_a_ranker_that_scores_pairs_is_scored_through_score_its_precision_settled_first():
    class ByLength(ByText):
        """Scores a pair by its document's length; ``rerank`` must not be called."""

        def __init__(self) -> None:
            super().__init__("by_length", 0)
            self.settled: list[list[str]] = []

        def settle_precision(self, queries, docs, total_pairs=None):
            self.settled.append(list(docs))

        def score(self, queries, docs):
            return np.asarray([float(len(d)) for d in docs])

        def rerank(self, dataset, run):
            raise AssertionError("scored through rerank")

    ranker = ByLength()
    cascade = stage("bm25", RunRanker(), "bm25") >> stage("by_length", ranker)
    result = cascade.rank("cats", ["a bb", {"id": "x", "title": "t", "text": "ccc"}, "d"])
    assert result.ids == ["x", "0", "2"] and ranker.settled == [["a bb", "t ccc", "d"]]
