"""Bad input, everywhere: one clear error line naming file, line and field; exit code 2;
nothing written or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny import run_cli, snapshot


@pytest.fixture()
def ws(tmp_path, tiny_beir, tiny_cross_encoder):
    """A workspace: a copy of the tiny BEIR folder, a valid run, the tiny teacher and an out/ folder."""
    data = tmp_path / "data"
    shutil.copytree(tiny_beir, data)
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.data.runs import write_run

    write_run(bm25_run(load_beir(data, "test"), 5), tmp_path / "run.trec")
    (tmp_path / "out").mkdir()
    return {"root": tmp_path, "data": data, "run": tmp_path / "run.trec", "teacher": tiny_cross_encoder,
            "out": tmp_path / "out"}


def _edit_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _score(ws, *extra):
    return ["score-teacher", "--teacher", ws["teacher"], "--data", ws["data"], "--split", "test",
            "--run", ws["run"], "--cache", ws["out"] / "cache", *extra]


def _candidates(ws, *extra):
    return ["candidates", "--data", ws["data"], "--split", "test", "--k", "5", "--out", ws["out"] / "c.trec", *extra]


def _break_corpus(kind, ws):
    """The data folder missing, or its corpus broken."""
    data = ws["data"]
    if kind == "missing-folder":
        return ["candidates", "--data", ws["root"] / "nope", "--out", ws["out"] / "c.trec"], ["nope", "not found"]
    if kind == "corpus-bad-json":
        _edit_line(data / "corpus.jsonl", 3, '{"_id": "x", "title": ')
        return _candidates(ws), ["corpus.jsonl:3", "malformed JSON"]
    if kind == "corpus-missing-id":
        _edit_line(data / "corpus.jsonl", 2, '{"title": "t", "text": "apple"}')
        return _candidates(ws), ["corpus.jsonl:2", "field '_id'", "missing"]
    if kind == "corpus-duplicate-id":
        first = json.loads((data / "corpus.jsonl").read_text().splitlines()[0])
        _edit_line(data / "corpus.jsonl", 4, json.dumps({**first, "text": "other"}))
        return _candidates(ws), ["corpus.jsonl:4", "duplicate id"]
    if kind == "corpus-empty-doc":
        first = json.loads((data / "corpus.jsonl").read_text().splitlines()[4])
        _edit_line(data / "corpus.jsonl", 5, json.dumps({**first, "title": "", "text": " "}))
        return _candidates(ws), ["corpus.jsonl:5", "empty document"]
    if kind == "corpus-empty-file":
        (data / "corpus.jsonl").write_text("\n")
        return _candidates(ws), ["corpus.jsonl", "no documents"]
    if kind == "corpus-missing-file":
        (data / "corpus.jsonl").unlink()
        return _candidates(ws), ["corpus.jsonl", "file not found"]
    raise AssertionError(kind)


def _break_queries_and_qrels(kind, ws):
    """The queries or the qrels broken, or the split's qrels missing."""
    data = ws["data"]
    if kind == "queries-non-utf8":
        raw = (data / "queries.jsonl").read_bytes().splitlines()
        raw[1] = raw[1].replace(b"what", b"wh\xe9t")
        (data / "queries.jsonl").write_bytes(b"\n".join(raw) + b"\n")
        return _candidates(ws), ["queries.jsonl:2", "UTF-8"]
    if kind == "queries-empty-text":
        first = json.loads((data / "queries.jsonl").read_text().splitlines()[0])
        _edit_line(data / "queries.jsonl", 1, json.dumps({**first, "text": ""}))
        return _candidates(ws), ["queries.jsonl:1", "field 'text'", "empty"]
    if kind == "qrels-unknown-doc":
        with (data / "qrels" / "test.tsv").open("a") as h:
            h.write("q0_0\tghost\t1\n")
        return _candidates(ws), ["test.tsv", "corpus-id", "ghost"]
    if kind == "qrels-bad-score":
        _edit_line(data / "qrels" / "test.tsv", 2, "q0_0\td0_0\thigh")
        return _candidates(ws), ["test.tsv:2", "field 'score'", "not a number"]
    if kind == "qrels-columns":
        _edit_line(data / "qrels" / "test.tsv", 3, "q0_0")
        return _candidates(ws), ["test.tsv:3", "columns"]
    if kind == "missing-split":
        return [*_candidates(ws)[:4], "dev", *_candidates(ws)[5:]], ["dev.tsv", "no qrels for split"]
    raise AssertionError(kind)


