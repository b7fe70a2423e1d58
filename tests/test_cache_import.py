"""`distill cache import` / `cache export`: scores (or rankings) computed elsewhere become a teacher cache that
`cache info` and every student read as a scored one; bad input is refused at its file and line."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import polars as pl
import pytest
import torch
from tiny import run_cli

from distill.cache.store import read_scores
from distill.core.schema import DOCID, QID, SCORE
from distill.data.beir import Dataset, load_beir
from distill.data.bm25 import bm25_run

torch.set_num_threads(1)

STOP = {"what", "about"}
TRAIN = ["--split", "train", "--epochs", "1", "--max-length", "64", "--batch-size", "8"]


@pytest.fixture(scope="module")
def planted(tiny_beir) -> tuple[Dataset, pl.DataFrame]:
    """The train split and scores planted on its BM25 top-5: the query's content words in the document,
    plus a small tie-breaker so every query's ranking is strict."""
    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 5).select(QID, DOCID)
    queries = dict(zip(dataset.queries[QID], dataset.queries["text"]))
    docs = dataset.doc_texts(run[DOCID])
    scores = [sum(w in set(queries[q].split()) - STOP for w in doc.split()) + 0.01 * i
              for i, (q, doc) in enumerate(zip(run[QID], docs))]
    return dataset, run.with_columns(pl.Series(SCORE, scores, dtype=pl.Float32))


def write_trec(path: Path, scores: pl.DataFrame, *, score=None) -> Path:
    ranked = scores.with_columns(pl.col(SCORE).rank("ordinal", descending=True).over(QID).alias("r")).sort(QID, "r")
    path.write_text("".join(f"{q} Q0 {d} {r} {s if score is None else score} teacher\n"
                            for q, d, s, r in ranked.iter_rows()))
    return path


