"""Lexical features: hand computations, a brute-force reference, batching invariance, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from distill.core.errors import InputError
from distill.core.schema import CORPUS_SCHEMA, QRELS_SCHEMA, QUERIES_SCHEMA
from distill.data.beir import Dataset, load_beir
from distill.data.bm25 import bm25_run
from students.features import FeatureConfig, FeatureExtractor, analyze


@pytest.fixture(scope="module")
def beir(tiny_beir: Path) -> Dataset:
    return load_beir(tiny_beir, "test")


@pytest.fixture(scope="module")
def run(beir: Dataset) -> pl.DataFrame:
    return bm25_run(beir, 12)


@pytest.fixture(scope="module")
def extractor(beir: Dataset) -> FeatureExtractor:
    return FeatureExtractor().fit(beir)


def column(extractor: FeatureExtractor, features: np.ndarray, name: str) -> np.ndarray:
    return features[:, extractor.feature_names.index(name)]


def make_dataset(docs: dict[str, tuple[str, str]], queries: dict[str, str]) -> Dataset:
    corpus = pl.DataFrame({"docid": list(docs), "title": [t for t, _ in docs.values()],
                           "text": [x for _, x in docs.values()]}, schema=CORPUS_SCHEMA)
    return Dataset(corpus=corpus, queries=pl.DataFrame({"qid": list(queries), "text": list(queries.values())},
                                                       schema=QUERIES_SCHEMA),
                   qrels=pl.DataFrame(schema=QRELS_SCHEMA))


def test_bm25_title_matches_a_hand_computation(beir, run, extractor):
    k1, b = 1.2, 0.75
    titles = analyze(beir.corpus["title"].to_list())
    qid, docid = run.row(0)[:2]
    query = analyze(beir.query_texts([qid]))[0]
    title = titles[beir.corpus["docid"].to_list().index(docid)]
    n, avg = len(titles), sum(map(len, titles)) / len(titles)
    expected = 0.0
    for term in query:
        tf, df = title.count(term), sum(term in t for t in titles)
        if tf:
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            expected += idf * tf / (tf + k1 * (1 - b + b * len(title) / avg))
    assert expected > 0  # the pair must exercise the formula
    got = column(extractor, extractor.transform(beir, run.head(1)), "bm25_title")[0]
    assert got == pytest.approx(expected, rel=1e-5)


def test_bm25_doc_equals_bm25s_first_stage_score(beir, run, extractor):
    got = column(extractor, extractor.transform(beir, run), "bm25_doc")
    np.testing.assert_allclose(got, run["score"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_constructed_example():
    dataset = make_dataset(
        {
            "split": ("Protein folding", "The kinetics of protein folding are fast. Protein misfolding kinetics."),
            "phrase": ("", "protein folding kinetics matter"),
            "none": ("Weather", "rain today"),
        },
        {"q": "protein folding kinetics"},
    )
    run = pl.DataFrame({"qid": ["q"] * 3, "docid": ["split", "phrase", "none"], "score": [3.0, 2.0, 1.0]})
    extractor = FeatureExtractor().fit(dataset)
    x = extractor.transform(dataset, run)
    got = {name: x[:, i].tolist() for i, name in enumerate(extractor.feature_names)}
    # "split": title protein fold | body kinet protein fold fast protein misfold kinet
    assert got["coverage"][:2] == [1.0, 1.0] and got["coverage"][2] == 0.0
    assert got["coverage_title"][0] == pytest.approx(2 / 3)
    assert got["query_length"] == [3.0] * 3
    assert got["title_length"][0] == 2 and got["body_length"][0] == 7
    # the title/body boundary breaks "protein fold | kinet": the longest n-gram is 2, no phrase
    assert got["longest_ngram"] == [2.0, 3.0, 0.0]
    assert got["phrase_match"] == [0.0, 1.0, 0.0]
    assert got["bigram_matches"] == [2.0, 2.0, 0.0]
    assert got["bigram_coverage"] == [0.5, 1.0, 0.0]
    assert got["min_cover"][:2] == [3.0, 3.0] and math.isnan(got["min_cover"][2])
    assert got["first_stage_rank"] == [1.0, 2.0, 3.0]
    assert got["tfidf_cosine"][2] == 0.0 and got["tfidf_cosine"][1] > 0


def _brute_force(query: list[str], title: list[str], body: list[str]) -> tuple[int, int, float]:
    """Longest common n-gram, query-bigram occurrences and shortest window holding all matched terms."""
    seq = [*title, None, *body]
    longest = max((k for i in range(len(seq)) for j in range(len(query))
                   for k in range(1, len(query) - j + 1) if seq[i:i + k] == query[j:j + k]), default=0)
    bigrams = set(zip(query, query[1:], strict=False))
    n_bigrams = sum(pair in bigrams for pair in zip(seq, seq[1:], strict=False))
    matched = set(query) & set(seq)
    windows = [e - s + 1 for s in range(len(seq)) for e in range(s, len(seq)) if matched <= set(seq[s:e + 1])]
    return longest, n_bigrams, (min(windows) if matched else math.nan)


def test_positional_features_match_brute_force(beir, run, extractor):
    x = extractor.transform(beir, run)
    titles = dict(zip(beir.corpus["docid"], analyze(beir.corpus["title"].to_list()), strict=True))
    bodies = dict(zip(beir.corpus["docid"], analyze(beir.corpus["text"].to_list()), strict=True))
    queries = dict(zip(beir.queries["qid"], analyze(beir.queries["text"].to_list()), strict=True))
    names = ["longest_ngram", "bigram_matches", "min_cover"]
    expected = np.array([_brute_force(queries[q], titles[d], bodies[d]) for q, d in run.select("qid", "docid").rows()])
    assert (expected[:, 1] > 0).any() and (expected[:, 2] > 1).any()  # the example exercises them
    got = np.stack([column(extractor, x, n) for n in names], axis=1)
    np.testing.assert_array_equal(got, expected)


def test_features_do_not_depend_on_the_other_rows(beir, run, extractor):
    full = extractor.transform(beir, run)
    half = run.filter(pl.col("qid").is_in(run["qid"].unique().sort()[::2].to_list()))
    shuffled = half.sample(fraction=1.0, shuffle=True, seed=1)
    small_batches = FeatureExtractor(FeatureConfig(batch_size=5))
    small_batches._index = extractor._index  # same statistics, other batching
    part = small_batches.transform(beir, shuffled)
    keyed = {key: i for i, key in enumerate(run.select("qid", "docid").rows())}
    rows = [keyed[key] for key in shuffled.select("qid", "docid").rows()]
    np.testing.assert_array_equal(part, full[rows])


def test_save_load_roundtrip(beir, run, extractor, tmp_path):
    extractor.save(tmp_path / "fx")
    loaded = FeatureExtractor.load(tmp_path / "fx")
    assert loaded.feature_names == extractor.feature_names
    np.testing.assert_array_equal(loaded.transform(beir, run), extractor.transform(beir, run))
    for path in (tmp_path / "fx").iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"


def test_errors(beir, run, extractor):
    with pytest.raises(InputError, match="not in the corpus"):
        extractor.transform(beir, pl.DataFrame({"qid": [run["qid"][0]], "docid": ["nope"], "score": [1.0]}))
    with pytest.raises(InputError, match="not in dataset"):
        extractor.transform(beir, pl.DataFrame({"qid": ["nope"], "docid": [run["docid"][0]], "score": [1.0]}))
    with pytest.raises(InputError, match="no 'score' column"):
        extractor.transform(beir, run.select("qid", "docid"))
    no_first_stage = FeatureExtractor(FeatureConfig(first_stage=False)).fit(beir)
    assert no_first_stage.transform(beir, run.select("qid", "docid")).shape == (run.height, 18)
    assert extractor.transform(beir, run.head(0)).shape == (0, 20)
    with pytest.raises(InputError, match="not fitted"):
        FeatureExtractor().transform(beir, run)


def test_unknown_and_repeated_query_terms_count_in_the_query_length():
    dataset = make_dataset({"d": ("", "alpha beta gamma")}, {"q": "alpha zeta alpha"})
    x = FeatureExtractor(FeatureConfig(first_stage=False)).fit(dataset).transform(
        dataset, pl.DataFrame({"qid": ["q"], "docid": ["d"]}))
    names = FeatureExtractor(FeatureConfig(first_stage=False)).feature_names
    got = dict(zip(names, x[0].tolist(), strict=True))
    assert got["query_length"] == 3 and got["coverage"] == pytest.approx(0.5)
    assert got["min_cover"] == 1 and got["longest_ngram"] == 1


def test_analyze_is_bm25s_analysis(beir):
    import bm25s
    import Stemmer

    texts = [*beir.corpus["text"].to_list(), *beir.queries["text"].to_list(),
             "", "a", "The THE the", "naïve café 2nd 3-D x_y", "İstanbul ǅ ﬁ straße"]
    expected = bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                              show_progress=False)
    assert analyze(texts) == expected


def test_one_query_features_equal_the_runs(beir, run, extractor):
    """The per-query path (corpus rows, or the same documents analysed now) gives transform's values."""
    texts = dict(zip(beir.queries["qid"], beir.queries["text"], strict=True))
    corpus = {d: (t, x) for d, t, x in beir.corpus.select("docid", "title", "text").iter_rows()}
    for part in run.drop("rank").partition_by("qid", maintain_order=True):
        expected = extractor.transform(beir, part)
        docids, scores = part["docid"].to_list(), part["score"].to_numpy()
        rows = extractor.rows_of(docids)
        np.testing.assert_array_equal(extractor.features(texts[part["qid"][0]], rows, first_stage=scores), expected)
        titles, bodies = zip(*(corpus[d] for d in docids), strict=True)
        mixed = rows.copy()
        mixed[::2] = -1  # every other document sent as text
        np.testing.assert_array_equal(
            extractor.features(texts[part["qid"][0]], mixed, titles, bodies, first_stage=scores), expected)


