"""The pipeline's plan: which command lines a configuration turns into."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.app.pipeline import PipelineConfig, plan
from distill.core.errors import ConfigError


def _argv(steps, name: str) -> list[str]:
    return next(s.argv for s in steps if s.name == name)


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_the_cross_encoder_student_gets_its_own_epochs_and_learning_rate(tmp_path):
    cfg = PipelineConfig(out=tmp_path, init="backbone", student_layers=2, student_epochs=1.0, student_lr=5e-5,
                         ce_epochs=3.0, ce_lr=2e-4)
    steps = plan(cfg, Path("data"))
    ce, bi = _argv(steps, "student-cross-encoder"), _argv(steps, "student-bi-encoder")
    assert (_option(ce, "--epochs"), _option(ce, "--lr")) == ("3.0", "0.0002")
    assert (_option(bi, "--epochs"), _option(bi, "--lr")) == ("1.0", "5e-05")
    default = plan(PipelineConfig(out=tmp_path, init="backbone", student_layers=2), Path("data"))
    ce = _argv(default, "student-cross-encoder")
    assert (_option(ce, "--epochs"), _option(ce, "--lr"), _option(ce, "--rounds")) == ("1.0", "0.0002", "4")
    assert (_option(ce, "--valid-split"), _option(ce, "--lr-schedule")) == ("valid", "constant")


def test_the_report_is_titled_after_the_dataset_not_the_pipelines_view(tmp_path):
    beir = plan(PipelineConfig(out=tmp_path, data=Path("corpora/scifact"), init="b", student_layers=2),
                tmp_path / "data")
    assert _option(_argv(beir, "report"), "--title") == "distill: scifact"
    builtin = plan(PipelineConfig(out=tmp_path, init="b", student_layers=2), tmp_path / "data")
    assert _option(_argv(builtin, "report"), "--title") == "distill: built-in data"


def test_the_teacher_objective_reaches_train_teacher(tmp_path):
    default = _argv(plan(PipelineConfig(out=tmp_path, init="b", student_layers=2), Path("data")), "train-teacher")
    assert _option(default, "--objective") == "listnet"
    cfg = PipelineConfig(out=tmp_path, init="b", student_layers=2, teacher_objective="listwise")
    assert _option(_argv(plan(cfg, Path("data")), "train-teacher"), "--objective") == "listwise"


def test_title_queries_join_the_students_split_but_not_the_teachers(tmp_path):
    from distill.app.pipeline import TITLE_SPLIT, split_view
    from distill.data.beir import load_beir
    from distill.data.synthetic import make_synthetic_beir

    source = make_synthetic_beir(tmp_path / "source", n_topics=4)
    view = split_view(source, tmp_path / "view", valid_fraction=0.3, title_queries=5, seed=1)
    train, students = load_beir(view, "train"), load_beir(view, TITLE_SPLIT)
    titles = students.queries.filter(students.queries["qid"].str.starts_with("title:"))
    assert titles.height == 5 and not train.queries["qid"].str.starts_with("title:").any()
    assert set(train.queries["qid"]) == set(students.queries["qid"]) - set(titles["qid"])
    # each title query is judged relevant to the document it was taken from, and asks its title
    corpus = dict(zip(students.corpus["docid"], students.corpus["title"]))
    for qid, text in titles.iter_rows():
        assert students.qrels.filter(students.qrels["qid"] == qid)["docid"].to_list() == [qid.removeprefix("title:")]
        assert corpus[qid.removeprefix("title:")] == text
    assert split_view(source, tmp_path / "view", valid_fraction=0.3, title_queries=5, seed=1) == view
    with pytest.raises(ConfigError, match="other settings"):
        split_view(source, tmp_path / "view", valid_fraction=0.3, title_queries=6, seed=1)


def test_split_view_command_builds_the_pipelines_view(tmp_path):
    from typer.testing import CliRunner

    from distill.app.cli import app, register_commands
    from distill.app.pipeline import split_view
    from distill.data.synthetic import make_synthetic_beir

    source = make_synthetic_beir(tmp_path / "source", n_topics=4)
    expected = split_view(source, tmp_path / "expected", valid_fraction=0.3, title_queries=5, seed=1)
    register_commands()
    args = ["split-view", "--data", str(source), "--out", str(tmp_path / "view"), "--valid-fraction", "0.3",
            "--seed", "1"]
    result = CliRunner().invoke(app, [*args, "--title-queries", "5"])
    assert result.exit_code == 0, result.output
    for name in ("qrels/train.tsv", "qrels/valid.tsv", "qrels/train_titles.tsv", "queries.jsonl"):
        assert (tmp_path / "view" / name).read_text() == (expected / name).read_text(), name
    # a view is never silently rebuilt with other settings
    clash = CliRunner().invoke(app, [*args, "--title-queries", "6"])
    assert isinstance(clash.exception, ConfigError) and "other settings" in str(clash.exception)


def test_students_learn_from_the_title_split_when_asked(tmp_path):
    from distill.app.pipeline import TITLE_SPLIT

    steps = plan(PipelineConfig(out=tmp_path, init="backbone", student_layers=2, title_queries=10), Path("data"))
    for name in ("candidates-train", "score-train", "student-cross-encoder", "student-bi-encoder",
                 "student-lightgbm-w0"):
        assert _option(_argv(steps, name), "--split") == TITLE_SPLIT, name
    assert _option(_argv(steps, "train-teacher"), "--split") == "train"
    assert _option(_argv(steps, "score-test"), "--split") == "test"
    default = plan(PipelineConfig(out=tmp_path, init="backbone", student_layers=2), Path("data"))
    assert _option(_argv(default, "student-lightgbm-w0.5"), "--split") == "train"


def test_a_rerun_keeps_the_earlier_runs_steps_and_budget(tmp_path):
    import json

    from distill.app.pipeline import resume_record

    fresh = {"config": {"seed": 1}, "steps": {}}
    assert resume_record(tmp_path / "pipeline.json", dict(fresh)) == fresh
    earlier = {"config": {"seed": 0}, "steps": {"score-train": {"seconds": 3.0}}, "budget": {"budget_ms": 13.9}}
    (tmp_path / "pipeline.json").write_text(json.dumps(earlier))
    resumed = resume_record(tmp_path / "pipeline.json", dict(fresh))
    assert resumed["steps"] == earlier["steps"] and resumed["budget"] == earlier["budget"]
    assert resumed["config"] == {"seed": 1}


def test_lightgbm_can_take_a_neural_students_score_as_a_feature(tmp_path):
    cfg = PipelineConfig(out=tmp_path, init="backbone", student_layers=2, lightgbm_qrels_weights=(0.0,))
    lightgbm = _argv(plan(cfg, Path("data")), "student-lightgbm")
    assert _option(lightgbm, "--feature-ranker") == f"bi_encoder={tmp_path / 'models' / 'bi_encoder'}"
    names = [s.name for s in plan(cfg, Path("data"))]
    assert names.index("student-bi-encoder") < names.index("student-lightgbm")
    plain = PipelineConfig(out=tmp_path, init="b", student_layers=2, lightgbm_features=(), lightgbm_qrels_weights=(0,))
    plain = _argv(plan(plain, Path("data")), "student-lightgbm")
    assert "--feature-ranker" not in plain and "--qrels-weight" not in plain
    mixed = PipelineConfig(out=tmp_path, init="b", student_layers=2, lightgbm_qrels_weights=(0.5,))
    assert _option(_argv(plan(mixed, Path("data")), "student-lightgbm"), "--qrels-weight") == "0.5"
    # several weights: one student each, the best on validation kept
    steps = plan(PipelineConfig(out=tmp_path, init="b", student_layers=2), Path("data"))
    assert _option(_argv(steps, "student-lightgbm-w0.25"), "--qrels-weight") == "0.25"
    select = _argv(steps, "student-lightgbm")
    assert select[0] == "select-student" and str(tmp_path / "models" / "lightgbm_w0.75") in select
    with pytest.raises(ConfigError, match="not one of the pipeline's students"):
        plan(PipelineConfig(out=tmp_path, init="b", student_layers=2, lightgbm_features=("teacher",)), Path("data"))


def test_demo_passes_title_queries_and_lightgbm_features_on(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import distill.app.pipeline
    from distill.app.cli import app, register_commands

    seen = []
    monkeypatch.setattr(distill.app.pipeline, "run_pipeline", seen.append)
    register_commands()
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--title-queries", "7",
                                      "--lightgbm-feature", "bi_encoder", "--lightgbm-qrels-weight", "0.5"])
    assert result.exit_code == 0, result.output
    assert seen[0].title_queries == 7 and seen[0].lightgbm_features == ("bi_encoder",)
    assert seen[0].lightgbm_qrels_weights == (0.5,)
    assert seen[0].valid_fraction == 0.3 and seen[0].queries_per_topic == 10  # enough valid queries to choose on
    assert seen[0].pseudo_queries == "title,first-sentence"
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--pseudo-queries", "none"])
    assert result.exit_code == 0, result.output
    assert seen[1].pseudo_queries is None  # no pseudo-queries at all (it once fell back to the default)
    assert "pseudo-queries" not in [s.name for s in plan(seen[1], Path("data"))]


def test_students_learn_from_pseudo_queries_or_a_query_log_by_default(tmp_path):
    steps = plan(PipelineConfig(out=tmp_path, init="b", student_layers=2), Path("data"))
    pseudo = tmp_path / "pseudo_queries.jsonl"
    assert steps[0].name == "pseudo-queries" and steps[0].output == pseudo
    for name in ("candidates-train", "score-train", "student-cross-encoder", "student-bi-encoder"):
        assert _option(_argv(steps, name), "--queries") == str(pseudo), name
    assert "--queries" not in _argv(steps, "train-teacher") and "--queries" not in _argv(steps, "score-test")
    log = plan(PipelineConfig(out=tmp_path, init="b", student_layers=2, queries=Path("log.tsv")), Path("data"))
    assert "pseudo-queries" not in [s.name for s in log]
    assert _option(_argv(log, "student-cross-encoder"), "--queries") == "log.tsv"
    few = plan(PipelineConfig(out=tmp_path, init="b", student_layers=2, max_pseudo_queries=300), Path("data"))
    assert _option(_argv(few, "pseudo-queries"), "--max-queries") == "300"
    off = plan(PipelineConfig(out=tmp_path, init="b", student_layers=2, pseudo_queries=None), Path("data"))
    assert "--queries" not in _argv(off, "candidates-train")


class _Called(Exception):
    """Raised by a recorded library function: the call is what is tested, not its work."""


def _bound(func, args: tuple, kwargs: dict, left_out: dict | None = None) -> dict:
    """A call's arguments by parameter name, defaults filled in (dicts as item lists: their order counts).

    A function taking ``**settings`` (its command's generated options, see distill.app.options) has them
    as one dict, in any order, with ``left_out``'s settings where the call gives none."""
    import inspect

    signature = inspect.signature(func)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()

    def items(value):
        return list(value.items()) if isinstance(value, dict) else value

    def settings(given: dict) -> dict:
        return {name: items(value) for name, value in {**(left_out or {}), **given}.items()}

    return {k: settings(v) if signature.parameters[k].kind is inspect.Parameter.VAR_KEYWORD else items(v)
            for k, v in bound.arguments.items()}


def _option_defaults(argv: list[str]) -> dict:
    """The defaults of the options of the command ``argv`` runs, by parameter name."""
    import typer

    from distill.app.cli import app

    command = typer.main.get_command(app)
    for word in argv:
        if not hasattr(command, "commands"):  # a group's subcommands (typer's own click)
            break
        command = command.commands[word]
    return {p.name: p.default for p in command.params}


def _assert_steps_call_what_their_commands_call(steps, monkeypatch) -> None:
    import inspect
    import sys

    from distill.app.cli import app, register_commands

    register_commands()
    for step in steps:
        seen = []

        def record(*args, _func=step.call, _seen=seen, **kwargs):
            _seen.append(_bound(_func, args, kwargs))
            raise _Called

        with monkeypatch.context() as patch:
            patch.setattr(sys.modules[step.call.__module__], step.call.__name__, record)
            with pytest.raises(_Called):
                app(step.argv, standalone_mode=False)
        # the settings the command passes and the step does not are at the command's defaults
        passed = {name for p in inspect.signature(step.call).parameters.values()
                  if p.kind is inspect.Parameter.VAR_KEYWORD for name in seen[0][p.name]}
        defaults = _option_defaults(step.argv)
        assert seen == [_bound(step.call, (), step.kwargs, {name: defaults[name] for name in passed})], step.command()


@pytest.mark.parametrize("settings", [
    {},  # the defaults: pseudo-queries, train-teacher, four LightGBM students and select-student
    {"teacher": "my-teacher", "queries": Path("log.tsv"), "title_queries": 3, "lightgbm_qrels_weights": (0.5,),
     "lightgbm_features": ("bi_encoder", "ce_student"), "bi_loss_params": ("temperature=0.5",), "ce_lr": None},
    {"max_pseudo_queries": 300, "seed": 7},
    {"teacher_scores": Path("scores.trec"), "budget_ms": 5.0},  # cache import instead of the teacher's steps
])
def test_every_step_calls_what_its_printed_command_calls(tmp_path, monkeypatch, settings):
    import inspect

    from distill.app.pipeline import STUDENT_CACHE

    steps = plan(PipelineConfig(out=tmp_path, init="backbone", student_layers=2, **settings), tmp_path / "data")
    for step in steps:
        step.bind(STUDENT_CACHE, tmp_path / "cache_fused")
        if settings and "resume" in inspect.signature(step.call).parameters:
            step.resume()  # as run_pipeline does for a model step stopped mid-epoch
    _assert_steps_call_what_their_commands_call(steps, monkeypatch)


def test_extra_replaces_a_steps_arguments_and_shows_in_its_command(tmp_path):
    cfg = PipelineConfig(out=tmp_path, init="b", student_layers=2, extra={"student-bi-encoder": {"batch_size": 16}})
    step = next(s for s in plan(cfg, Path("data")) if s.name == "student-bi-encoder")
    assert step.command().endswith("  # batch_size=16")
    seen = []
    step.call = lambda **kwargs: seen.append(kwargs)
    step.run()
    assert seen[0]["batch_size"] == 16 and seen[0]["loss"] == cfg.bi_loss


def test_demo_config_takes_the_builtin_settings_only_without_data(tmp_path):
    from distill.app.pipeline import BUILTIN_DEMO, demo_config

    builtin = demo_config(tmp_path, None, ce_rounds=None, max_length=64)
    assert builtin.ce_rounds == BUILTIN_DEMO["ce_rounds"] and builtin.negatives == BUILTIN_DEMO["negatives"]
    assert builtin.max_length == 64  # given wins
    beir = demo_config(tmp_path, tmp_path / "beir", ce_rounds=None)
    assert beir.ce_rounds == PipelineConfig.ce_rounds and beir.negatives == PipelineConfig.negatives
    assert beir.max_length == 256
    steps = plan(builtin, tmp_path / "data")
    for name in ("student-bi-encoder", "student-cross-encoder"):  # both neural students
        step = next(s for s in steps if s.name == name)
        assert step.kwargs["negatives"] == BUILTIN_DEMO["negatives"] != PipelineConfig.negatives
        assert step.argv[step.argv.index("--negatives") + 1] == str(BUILTIN_DEMO["negatives"])
    for name in ("student-bi-encoder", "student-cross-encoder", "train-teacher"):  # every neural training
        assert _option(_argv(steps, name), "--dropout") == str(BUILTIN_DEMO["dropout"])
        assert "--dropout" not in _argv(plan(beir, tmp_path / "data"), name)  # the model's own


def test_both_neural_students_checkpoint_within_an_epoch(tmp_path):
    """A session's end in the middle of an hour-long epoch loses minutes: both students resume mid-epoch."""
    steps = plan(PipelineConfig(out=tmp_path, init="backbone", student_layers=2), Path("data"))
    for name in ("student-cross-encoder", "student-bi-encoder"):
        assert _option(_argv(steps, name), "--checkpoint-steps") == "50"
        assert next(s for s in steps if s.name == name).kwargs["checkpoint_steps"] == 50


def test_a_steps_command_line_is_derived_from_its_arguments_by_one_rule():
    from distill.app.pipeline import command_line
    from distill.cascade.search import BudgetShare, CascadeBuildConfig

    argv = command_line("cascade build", {
        "data": Path("d"), "stages": {"bm25": "bm25", "teacher": "cache"}, "budget_ms": BudgetShare("teacher", 0.1),
        "config": CascadeBuildConfig(latency_queries=5, threads=1), "runs": [Path("a"), Path("b")],
        "loss_params": {"temperature": 0.5, "scaled": True}, "allow_collapse": True, "resume": False, "queries": None,
        "folders": [Path("x"), Path("y")], "lr": 2e-4})
    assert argv == ["cascade", "build", "--data", "d", "--stage", "bm25=bm25", "--stage", "teacher=cache",
                    "--budget-share", "teacher=0.1", "--threads", "1", "--latency-queries", "5", "--latency-k", "100",
                    "--run", "a", "--run", "b", "--loss-param", "temperature=0.5", "--loss-param", "scaled=true",
                    "--allow-collapse", "x", "y", "--lr", "0.0002"]


def test_a_bi_encoder_backbone_is_fused_zero_shot_with_the_teacher(tmp_path, tiny_bi_encoder, tiny_cross_encoder,
                                                                   monkeypatch):
    def steps(init, **settings) -> list:
        return plan(PipelineConfig(out=tmp_path, init=str(init), student_layers=2, **settings), tmp_path / "data")

    planned = steps(tiny_bi_encoder)
    assert "--scorer" not in _argv(planned, "fuse-teacher")  # the teacher with BM25, as before
    argv = _argv(planned, "fuse-ensemble")
    assert _option(argv, "--scorer") == f"zero_shot={tiny_bi_encoder}"
    assert _option(argv, "--queries") == str(tmp_path / "pseudo_queries.jsonl")  # their pairs are cached too
    assert f"ensemble={tmp_path / 'cache_ensemble'}" in _argv(planned, "evaluate")
    _assert_steps_call_what_their_commands_call([s for s in planned if s.name.startswith("fuse-")], monkeypatch)
    # a cross-encoder backbone's head is not a zero-shot scorer; a hub id cannot be told apart; or asked not to
    for init, settings in ((tiny_cross_encoder, {}), ("org/model", {}), (tiny_bi_encoder, {"zero_shot": False})):
        assert "fuse-ensemble" not in [s.name for s in steps(init, **settings)], (init, settings)


@pytest.mark.parametrize(("teacher", "ensemble", "chosen"), [
    (0.3, True, "ensemble"),  # the trained teacher below BM25 on valid: the zero-shot backbone's ensemble
    (0.3, False, "fused"),  # no ensemble (the backbone is no bi-encoder): the fusion with BM25, as before
    (0.8, True, "trained"),  # a teacher above BM25 that fusion gives all the weight: its own cache
])
def test_students_learn_from_the_ensemble_only_where_the_teacher_ranks_below_bm25(tmp_path, teacher, ensemble,
                                                                                  chosen):
    import json

    from distill.app.pipeline import student_cache

    def write(folder: str, weights: dict, alone: dict) -> None:
        (tmp_path / folder).mkdir()
        chosen_on = {"metric": "nDCG@10", "value": max(alone.values()), "queries": 9, "alone": alone}
        (tmp_path / folder / "manifest.json").write_text(json.dumps({"teacher": {"weights": weights,
                                                                                 "chosen_on": chosen_on}}))

    write("cache_fused", {"teacher": 1.0 if teacher > 0.5 else 0.4, "bm25": 0.0 if teacher > 0.5 else 0.6},
          {"teacher": teacher, "bm25": 0.5})
    if ensemble:
        write("cache_ensemble", {"teacher": 0.1, "bm25": 0.3, "zero_shot": 0.6},
              {"teacher": teacher, "bm25": 0.5, "zero_shot": 0.6})
    choice = student_cache(tmp_path)
    assert choice["teacher"] == chosen
    assert choice["cache"] == str(tmp_path / {"ensemble": "cache_ensemble", "fused": "cache_fused",
                                              "trained": "cache"}[chosen])