def write_jsonl(path: Path, dataset: Dataset, scores: pl.DataFrame) -> Path:
    """FlagEmbedding's form: each query's best document in pos, the others in neg, all by text."""
    lines = []
    for (qid,), group in scores.sort(SCORE, descending=True).group_by(QID, maintain_order=True):
        texts = dataset.doc_texts(group[DOCID])
        lines.append({"query": dataset.query_texts([qid])[0], "pos": texts[:1], "neg": texts[1:],
                      "pos_scores": group[SCORE].to_list()[:1], "neg_scores": group[SCORE].to_list()[1:]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_parquet(path: Path, dataset: Dataset, scores: pl.DataFrame) -> Path:
    """``query, text, score``: the texts form."""
    scores.select(pl.Series("query", dataset.query_texts(scores[QID])), pl.Series("text", dataset.doc_texts(
        scores[DOCID])), SCORE).write_parquet(path)
    return path


def write_tsv(path: Path, scores: pl.DataFrame) -> Path:
    path.write_text("".join(f"{q}\t{d}\t{s}\n" for q, d, s in scores.iter_rows()))
    return path


def written(kind: str, folder: Path, dataset: Dataset, scores: pl.DataFrame) -> Path:
    writers = {"trec": lambda p: write_trec(p, scores), "jsonl": lambda p: write_jsonl(p, dataset, scores),
               "parquet": lambda p: write_parquet(p, dataset, scores), "tsv": lambda p: write_tsv(p, scores)}
    return writers[kind](folder / f"scores.{kind}")


def same_scores(cache: Path, expected: pl.DataFrame) -> None:
    got = read_scores(cache)[0].sort(QID, DOCID)
    assert got.equals(expected.select(QID, DOCID, SCORE).sort(QID, DOCID)), got


def imported(args: list, capsys) -> str:
    code, out, err = run_cli(["cache", "import", *args], capsys)
    assert code == 0, err
    return out


def train(student: str, cache: Path, data: Path, out: Path, capsys, *extra) -> tuple[int, str]:
    code, _, err = run_cli(["train-student", "--student", student, "--cache", cache, "--data", data, *TRAIN,
                            "--out", out, *extra], capsys)
    return code, err


@pytest.mark.parametrize("kind", ["trec", "jsonl", "parquet", "tsv"])
def test_each_format_imports_to_a_cache_every_student_trains_on(kind, planted, tiny_beir, tiny_cross_encoder,
                                                                 tiny_bi_encoder, tmp_path, capsys):
    dataset, scores = planted
    source = written(kind, tmp_path, dataset, scores)
    out = imported([source, "--data", tiny_beir, "--teacher-name", "elsewhere", "--out", tmp_path / "c"], capsys)
    assert f"imported {scores.height} scores of {dataset.queries.height} queries" in out
    same_scores(tmp_path / "c", scores)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["teacher"]["name"] == "elsewhere" and manifest["teacher"]["sources"][0]["format"] == kind
    code, out, err = run_cli(["cache", "info", tmp_path / "c"], capsys)
    assert code == 0 and "100.0%" in out and '"elsewhere"' in out, err
    for student, extra in [("cross-encoder", ["--init", tiny_cross_encoder, "--loss", "MarginMSE"]),
                           ("bi-encoder", ["--init", tiny_bi_encoder, "--loss", "MarginMSE"]), ("lightgbm", [])]:
        code, err = train(student, tmp_path / "c", tiny_beir, tmp_path / student, capsys, *extra)
        assert code == 0, (student, err)
        assert json.loads((tmp_path / student / "distill.json").read_text())["teacher"]["name"] == "elsewhere"


def test_evaluate_and_fuse_teacher_read_an_imported_cache(planted, tiny_beir, tmp_path, capsys):
    from distill.data.runs import write_run

    dataset, scores = planted
    write_run(bm25_run(dataset, 5), tmp_path / "bm25.trec", tag="bm25")
    imported([write_trec(tmp_path / "t.trec", scores), "--data", tiny_beir, "--teacher-name", "api", "--out",
              tmp_path / "c"], capsys)
    code, _, err = run_cli(["evaluate", "--data", tiny_beir, "--split", "train", "--run", tmp_path / "bm25.trec",
                            "--ranker", "bm25=bm25", "--ranker", f"api={tmp_path / 'c'}", "--teacher", "api",
                            "--no-latency", "--out", tmp_path / "eval"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["fuse-teacher", "--cache", tmp_path / "c", "--data", tiny_beir, "--run",
                            tmp_path / "bm25.trec", "--valid-split", "train", "--out", tmp_path / "fused"], capsys)
    assert code == 0, err
    assert read_scores(tmp_path / "fused")[1]["teacher"]["components"]["teacher"]["name"] == "api"


def test_a_ranking_without_scores_trains_listwise_and_refuses_calibrated_losses(planted, tiny_beir,
                                                                              tiny_cross_encoder, tmp_path, capsys):
    dataset, scores = planted
    run = write_trec(tmp_path / "llm.trec", scores, score=0)  # an LLM's listwise run: ranks, no scores
    out = imported([run, "--data", tiny_beir, "--teacher-name", "llm", "--out", tmp_path / "c", "--ranks-only"],
                   capsys)
    assert "ranks" in out
    positions = scores.with_columns(pl.col(SCORE).rank("ordinal", descending=True).over(QID).alias("p"))
    derived = pl.Series(SCORE, [-math.log(p) + 0.0 for p in positions["p"]], dtype=pl.Float32)  # -ln(position)
    same_scores(tmp_path / "c", positions.select(QID, DOCID).with_columns(derived))
    assert read_scores(tmp_path / "c")[1]["teacher"]["ranks_only"] is True
    for loss in ("MarginMSE", "MSE"):
        code, err = train("cross-encoder", tmp_path / "c", tiny_beir, tmp_path / loss, capsys, "--init",
                          tiny_cross_encoder, "--loss", loss)
        assert code == 2 and f"{loss} needs calibrated teacher scores" in err and "--ranks-only" in err
        assert not (tmp_path / loss).exists()
    for loss in ("ListNet", "ListMLE"):
        code, err = train("cross-encoder", tmp_path / "c", tiny_beir, tmp_path / loss, capsys, "--init",
                          tiny_cross_encoder, "--loss", loss, "--mode", "listwise")
        assert code == 0, err
    code, err = train("lightgbm", tmp_path / "c", tiny_beir, tmp_path / "lgbm", capsys)
    assert code == 0, err


def test_equal_ranks_keep_the_file_order(tiny_beir, tmp_path, capsys):
    run = tmp_path / "tied.trec"
    run.write_text("q0_1 Q0 d0_5 1 0 llm\nq0_1 Q0 d0_2 1 0 llm\nq0_1 Q0 d0_9 0 0 llm\n")
    imported([run, "--data", tiny_beir, "--teacher-name", "llm", "--out", tmp_path / "c", "--ranks-only"], capsys)
    got = dict(read_scores(tmp_path / "c")[0].select(DOCID, SCORE).iter_rows())
    assert got == pytest.approx({"d0_9": 0.0, "d0_5": -math.log(2), "d0_2": -math.log(3)})
    dataset = load_beir(tiny_beir)
    listwise = tmp_path / "llm.jsonl"  # a JSONL line ranks pos, then neg
    listwise.write_text(json.dumps({"query": dataset.query_texts(["q0_1"])[0], "pos": dataset.doc_texts(["d0_9"]),
                                    "neg": dataset.doc_texts(["d0_5", "d0_2"])}) + "\n")
    imported([listwise, "--data", tiny_beir, "--teacher-name", "llm", "--out", tmp_path / "j", "--ranks-only"], capsys)
    assert read_scores(tmp_path / "j")[0].sort(DOCID).equals(read_scores(tmp_path / "c")[0].sort(DOCID))


@pytest.mark.parametrize("kind", ["trec", "parquet"])
def test_export_then_import_gives_the_same_scores(kind, planted, tiny_beir, tmp_path, capsys):
    dataset, scores = planted
    imported([write_tsv(tmp_path / "s.tsv", scores), "--data", tiny_beir, "--teacher-name", "t", "--out",
              tmp_path / "c"], capsys)
    for flags, cache, back in (([], tmp_path / "c", tmp_path / "back"), (["--ranks-only"], tmp_path / "r",
                                                                          tmp_path / "back-ranks")):
        if flags:
            imported([write_trec(tmp_path / "r.trec", scores), "--data", tiny_beir, "--teacher-name", "t", "--out",
                      cache, *flags], capsys)
        code, out, err = run_cli(["cache", "export", cache, "--format", kind, "--out", tmp_path / "e"], capsys)
        assert code == 0 and f"{scores.height} scores" in out, err
        imported([tmp_path / "e", "--format", kind, "--data", tiny_beir, "--teacher-name", "t", "--out",
                  back, *flags], capsys)
        assert read_scores(back)[0].sort(QID, DOCID).equals(read_scores(cache)[0].sort(QID, DOCID))


def test_the_pairs_forms_with_scores_import_by_text(planted, tiny_beir, tmp_path, capsys):
    dataset, scores = planted
    one = scores.filter(pl.col(QID) == scores[QID][0]).sort(SCORE, descending=True)
    query, texts, values = dataset.query_texts(one[QID][:1])[0], dataset.doc_texts(one[DOCID]), one[SCORE].to_list()
    swift = tmp_path / "swift.jsonl"
    swift.write_text(json.dumps({"query": query, "positive": texts[:1], "negative": texts[1:],
                                 "positive_scores": values[:1], "negative_scores": values[1:]}) + "\n")
    triples = tmp_path / "triples.tsv"
    triples.write_text("".join(f"{query}\t{texts[0]}\t{t}\t{values[0]}\t{v}\n" for t, v in zip(texts[1:], values[1:])))
    for source in (swift, triples):
        imported([source, "--data", tiny_beir, "--teacher-name", "t", "--out", tmp_path / source.stem], capsys)
        same_scores(tmp_path / source.stem, one)


def test_queries_without_text_are_skipped_with_one_warning(planted, tiny_beir, tmp_path, caplog):
    from distill.app.tasks import run_cache_import

    dataset, scores = planted
    run = tmp_path / "r.tsv"
    run.write_text(write_tsv(tmp_path / "s.tsv", scores).read_text() + "pseudo1\td0_1\t1.0\npseudo2\td0_2\t2.0\n")
    with caplog.at_level(logging.WARNING):
        result = run_cache_import([run], tiny_beir, "t", tmp_path / "c")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("2 queries (2 pairs) have no text"), warnings
    assert "skipped" in warnings[0]
    assert (result.skipped_queries, result.pairs) == (2, scores.height)
    same_scores(tmp_path / "c", scores)
    queries = tmp_path / "pseudo.tsv"
    queries.write_text("pseudo1\tapple banana\npseudo2\triver ocean\n")
    assert run_cache_import([run], tiny_beir, "t", tmp_path / "q", queries=queries).pairs == scores.height + 2


BAD = {  # name -> (file name, content, what the error says)
    "unknown-docid": ("r.trec", "q0_1 Q0 d0_1 1 2.0 t\nq0_1 Q0 ghost 2 1.0 t\n", ["r.trec:2", "'ghost'"]),
    "duplicate": ("r.tsv", "q0_1\td0_1\t2.0\nq0_1\td0_2\t1.5\nq0_1\td0_1\t1.0\n", ["r.tsv:3", "given twice",
                                                                                     "r.tsv:1"]),
    "nan": ("r.trec", "q0_1 Q0 d0_1 1 2.0 t\nq0_1 Q0 d0_2 2 nan t\n", ["r.trec:2", "field 'score'", "not a finite"]),
    "jsonl-nan": ("r.jsonl", '{"query": "x", "pos": ["y"], "pos_scores": [NaN]}\n', ["r.jsonl:1", "pos_scores[0]"]),
    "text-not-in-corpus": ("r.jsonl", '{"query": "x", "pos": ["no such document"], "pos_scores": [1]}\n',
                           ["r.jsonl:1", "field 'pos[0]'", "text of no document"]),
    "scores-missing": ("r.jsonl", '{"query": "x", "pos": ["y"]}\n', ["r.jsonl:1", "field 'pos_scores'", "missing"]),
    "columns": ("r.tsv", "q0_1\td0_1\n", ["r.tsv:1", "expected 3"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_at_its_file_and_line(name, tiny_beir, tmp_path, capsys):
    file_name, content, says = BAD[name]
    (tmp_path / file_name).write_text(content)
    code, _, err = run_cli(["cache", "import", tmp_path / file_name, "--data", tiny_beir, "--teacher-name", "t",
                            "--out", tmp_path / "c"], capsys)
    assert code == 2 and all(s in err for s in says), err
    assert not (tmp_path / "c").exists()


def test_a_parquet_nan_is_refused_at_its_row(tiny_beir, tmp_path, capsys):
    pl.DataFrame({QID: ["q0_1", "q0_1"], DOCID: ["d0_1", "d0_2"], SCORE: [1.0, float("nan")]}).write_parquet(
        tmp_path / "r.parquet")
    code, _, err = run_cli(["cache", "import", tmp_path / "r.parquet", "--data", tiny_beir, "--teacher-name", "t",
                            "--out", tmp_path / "c"], capsys)
    assert code == 2 and "r.parquet:2" in err and "field 'score'" in err, err


def test_another_source_into_the_same_cache_is_refused_like_another_teacher(planted, tiny_beir, tmp_path, capsys):
    dataset, scores = planted
    args = ["--data", tiny_beir, "--teacher-name", "t", "--out", tmp_path / "c"]
    imported([write_tsv(tmp_path / "a.tsv", scores), *args], capsys)
    imported([tmp_path / "a.tsv", *args], capsys)  # the same import again is fine
    code, _, err = run_cli(["cache", "import", write_tsv(tmp_path / "b.tsv", scores.head(3)), *args], capsys)
    assert code == 2 and "another teacher" in err and "sources" in err, err
    code, _, err = run_cli(["cache", "import", tmp_path / "a.tsv", "--format", "xml", *args], capsys)
    assert code == 2 and "unknown format" in err
    code, _, err = run_cli(["cache", "import", tmp_path / "a.tsv", *args[:2], "--teacher-name", "t", "--out",
                            tmp_path / "d", "--format", "tsv", "--ranks-only"], capsys)
    assert code == 0, err  # 3 columns: the third is a rank