def test_new_documents_use_the_corpus_statistics(beir, extractor):
    n = beir.corpus.height
    x = extractor.features("zyzzyva", np.array([-1, -1]), ["", ""], ["a zyzzyva here", "nothing"],
                           first_stage=np.array([1.0, 2.0]))
    got = [dict(zip(extractor.feature_names, row.tolist(), strict=True)) for row in x]
    # a term no corpus document holds matches with document frequency 0
    assert got[0]["coverage"] == 1 and got[0]["idf_max"] == pytest.approx(math.log1p((n + 0.5) / 0.5))
    assert got[1]["coverage"] == 0 and math.isnan(got[1]["min_cover"])
    assert [g["first_stage_rank"] for g in got] == [2, 1]


def test_documents_without_first_stage_scores_take_bm25_doc_and_its_rank(beir, run, extractor):
    """A rerank request carrying only texts: first_stage_score is bm25_doc (= BM25's first-stage score) and
    first_stage_rank its rank, the features a run of BM25's scores gives."""
    texts = dict(zip(beir.queries["qid"], beir.queries["text"], strict=True))
    corpus = {d: (t, x) for d, t, x in beir.corpus.select("docid", "title", "text").iter_rows()}
    for part in run.drop("rank").partition_by("qid", maintain_order=True):
        docids = part["docid"].to_list()
        rows = extractor.rows_of(docids)
        titles, bodies = zip(*(corpus[d] for d in docids), strict=True)
        as_text = np.full(len(rows), -1)  # as a request without a corpus sends them
        for given in (rows, as_text):
            got = extractor.features(texts[part["qid"][0]], given, titles, bodies)
            bm25_doc = column(extractor, got, "bm25_doc").astype(np.float64)
            expected = extractor.features(texts[part["qid"][0]], given, titles, bodies, first_stage=bm25_doc)
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(column(extractor, got, "first_stage_score"), part["score"].to_numpy(), rtol=1e-5)
        ranks = column(extractor, got, "first_stage_rank").tolist()
        assert ranks == part["score"].rank("min", descending=True).cast(float).to_list()  # BM25's ranks