def _break_run(kind, ws):
    """The run to score broken."""
    run = ws["run"]
    if kind == "run-unknown-doc":
        _edit_line(run, 2, "q0_0 Q0 ghost 2 1.0 bm25")
        return _score(ws), ["run.trec", "field 'docid'", "ghost"]
    if kind == "run-unknown-query":
        _edit_line(run, 2, "q9_9 Q0 d0_0 2 1.0 bm25")
        return _score(ws), ["run.trec", "field 'qid'", "q9_9"]
    if kind == "run-short-line":
        _edit_line(run, 3, "q0_0 Q0 d0_1")
        return _score(ws), ["run.trec:3", "expected 6 columns"]
    if kind == "run-nan-score":
        parts = run.read_text().splitlines()[3].split()
        parts[4] = "nan"
        _edit_line(run, 4, " ".join(parts))
        return _score(ws), ["run.trec:4", "field 'score'", "not finite"]
    if kind == "run-duplicate":
        lines = run.read_text().splitlines()
        _edit_line(run, 2, lines[0])
        return _score(ws), ["run.trec:2", "duplicate document"]
    if kind == "run-empty":
        run.write_text("")
        return _score(ws), ["run.trec", "empty run"]
    raise AssertionError(kind)


def _break_arguments(kind, ws):
    """A missing teacher, a bad shard, bad pairs files or a folder that is not what the command reads."""
    if kind == "teacher-missing":
        args = _score(ws)
        args[2] = ws["root"] / "no_model"
        return args, ["no_model"]
    if kind == "bad-shard":
        return _score(ws, "--shard", "5/2"), ["--shard", "0 <= i < N"]
    if kind == "pairs-bad-jsonl":
        path = ws["root"] / "c.jsonl"
        path.write_text('{"query": "apple", "positive": ["apple pie"]}\n{"query": "rain", "positive": "x"}\n')
        return ["score-teacher", "--teacher", ws["teacher"], "--pairs", path, "--cache", ws["out"] / "cache"], \
            ["c.jsonl:2", "field 'positive'", "expected a list"]
    if kind == "pairs-bad-triples":
        path = ws["root"] / "t.tsv"
        path.write_text("apple\tapple pie\tcar\nrain\tcloud\n")
        return ["score-teacher", "--teacher", ws["teacher"], "--pairs", path, "--cache", ws["out"] / "cache"], \
            ["t.tsv:2", "3 tab-separated columns"]
    if kind == "pairs-and-run":
        return _score(ws, "--pairs", ws["run"]), ["either --pairs or --data"]
    if kind == "cache-info-not-cache":
        return ["cache", "info", ws["out"]], ["not a teacher cache"]
    raise AssertionError(kind)


