"""Input formats: BEIR folders, TREC runs, candidate JSONL, triples TSV, BM25 candidates."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from distill.core.errors import InputError
from distill.data.beir import load_beir, load_corpus, load_qrels, load_queries
from distill.data.bm25 import bm25_run
from distill.data.pairs import read_candidates_jsonl, read_triples_tsv
from distill.data.querysets import read_queries_file
from distill.data.runs import read_run, write_run


def _write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def test_beir_split_keeps_graded_labels(tiny_beir):
    test = load_beir(tiny_beir, "test")
    assert set(test.qrels["relevance"].unique().to_list()) == {1, 2}
    assert set(test.queries["qid"].to_list()) == set(test.qrels["qid"].to_list())
    train = load_beir(tiny_beir, "train")
    assert not set(train.queries["qid"]) & set(test.queries["qid"])
    assert test.doc_texts(["d0_0"])[0].startswith(test.corpus.filter(pl.col("docid") == "d0_0")["title"][0])


def test_qrels_crlf_header_and_trec_form(tmp_path):
    beir = load_qrels(_write(tmp_path / "a.tsv", "query-id\tcorpus-id\tscore\r\nq1\td1\t2\r\nq1\td2\t0\r\n"))
    trec = load_qrels(_write(tmp_path / "b.txt", "q1 0 d1 2\nq1 0 d2 0\n"))
    assert beir.equals(trec)
    assert beir["relevance"].to_list() == [2, 0]


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [
        ('{"_id": "1", "title": "t", "text": "x"}\n{"_id": "2", "title": "t", "text": \n', 2, "malformed JSON"),
        ('{"_id": "1", "title": "t", "text": "x"}\n{"title": "t", "text": "y"}\n', 2, "field '_id': missing"),
        ('{"_id": "1", "title": "", "text": "  "}\n', 1, "empty document"),
        ('{"_id": "1", "title": "t", "text": "x"}\n{"_id": "1", "title": "u", "text": "y"}\n', 2, "duplicate id"),
        ('[1, 2]\n', 1, "expected a JSON object"),
    ],
)
def test_corpus_errors_name_file_line_and_field(tmp_path, content, line, needle):
    path = _write(tmp_path / "corpus.jsonl", content)
    with pytest.raises(InputError) as err:
        load_corpus(path)
    assert err.value.line == line and str(path) in str(err.value) and needle in str(err.value)


def test_non_utf8_bytes_are_located(tmp_path):
    path = _write(tmp_path / "queries.jsonl", b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"queries.jsonl:2: not valid UTF-8"):
        load_queries(path)


@pytest.mark.parametrize(("score", "grade"), [("2", 2), ("0", 0), ("-1", -1), ("1.0", 1), ("3e1", 30),
                                            ("2147483647", 2**31 - 1), ("-2147483648", -(2**31))])
def test_qrels_grades_are_integers(tmp_path, score, grade):
    qrels = load_qrels(_write(tmp_path / "q.tsv", f"query-id\tcorpus-id\tscore\nq1\td1\t{score}\n"))
    assert qrels["relevance"].to_list() == [grade]


@pytest.mark.parametrize(("score", "needle"), [
    ("inf", "not finite"), ("-inf", "not finite"), ("nan", "not finite"), ("1e400", "out of range"),
    ("3000000000", "out of range"), ("-2147483649", "out of range"), ("1e12", "out of range"),
    ("0.5", "not an integer"), ("2.000001", "not an integer"), ("high", "not a number"), ("9" * 5000, "out of range"),
])
def test_qrels_scores_that_are_no_grade_are_refused(tmp_path, score, needle):
    path = _write(tmp_path / "q.tsv", f"query-id\tcorpus-id\tscore\nq1\td0\t1\nq1\td1\t{score}\n")
    with pytest.raises(InputError) as err:
        load_qrels(path)
    assert (err.value.line, err.value.field) == (3, "score") and needle in str(err.value), str(err.value)


def _bom(path, reader):
    """``reader(path)`` then ``reader`` of the same file with a UTF-8 byte-order mark in front."""
    plain = reader(path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return plain, reader(path)


@pytest.mark.parametrize(("name", "content", "reader"), [
    ("corpus.jsonl", '{"_id": "d1", "title": "", "text": "x"}\n', load_corpus),
    ("queries.jsonl", '{"_id": "q1", "text": "x"}\n', load_queries),
    ("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n", load_qrels),
    ("qrels.txt", "q1 0 d1 1\n", load_qrels),
    ("run.trec", "q1 Q0 d1 1 2.5 t\n", read_run),
    ("log.jsonl", '{"_id": "q1", "text": "x"}\n', read_queries_file),
    ("log.tsv", "q1\tx\n", read_queries_file),
    ("log_header.tsv", "qid\ttext\nq1\tx\n", read_queries_file),
    ("c.jsonl", '{"query": "q", "positive": ["d"]}\n', lambda p: read_candidates_jsonl(p)[1]),
    ("t.tsv", "q\td\te\n", lambda p: read_triples_tsv(p)[1]),
])
def test_a_utf8_bom_changes_nothing(tmp_path, name, content, reader):
    plain, with_bom = _bom(_write(tmp_path / name, content), reader)
    assert with_bom.equals(plain)
    assert not any("\ufeff" in str(v) for row in with_bom.rows() for v in row)


@pytest.mark.parametrize(("name", "content", "field", "needle"), [
    ("corpus.jsonl", '{"_id": "d1", "text": "a\\udc80"}\n', "text", "lone surrogate '\\udc80'"),
    ("corpus.jsonl", '{"_id": "d1", "title": "\\ud800", "text": "a"}\n', "title", "surrogate"),
    ("queries.jsonl", '{"_id": "q\\udfff", "text": "a"}\n', "_id", "surrogate"),
    ("c.jsonl", '{"query": "q", "positive": ["ok", "\\udbff"]}\n', "positive[1]", "surrogate"),
    ("corpus.jsonl", '{"_id": "d 1", "text": "a"}\n', "_id", "whitespace"),
    ("corpus.jsonl", '{"_id": " d1", "text": "a"}\n', "_id", "whitespace"),
    ("queries.jsonl", '{"_id": "q\\u00a01", "text": "a"}\n', "_id", "whitespace"),
    ("queries.jsonl", '{"_id": "q\\r", "text": "a"}\n', "_id", "whitespace"),
    ("log.tsv", "q\u20031\ttext\n", "qid", "whitespace"),
    ("qrels.tsv", "q 1\td1\t1\n", "query-id", "whitespace"),
])
def test_lone_surrogates_and_ids_a_trec_run_cannot_hold_are_refused(tmp_path, name, content, field, needle):
    """JSON can escape a lone surrogate (not text: it cannot be encoded); a TREC run splits on any whitespace."""
    reader = {"corpus.jsonl": load_corpus, "queries.jsonl": load_queries, "c.jsonl": read_candidates_jsonl,
              "log.tsv": read_queries_file, "qrels.tsv": load_qrels}[name]
    with pytest.raises(InputError) as err:
        reader(_write(tmp_path / name, "\n" + content))
    assert (err.value.line, err.value.field) == (2, field) and needle in str(err.value), str(err.value)
    str(err.value).encode("utf-8")  # the message itself can be printed


def test_qrels_with_unknown_ids_name_the_line(tmp_path, tiny_beir):
    root = tmp_path / "beir"
    shutil.copytree(tiny_beir, root)
    with (root / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q0_0\tnope\t1\n")
    with pytest.raises(InputError) as err:
        load_beir(root, "test")
    assert "unknown id 'nope'" in str(err.value) and err.value.field == "corpus-id" and err.value.line is not None


def test_missing_split_lists_the_ones_present(tiny_beir):
    with pytest.raises(InputError, match=r"no qrels for split 'dev' \(splits here: \['test', 'train'\]\)"):
        load_beir(tiny_beir, "dev")


def test_trec_run_roundtrip_and_errors(tmp_path):
    run = pl.DataFrame({"qid": ["q1", "q1", "q2"], "docid": ["a", "b", "a"], "score": [0.5, 2.0, 1.0]})
    path = tmp_path / "run.trec"
    write_run(run, path, tag="t")
    assert path.read_text().splitlines()[0] == "q1 Q0 b 1 2.0 t"
    back = read_run(path)
    assert back.sort(["qid", "docid"]).select("qid", "docid", "score").equals(run.sort(["qid", "docid"]))
    assert back.filter(pl.col("qid") == "q1")["rank"].to_list() == [1, 2]
    bad = [("q1 Q0 a 1 x t\n", "not a number"), ("q1 Q0 a 1\n", "expected 6 columns"),
           ("q1 Q0 a 1 1 t\nq1 Q0 a 2 0.5 t\n", "duplicate document"), ("q1 Q0 a 1 nan t\n", "not finite")]
    for text, needle in bad:
        with pytest.raises(InputError, match=needle):
            read_run(_write(tmp_path / "bad.trec", text))


def test_candidate_jsonl_and_triples_agree(tmp_path):
    rows = [{"query": "apple pie", "positive": ["apple pie recipe"], "negative": ["car engine", "rain cloud"]},
            {"query": "rain", "positive": ["rain cloud"], "negative": ["apple pie recipe"]}]
    jsonl = _write(tmp_path / "c.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    dataset, run = read_candidates_jsonl(jsonl)
    assert run.height == 5 and dataset.corpus.height == 3 and dataset.qrels.height == 2
    tsv = _write(tmp_path / "t.tsv", "apple pie\tapple pie recipe\tcar engine\n"
                                     "apple pie\tapple pie recipe\train cloud\n"
                                     "rain\train cloud\tapple pie recipe\n")
    dataset2, run2 = read_triples_tsv(tsv)
    assert sorted(run.rows()) == sorted(run2.rows())
    assert dataset.qrels.sort("qid").equals(dataset2.qrels.sort("qid"))


@pytest.mark.parametrize(
    ("content", "needle"),
    [('{"query": "q", "positive": "not a list"}\n', "field 'positive': expected a list"),
     ('{"query": "", "positive": ["d"]}\n', "field 'query': empty"),
     ('{"query": "q", "positive": [""]}\n', r"field 'positive\[0\]'"),
     ('{"query": "q"}\n', "no documents")],
)
def test_candidate_jsonl_errors(tmp_path, content, needle):
    with pytest.raises(InputError, match=needle):
        read_candidates_jsonl(_write(tmp_path / "c.jsonl", "\n" + content))


def test_triples_errors(tmp_path):
    with pytest.raises(InputError, match=r"t.tsv:2: expected 3 tab-separated columns"):
        read_triples_tsv(_write(tmp_path / "t.tsv", "a\tb\tc\na\tb\n"))
    with pytest.raises(InputError, match=r"t.tsv:1: field 'negative': empty"):
        read_triples_tsv(_write(tmp_path / "t.tsv", "a\tb\t \n"))


def test_bm25_candidates_rank_the_planted_document_and_add_positives(tiny_beir):
    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 5)
    assert run.group_by("qid").len()["len"].max() == 5
    assert run.filter(pl.col("rank") == 1).height == dataset.queries.height
    # topic words are planted: most queries find a same-topic document first
    top = run.filter(pl.col("rank") == 1).with_columns(
        same=pl.col("docid").str.slice(1, 1) == pl.col("qid").str.slice(1, 1))
    assert top["same"].mean() > 0.8
    padded = bm25_run(dataset, 3, add_positives=True)
    positives = dataset.qrels.filter(pl.col("relevance") > 0).select("qid", "docid")
    assert positives.join(padded, on=["qid", "docid"], how="anti").height == 0
    assert positives.join(bm25_run(dataset, 3), on=["qid", "docid"], how="anti").height > 0


def test_bm25_top_k_never_starts_jax(tiny_beir, monkeypatch):
    """bm25s' "auto" backend picks JAX where it is installed, and JAX grabs most of a GPU's memory."""
    import bm25s

    seen = {}
    retrieve = bm25s.BM25.retrieve

    def recording(self, *args, **kwargs):
        seen.update(kwargs)
        return retrieve(self, *args, **kwargs)

    monkeypatch.setattr(bm25s.BM25, "retrieve", recording)
    bm25_run(load_beir(tiny_beir, "train"), 3)
    assert seen["backend_selection"] == "numpy"