# each case, and the function that breaks the workspace for it: it returns the argv to run and the expected
# message parts
CASES = {
    **dict.fromkeys(["missing-folder", "corpus-bad-json", "corpus-missing-id", "corpus-duplicate-id",
                     "corpus-empty-doc", "corpus-empty-file", "corpus-missing-file"], _break_corpus),
    **dict.fromkeys(["queries-non-utf8", "queries-empty-text", "qrels-unknown-doc", "qrels-bad-score",
                     "qrels-columns", "missing-split"], _break_queries_and_qrels),
    **dict.fromkeys(["run-unknown-doc", "run-unknown-query", "run-short-line", "run-nan-score", "run-duplicate",
                     "run-empty"], _break_run),
    **dict.fromkeys(["teacher-missing", "bad-shard", "pairs-bad-jsonl", "pairs-bad-triples", "pairs-and-run",
                     "cache-info-not-cache"], _break_arguments),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(ws, kind, capsys):
    args, needles = CASES[kind](kind, ws)
    before = snapshot(ws["root"])
    code, out, err = run_cli(args, capsys)
    assert code == 2, (code, out, err)
    message = " ".join(err.split())
    assert message.startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in message, (needle, message)
    assert snapshot(ws["root"]) == before


def _set_field(path: Path, number: int, field: str, literal: str) -> None:
    """Set ``field`` of JSONL line ``number`` to the raw JSON ``literal`` (so an escape like ``\\udc80`` stays)."""
    obj = json.loads(path.read_text().splitlines()[number - 1])
    obj.pop(field, None)
    _edit_line(path, number, json.dumps(obj)[:-1] + f', "{field}": {literal}}}')


def _file(ws, name: str, content: str) -> Path:
    path = ws["root"] / name
    path.write_text(content, encoding="utf-8")
    return path


def _pairs(ws, content: str):
    """score-teacher on a pairs file with a teacher that does not exist: the pairs must be refused first."""
    return ["score-teacher", "--teacher", ws["root"] / "no_model", "--pairs", _file(ws, "c.jsonl", content),
            "--cache", ws["out"] / "cache"]


def _qrels_score(ws, score: str):
    _edit_line(ws["data"] / "qrels" / "test.tsv", 2, f"q0_0\td0_0\t{score}")
    return _candidates(ws)


# issue 32: input classes that crashed (exit 1) or were silently misread
MORE = {
    "qrels-inf-score": lambda ws: (_qrels_score(ws, "inf"), ["test.tsv:2", "field 'score'", "not finite"]),
    "qrels-1e400-score": lambda ws: (_qrels_score(ws, "1e400"), ["test.tsv:2", "field 'score'", "out of range"]),
    "qrels-int32-overflow": lambda ws: (_qrels_score(ws, "3000000000"), ["test.tsv:2", "field 'score'", "range"]),
    "qrels-fractional-grade": lambda ws: (_qrels_score(ws, "0.5"), ["test.tsv:2", "field 'score'", "integer"]),
    "corpus-lone-surrogate": lambda ws: (
        _set_field(ws["data"] / "corpus.jsonl", 3, "text", r'"bad \udc80 text"') or _candidates(ws),
        ["corpus.jsonl:3", "field 'text'", "surrogate", "\\udc80"]),
    "queries-lone-surrogate": lambda ws: (
        _set_field(ws["data"] / "queries.jsonl", 1, "text", r'"\ud83d what"') or _candidates(ws),
        ["queries.jsonl:1", "field 'text'", "surrogate"]),
    "corpus-id-surrogate": lambda ws: (
        _set_field(ws["data"] / "corpus.jsonl", 2, "_id", r'"d\udfff"') or _candidates(ws),
        ["corpus.jsonl:2", "field '_id'", "surrogate"]),
    "pairs-lone-surrogate": lambda ws: (
        _pairs(ws, '{"query": "apple", "positive": ["apple pie"]}\n{"query": "rain", "negative": ["\\udc80"]}\n'),
        ["c.jsonl:2", "field 'negative[0]'", "surrogate"]),
    "pairs-query-surrogate": lambda ws: (
        _pairs(ws, '{"query": "a\\ud800b", "positive": ["apple pie"]}\n'), ["c.jsonl:1", "field 'query'"]),
    "corpus-id-with-space": lambda ws: (
        _set_field(ws["data"] / "corpus.jsonl", 2, "_id", '"d0 1"') or _candidates(ws),
        ["corpus.jsonl:2", "field '_id'", "whitespace"]),
    "queries-id-with-tab": lambda ws: (
        _set_field(ws["data"] / "queries.jsonl", 1, "_id", r'"q0\t0"') or _candidates(ws),
        ["queries.jsonl:1", "field '_id'", "whitespace"]),
    "queries-id-with-newline": lambda ws: (
        _set_field(ws["data"] / "queries.jsonl", 2, "_id", r'"q0_1\n"') or _candidates(ws),
        ["queries.jsonl:2", "field '_id'", "whitespace"]),
    "qrels-id-with-space": lambda ws: (
        _edit_line(ws["data"] / "qrels" / "test.tsv", 3, "q0_0\td0 1\t1") or _candidates(ws),
        ["test.tsv:3", "field 'corpus-id'", "whitespace"]),
    "queries-file-id-with-space": lambda ws: (
        _candidates(ws, "--queries", _file(ws, "log.tsv", "q 1\tapple pie\n")),
        ["log.tsv:1", "field 'qid'", "whitespace"]),
}


@pytest.mark.parametrize("kind", sorted(MORE))
def test_more_bad_input_is_one_clear_line_exit_2_and_nothing_written(ws, kind, capsys):
    args, needles = MORE[kind](ws)
    before = snapshot(ws["root"])
    code, out, err = run_cli(args, capsys)
    assert code == 2, (code, out, err)
    assert err.startswith("error:") and err.strip().count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    assert snapshot(ws["root"]) == before


def _without_clock(files: dict[str, bytes]) -> dict:
    """An output folder's files, less the creation time in its manifest (two runs differ in it)."""
    manifest = json.loads(files.pop("distill.json"))
    manifest.pop("created")
    return {**files, "distill.json": manifest}


@pytest.mark.parametrize("target", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "run", "log.jsonl", "log.tsv"])
def test_a_utf8_bom_is_accepted_on_every_input(ws, target, capsys):
    """A byte-order mark (Windows editors, Excel exports) changes nothing: the same output as without it."""
    if target.startswith("log"):
        log = ws["root"] / target
        log.write_text('{"_id": "x1", "text": "apple pie"}\n' if target.endswith("jsonl") else "x1\tapple pie\n")
        args, path = ["candidates", "--data", ws["data"], "--queries", log, "--k", "5"], log
    else:
        args = ["evaluate", "--data", ws["data"], "--split", "test", "--run", ws["run"], "--ranker", "bm25"]
        path = ws["run"] if target == "run" else ws["data"] / target
    outputs = []
    for name in ("plain", "bom"):
        code, _, err = run_cli([*args, "--out", ws["out"] / name], capsys)
        assert code == 0, err
        out = ws["out"] / name
        outputs.append(_without_clock(snapshot(out)) if out.is_dir() else out.read_bytes())
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert outputs[0] == outputs[1]


def test_debug_shows_the_traceback(ws, capsys):
    from distill.core.errors import DistillError

    args, _ = _break_corpus("corpus-bad-json", ws)
    with pytest.raises(DistillError):
        run_cli(["--debug", *args], capsys)


def test_cache_of_another_teacher_is_refused(ws, tmp_path_factory, capsys):
    import tiny

    code, _, err = run_cli(_score(ws), capsys)
    assert code == 0, err
    other = tiny.build_bert_cross_encoder(tmp_path_factory.mktemp("other"), seed=1)
    args = _score(ws)
    args[2] = other
    before = snapshot(ws["root"])
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "another teacher" in err
    assert snapshot(ws["root"]) == before


def test_untrained_head_is_refused_unless_allowed(ws, tmp_path, capsys):
    from transformers import AutoTokenizer, BertConfig, BertModel

    headless = tmp_path / "headless"
    BertModel(BertConfig.from_pretrained(ws["teacher"])).save_pretrained(headless)
    AutoTokenizer.from_pretrained(ws["teacher"]).save_pretrained(headless)
    args = _score(ws)
    args[2] = headless
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--allow-untrained-head" in err
    assert not (ws["out"] / "cache").exists()
    code, _, err = run_cli([*args, "--allow-untrained-head"], capsys)
    assert code == 0, err


def _scored_cache(ws, capsys, k: int = 5):
    """Score the test run into out/cache (k candidates per query) and return its path."""
    from distill.data.beir import load_beir
    from distill.data.bm25 import bm25_run
    from distill.data.runs import write_run

    write_run(bm25_run(load_beir(ws["data"], "train"), k), ws["root"] / f"train{k}.trec")
    cache = ws["out"] / f"cache{k}"
    code, _, err = run_cli(["score-teacher", "--teacher", ws["teacher"], "--data", ws["data"], "--split", "train",
                            "--run", ws["root"] / f"train{k}.trec", "--cache", cache, "--no-sanity-check"], capsys)
    assert code == 0, err
    return cache


@pytest.mark.parametrize(
    ("k", "extra", "needles"),
    [
        (1, ["--loss", "MarginMSE"], ["MarginMSE", "negative"]),
        (5, ["--loss", "NoSuchLoss"], ["NoSuchLoss", "MarginMSE", "KLDiv", "ListNet"]),
        (5, ["--loss", "KLDiv", "--loss-param", "temperature"], ["name=value"]),
        (5, ["--loss", "KLDiv", "--qrels-weight", "0.5"], ["--qrels-weight", "lightgbm", "--hard-label-weight"]),
    ],
)
def test_student_config_that_does_not_fit(ws, capsys, k, extra, needles):
    cache = _scored_cache(ws, capsys, k)
    before = snapshot(ws["root"])
    code, _, err = run_cli(["train-student", "--student", "cross-encoder", "--init", ws["teacher"], "--cache", cache,
                            "--data", ws["data"], "--split", "train", "--epochs", 1, "--max-length", 32,
                            "--out", ws["out"] / "student", *extra], capsys)
    message = " ".join(err.split())
    assert code == 2, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert snapshot(ws["root"]) == before


def test_student_from_a_folder_that_is_not_a_cache(ws, capsys):
    before = snapshot(ws["root"])
    code, _, err = run_cli(["train-student", "--student", "lightgbm", "--cache", ws["data"], "--data", ws["data"],
                            "--split", "train", "--out", ws["out"] / "lgbm"], capsys)
    assert code == 2 and "not a teacher cache" in err
    assert snapshot(ws["root"]) == before


def test_teacher_with_non_finite_scores_writes_nothing(ws, tmp_path, capsys):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "nan_teacher"
    model = AutoModelForSequenceClassification.from_pretrained(ws["teacher"])
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(ws["teacher"]).save_pretrained(broken)
    args = _score(ws, "--no-sanity-check")
    args[2] = broken
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "non-finite" in err, err
    assert not (ws["out"] / "cache").exists()
