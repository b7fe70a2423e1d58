"""Teachers: parity with sentence-transformers, batching, prompts, precision policy, loading, sanity."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tiny
import torch

from distill import hardware
from distill.core.errors import ConfigError, InputError
from distill.data.beir import load_beir
from distill.inference.batching import token_batches
from distill.inference.device import cpu_supports_bf16
from distill.inference.quantize import int8_engine
from distill.rankers.base import Ranker
from teachers import (
    CrossEncoderTeacher,
    GenerativeTeacher,
    PromptTemplate,
    Teacher,
    check_teacher,
    load_teacher,
    precision,
)
from teachers.generative import fit_body


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory) -> Path:
    """A tiny Qwen2 causal LM with a byte-level BPE tokenizer ("yes" and "no" single tokens).

    Built here rather than with ``tiny.build_causal_lm``: that tokenizer's split pattern is
    a literal string, not a regex, and transformers reloads it as a Qwen2 BPE tokenizer, so
    it maps nearly all text to a handful of ids, which truncation tests cannot use.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny_lm_bpe")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([" ".join(tiny.WORDS), "yes no yes no", "Query Document Instruct Judge"] * 5, trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>").save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cross_encoder(tiny_cross_encoder, tmp_path_factory) -> Path:
    """The tiny cross-encoder with its head scaled up: random heads score within 1e-3 of each other,
    too close for a 1e-4 tolerance to mean anything."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny_ce_sharp")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder)
    with torch.no_grad():
        model.classifier.weight.mul_(1000.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def headless_bert(tiny_cross_encoder, tmp_path_factory) -> Path:
    """A BERT checkpoint without a classification head (like a bi-encoder backbone)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("headless_bert")
    config = BertConfig.from_pretrained(tiny_cross_encoder)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(folder)
    return folder


def mixed_pairs(n: int = 24, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short and long (beyond 128 tokens) pairs, shuffled."""
    rng = random.Random(seed)
    lengths = [rng.choice([1, 3, 20, 60, 200]) for _ in range(n)]
    queries = [" ".join(rng.choices(tiny.WORDS, k=rng.choice([1, 4, 30]))) for _ in range(n)]
    docs = [" ".join(rng.choices(tiny.WORDS, k=k)) for k in lengths]
    return queries, docs


# -- cross-encoder -------------------------------------------------------------------------------


def test_cross_encoder_scores_are_raw_predict_logits(cross_encoder):
    from sentence_transformers import CrossEncoder

    queries, docs = mixed_pairs()
    expected = CrossEncoder(str(cross_encoder)).predict(list(zip(queries, docs)), activation_fn=torch.nn.Identity())
    scores = CrossEncoderTeacher(cross_encoder, max_length=128).score(queries, docs)
    assert scores.dtype == np.float32 and scores.shape == (len(queries),)
    assert np.ptp(scores) > 0.05 and ((scores < 0) | (scores > 1)).any()  # raw logits, not sigmoid
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_two_label_models_score_label_one_minus_label_zero(tiny_cross_encoder, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig.from_pretrained(tiny_cross_encoder, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_cross_encoder).save_pretrained(tmp_path)
    queries, docs = mixed_pairs(8)
    logits = CrossEncoder(str(tmp_path)).predict(list(zip(queries, docs)), activation_fn=torch.nn.Identity())
    teacher = CrossEncoderTeacher(tmp_path, max_length=128)
    np.testing.assert_allclose(teacher.score(queries, docs), logits[:, 1] - logits[:, 0], atol=1e-6)


def test_max_length_beyond_the_positions_is_refused(cross_encoder):
    with pytest.raises(ConfigError, match="128 positions"):
        CrossEncoderTeacher(cross_encoder, max_length=512)


def test_token_budget_changes_batches_not_scores(cross_encoder):
    queries, docs = mixed_pairs()
    small, large = (CrossEncoderTeacher(cross_encoder, max_length=128, max_tokens_per_batch=b) for b in (40, 10**6))
    calls: list[int] = []
    np.testing.assert_allclose(small.score(queries, docs, progress=calls.append), large.score(queries, docs),
                               atol=1e-5)
    assert sum(calls) == len(queries) and len(calls) > 5


def test_token_batches_stay_within_budget():
    lengths = np.array([5, 50, 7, 30, 30, 2, 100])
    batches = list(token_batches(lengths, max_tokens=60))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert batches[0].tolist() == [6]  # longer than the budget: alone
    assert all(len(b) * lengths[b].max() <= 60 for b in batches[1:])


def test_untrained_head_is_refused_unless_allowed(headless_bert):
    with pytest.raises(ConfigError, match="--allow-untrained-head") as err:
        CrossEncoderTeacher(headless_bert, max_length=128)
    assert "classifier.weight" in str(err.value)
    teacher = CrossEncoderTeacher(headless_bert, max_length=128, allow_untrained_head=True)
    assert teacher.score(["apple"], ["apple pear"]).shape == (1,)


def test_teacher_is_a_ranker(tiny_cross_encoder, tiny_beir):
    dataset = load_beir(tiny_beir, "test")
    run = pl.DataFrame({"qid": ["q0_0", "q0_0", "q1_0"], "docid": ["d0_0", "d1_1", "d1_0"]})
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    assert isinstance(teacher, Ranker)
    reranked = teacher.rerank(dataset, run)
    assert reranked.select("qid", "docid").equals(run)
    expected = teacher.score(dataset.query_texts(run["qid"]), dataset.doc_texts(run["docid"]))
    np.testing.assert_allclose(reranked["score"].to_numpy(), expected, atol=1e-6)
    with pytest.raises(InputError, match="nope"):
        teacher.rerank(dataset, pl.DataFrame({"qid": ["q0_0"], "docid": ["nope"]}))


# -- generative ----------------------------------------------------------------------------------


def single_pair_score(teacher: GenerativeTeacher, model, query: str, doc: str) -> float:
    """logit(yes) - logit(no) at the last position, the prompt's parts tokenized as Qwen3-Reranker does."""
    template, tok = teacher.template, teacher.tokenizer
    body = template.body.format(instruction=teacher.instruction, query=query, document=doc)
    ids = [tok(part, add_special_tokens=False)["input_ids"] for part in (template.prefix, body, template.suffix)]
    with torch.no_grad():
        logits = model(torch.tensor([sum(ids, [])])).logits[0, -1]
    return float(logits[teacher.yes_id] - logits[teacher.no_id])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_generative_batch_matches_single_pairs(causal_lm, padding_side):
    from transformers import AutoModelForCausalLM

    teacher = GenerativeTeacher(causal_lm, max_length=512)
    teacher.padding_side = padding_side
    queries = ["apple banana", "river", "what about the heart and the lung", "engine"]
    docs = ["apple pear plum " * 5, "river ocean", "cell gene protein virus blood heart", "train " * 30]
    model = AutoModelForCausalLM.from_pretrained(causal_lm).eval()
    expected = [single_pair_score(teacher, model, q, d) for q, d in zip(queries, docs)]
    lengths = {len(ids) for ids in teacher._encode(queries, docs)["input_ids"]}
    assert len(lengths) == len(queries)  # every row is padded differently
    np.testing.assert_allclose(teacher.score(queries, docs), expected, atol=1e-4)


def test_truncation_cuts_the_document_and_keeps_the_suffix(causal_lm):
    template = PromptTemplate(prefix="<|im_start|>user\n", body="Query: {query}\nDocument: {document}\nAnswer",
                              suffix="<|im_end|>\n<|im_start|>assistant\n")
    teacher = GenerativeTeacher(causal_lm, max_length=60, template=template)
    query, doc = "heart and lung", "river ocean lake " * 40
    (ids,) = teacher._encode([query], [doc])["input_ids"]
    text = teacher.tokenizer.decode(ids)
    assert len(ids) == 60
    assert ids[-len(teacher.suffix_ids):] == teacher.suffix_ids and ids[:len(teacher.prefix_ids)] == teacher.prefix_ids
    assert "Query: heart and lung\nDocument: river ocean" in text and text.endswith("\nAnswer" + template.suffix)
    (short,) = teacher._encode([query], ["river"])["input_ids"]
    assert teacher.tokenizer.decode(short) == template.prefix + "Query: heart and lung\nDocument: river\nAnswer" + \
        template.suffix


def test_fit_body_drops_document_then_query_tokens():
    # body "q1 q2|d1 d2 d3": tokens with their character spans
    ids = [1, 2, 9, 3, 4, 5]
    offsets = [(0, 2), (3, 5), (5, 6), (6, 8), (9, 11), (12, 14)]
    spans = {"query": (0, 5), "document": (6, 14)}
    assert fit_body(ids, offsets, spans, room=6) == ids
    assert fit_body(ids, offsets, spans, room=4) == [1, 2, 9, 3]
    assert fit_body(ids, offsets, spans, room=2) == [1, 9]
    with pytest.raises(ConfigError):
        fit_body(ids, offsets, spans, room=0)


def test_missing_answer_token_is_a_config_error(causal_lm):
    with pytest.raises(ConfigError, match="yes_token"):
        GenerativeTeacher(causal_lm, yes_token="definitely")


def test_template_needs_query_and_document():
    with pytest.raises(ConfigError, match="document"):
        PromptTemplate(prefix="", body="{query}", suffix="")


# -- identity ------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_follows_what_changes_scores(tiny_cross_encoder, causal_lm):
    first = CrossEncoderTeacher(tiny_cross_encoder, max_length=128).fingerprint()
    assert first == CrossEncoderTeacher(tiny_cross_encoder, max_length=128).fingerprint()
    assert first != CrossEncoderTeacher(tiny_cross_encoder, max_length=64).fingerprint()
    assert first["dtype"] == "fp32" and len(first["weights_sha256"]) == 64
    json.dumps(first)

    generative = GenerativeTeacher(causal_lm).fingerprint()
    assert generative == GenerativeTeacher(causal_lm).fingerprint()
    other = PromptTemplate(prefix="", body="{query} | {document}", suffix=" relevant:")
    assert generative != GenerativeTeacher(causal_lm, template=other).fingerprint()
    assert generative != GenerativeTeacher(causal_lm, instruction="Find papers").fingerprint()
    json.dumps(generative)


def test_load_teacher_detects_the_kind(tiny_cross_encoder, causal_lm, tiny_causal_lm):
    assert isinstance(load_teacher(tiny_cross_encoder, max_length=128), CrossEncoderTeacher)
    assert isinstance(load_teacher(causal_lm), GenerativeTeacher)
    assert load_teacher(tiny_causal_lm).kind == "generative"
    with pytest.raises(InputError, match="not found"):
        load_teacher("/no/such/model")
    with pytest.raises(ConfigError, match="cross-encoder, generative"):
        load_teacher(tiny_cross_encoder, kind="bi-encoder")


def test_importing_teachers_leaves_torch_unloaded():
    code = "import sys, teachers; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- precision -----------------------------------------------------------------------------------


def test_precision_decision_on_fake_scores():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=256)
    assert precision.judge_precision(reference, reference + rng.normal(scale=1e-4, size=256), "bf16").passed
    assert not precision.judge_precision(reference, reference + rng.normal(scale=0.3, size=256), "bf16").passed
    assert not precision.judge_precision(reference, np.full(256, np.nan), "fp16").passed
    assert not precision.judge_precision(np.ones(256), np.ones(256), "fp16").passed


def test_the_fidelity_check_lets_near_ties_swap_and_nothing_else():
    """bf16 on a trained MiniLM teacher swapped a few near-tied pairs of a 32-pair sample (Spearman 0.9989, every score
    within 0.013 of fp32's): not a reason to pay for fp32. A reordering of the sample is."""
    reference = np.linspace(-5.0, 5.0, 32)
    ties = [5, 15, 25]
    reference[ties] = reference[[t + 1 for t in ties]] - 0.01  # three near-ties, 0.01 apart (the std is about 3)
    near = reference.copy()
    for t in ties:
        near[[t, t + 1]] = near[[t + 1, t]]
    check = precision.judge_precision(reference, near, "bf16")
    assert check.spearman < 0.999 and check.passed and check.discordant == 0
    one = reference.copy()
    one[[0, 1]] = one[[1, 0]]  # one clear reversal of 496 couples: rounding, not a broken compute
    check = precision.judge_precision(reference, one, "bf16")
    assert check.discordant == 1 and check.passed
    clear = reference.copy()
    clear[[0, 31]] = clear[[31, 0]]  # the lowest scored highest: 61 couples reversed
    check = precision.judge_precision(reference, clear, "bf16")
    assert check.discordant == 61 and not check.passed
    coarse = np.round(reference / 2) * 2 + np.linspace(0, -0.5, 32)  # rounding coarse against the scores' spread
    assert not precision.judge_precision(reference, coarse, "bf16").passed


@pytest.mark.isa
def test_auto_dtype_candidates(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor : 0\nflags : fpu sse avx2 avx512f amx_bf16\n")
    assert cpu_supports_bf16(flags)
    flags.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not cpu_supports_bf16(flags)
    monkeypatch.undo()  # the real native_precisions, on a faked CPU
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the faked flags decide, in a capped run too
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    candidates = precision.candidate_computes
    graphs = ("onnx", "openvino")
    assert candidates("auto", cpu) == ("fp32",)
    assert candidates("auto", cpu, "auto", graphs) == ("fp32", "onnx:fp32", "openvino:fp32")
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    assert candidates("auto", cpu) == ("fp32", "bf16")
    assert candidates("auto", cpu, "auto", graphs) == ("fp32", "bf16", "onnx:fp32", "openvino:fp32", "openvino:bf16")
    assert candidates("auto", cpu, "torch", graphs) == ("fp32", "bf16")  # --backend torch: no graph runtime
    assert candidates("fp16", cpu, "auto", graphs) == ("fp32", "fp16")  # an explicit dtype stays in torch
    assert candidates("fp32", cpu) == ("fp32",)
    assert candidates("auto", cpu, "openvino", graphs) == ("fp32", "openvino:fp32")
    assert candidates("bf16", cpu, "openvino", graphs) == ("fp32", "openvino:bf16")
    assert candidates("auto", torch.device("mps")) == ("fp32",)
    with pytest.raises(ConfigError, match="auto, fp32, bf16, fp16, int8"):
        candidates("int4", cpu)
    monkeypatch.setattr(precision, "int8_available", lambda device_type: device_type == "cpu")  # a quantized engine
    assert candidates("auto", cpu, "auto", graphs, quantizable=True) == (
        "fp32", "bf16", "int8", "onnx:fp32", "openvino:fp32", "openvino:bf16")
    assert candidates("auto", cpu) == ("fp32", "bf16")  # a teacher that cannot be quantized (generative)
    assert candidates("int8", cpu, quantizable=True) == ("fp32", "int8")
    with pytest.raises(ConfigError, match="int8 is computed on a CPU"):
        candidates("int8", cpu)
    with pytest.raises(ConfigError, match="int8 is computed on a CPU"):
        candidates("int8", torch.device("cuda"), quantizable=True)
    with pytest.raises(ConfigError, match="auto, torch, onnx, openvino"):
        candidates("auto", cpu, "tensorrt")
    with pytest.raises(ConfigError, match="not available here"):
        candidates("auto", cpu, "onnx", ())
    with pytest.raises(ConfigError, match="computes in fp32, not bf16"):
        candidates("bf16", cpu, "onnx", graphs)


@pytest.mark.parametrize(("cap", "native"), [(None, ("bf16",)), ("AVX2", ()), ("avx512_core_vnni", ()),
                                              ("AVX512_CORE_AMX", ("bf16",)), ("ALL", ("bf16",))])
def test_a_process_capped_below_bf16_has_no_native_bf16(monkeypatch, cap, native):
    """A run capped as an AVX2 machine (ONEDNN_MAX_CPU_ISA, docs/cpus.md) on a bf16 CPU chooses as that machine
    would: bf16 is not native there, so "auto" does not time it."""
    monkeypatch.undo()  # the real native_precisions, on a faked CPU
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: True)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert hardware.native_precisions("cpu") == native
    assert precision.candidate_computes("auto", torch.device("cpu")) == ("fp32", *native)
    assert hardware.isa_capped_below_bf16({"DNNL_MAX_CPU_ISA": "AVX2"}) and not hardware.isa_capped_below_bf16({})


@pytest.mark.isa
@pytest.mark.parametrize("dtype", ["bf16", "int8"])
@pytest.mark.parametrize("passes", [True, False])
def test_reduced_precision_is_used_only_after_the_check(tiny_cross_encoder, monkeypatch, caplog, passes, dtype):
    judged = []

    def judge(reference, candidate, dtype, tie_share=precision.TIE_SHARE):
        judged.append(len(reference))
        return precision.PrecisionCheck(dtype, 1.0 if passes else 0.5, passes)

    monkeypatch.setattr(precision, "judge_precision", judge)
    queries, docs = mixed_pairs()
    if dtype == "int8" and int8_engine() is None:
        pytest.skip("this torch build has no quantized CPU engine")
    monkeypatch.setattr(precision, "int8_available", lambda device_type: device_type == "cpu")
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128, dtype=dtype)
    with pytest.raises(RuntimeError, match="settle_precision"):
        teacher.fingerprint()
    with caplog.at_level(logging.WARNING, logger="teachers.precision"):
        scores = teacher.score(queries, docs)
    assert judged == [len(queries)]
    linear = teacher.model.classifier  # a Linear: cast down, or replaced by a dynamic int8 one
    if passes:
        assert teacher.fingerprint()["dtype"] == dtype and not caplog.records
        assert linear.weight().dtype == torch.qint8 if dtype == "int8" else linear.weight.dtype == torch.bfloat16
    else:
        assert teacher.fingerprint()["dtype"] == "fp32" and linear.weight.dtype == torch.float32
        assert f"{dtype} scores do not rank like fp32" in caplog.text
        fp32 = CrossEncoderTeacher(tiny_cross_encoder, max_length=128).score(queries, docs)
        np.testing.assert_array_equal(scores, fp32)


# -- sanity --------------------------------------------------------------------------------------


class QrelsTeacher(Teacher):
    """Scores a pair by its relevance label times ``sign`` (no model)."""

    kind = "fake"

    def __init__(self, dataset, sign: float) -> None:  # no model to load
        self.name, self.sign = f"qrels{sign:+}", sign
        texts = zip(dataset.query_texts(dataset.qrels["qid"]), dataset.doc_texts(dataset.qrels["docid"]))
        self.labels = dict(zip(texts, dataset.qrels["relevance"].to_list()))

    def score(self, queries, docs, progress=None):
        return np.array([self.sign * self.labels.get((q, d), 0) for q, d in zip(queries, docs)], dtype=np.float32)

    _load = _encode = _forward = None


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_check_teacher_warns_when_positives_lose(tiny_beir, caplog, sign):
    dataset = load_beir(tiny_beir, "test")
    run = dataset.queries.select("qid").join(dataset.corpus.select("docid"), how="cross")
    with caplog.at_level(logging.WARNING, logger="teachers.sanity"):
        report = check_teacher(QrelsTeacher(dataset, sign), dataset, run, n_queries=5)
    assert report["n_queries"] == 5 and report["n_pairs"] > 5 * 4
    assert report["ok"] == (sign > 0)
    assert report["win_rate"] == (1.0 if sign > 0 else 0.0)
    assert ("does not rank judged positives" in caplog.text) == (sign < 0)


class FakeModel:
    """A model for choose_precision: pair i scores i (plus an error per precision), and scoring
    advances a fake clock by its precision's seconds per pair."""

    def __init__(self, seconds_per_pair: dict[str, float], bad: frozenset[str] = frozenset()) -> None:
        self.cost, self.bad = seconds_per_pair, bad
        self.dtype, self.clock, self.events = "fp32", 0.0, []

    def score(self, queries, docs):
        self.clock += self.cost[self.dtype] * len(queries)
        scores = np.array([float(q[1:]) for q in queries])
        if self.dtype in self.bad:
            return np.random.default_rng(0).permutation(scores)
        return scores + (0.0 if self.dtype == "fp32" else 1e-3)

    def cast(self, dtype):
        assert self.dtype == "fp32", "cast from fp32 weights only"
        self.dtype = dtype
        self.events.append(dtype)

    def restore(self):
        self.dtype = "fp32"
        self.events.append("restore")

    def choose(self, candidates, timed=True, **options):
        queries = [f"q{i}" for i in range(100)]
        return precision.choose_precision(self.score, self.cast, self.restore, candidates, queries, queries, "fake",
                                          timed=timed, timer=lambda: self.clock, **options)


@pytest.mark.parametrize("costs, bad, expected", [
    ({"fp32": 1.0, "bf16": 1.5}, set(), "fp32"),  # slower, though it ranks like fp32
    ({"fp32": 1.0, "bf16": 0.99}, set(), "fp32"),  # within timing noise of fp32
    ({"fp32": 1.0, "bf16": 0.6}, set(), "bf16"),  # faster and ranks like fp32
    ({"fp32": 1.0, "bf16": 0.6}, {"bf16"}, "fp32"),  # faster but ranks unlike fp32
    ({"fp32": 1.0, "fp16": 0.4, "bf16": 0.6}, {"fp16"}, "bf16"),  # the fastest that passes
    ({"fp32": 1.0, "fp16": 0.4, "bf16": 0.6}, set(), "fp16"),
])
def test_auto_keeps_the_fastest_precision_that_ranks_like_fp32(costs, bad, expected):
    model = FakeModel(costs, frozenset(bad))
    choice = model.choose(tuple(costs))
    assert choice.dtype == expected == model.dtype  # the model is left in the chosen precision
    assert model.events.count("restore") == sum(1 for d in model.events[:-1] if d != "restore")
    n = len(choice.index)
    assert n == precision.SAMPLE_PAIRS
    np.testing.assert_array_equal(choice.scores, model.score([f"q{i}" for i in choice.index], []))
    record = choice.to_dict()
    assert record["dtype"] == expected and record["sample_pairs"] == n
    measured = {m["dtype"]: m for m in record["measured"]}
    assert set(measured) == set(costs)
    for dtype, m in measured.items():
        assert m["seconds"] == pytest.approx(costs[dtype] * n)  # timed after the warm-up batch
        assert m["pairs_per_s"] == pytest.approx(1 / costs[dtype], rel=1e-3)
        assert m["passed"] == (dtype not in bad)
    assert measured["fp32"]["spearman"] is None
    json.dumps(record)


@pytest.mark.parametrize("min_run_seconds, expected", [(1e9, "bf16"), (50.0, "openvino:bf16")])
def test_graph_runtimes_are_tried_only_on_runs_long_enough_to_pay_for_their_export(min_run_seconds, expected):
    """100 pairs at 0.6 s each in torch bf16 take 60 s: a graph runtime (exported first) is tried only when that is at
    least the minimum, and then kept only when it measures fastest and ranks like fp32."""
    costs = {"fp32": 1.0, "bf16": 0.6, "onnx:fp32": 1.2, "openvino:fp32": 0.9, "openvino:bf16": 0.5}
    model = FakeModel(costs)
    choice = model.choose(tuple(costs), min_graph_run_seconds=min_run_seconds)
    assert choice.dtype == expected == model.dtype
    record = choice.to_dict()
    tried = [m["dtype"] for m in record["measured"]]
    if expected == "bf16":
        assert tried == ["fp32", "bf16"] and record["skipped"]["computes"] == ["onnx:fp32", "openvino:fp32",
                                                                                "openvino:bf16"]
    else:
        assert tried == list(costs) and "skipped" not in record
        assert all("setup_seconds" in m for m in record["measured"][1:])


def test_explicit_reduced_precision_is_checked_not_timed():
    slow = FakeModel({"fp32": 1.0, "bf16": 2.0})
    assert slow.choose(("fp32", "bf16"), timed=False).dtype == "bf16"  # asked for, so kept though slower
    assert slow.clock == 2 * precision.SAMPLE_PAIRS * 1.5  # no warm-up batches
    bad = FakeModel({"fp32": 1.0, "bf16": 0.5}, frozenset({"bf16"}))
    choice = bad.choose(("fp32", "bf16"), timed=False)
    assert choice.dtype == bad.dtype == "fp32" and choice.measurements[1].seconds is None


@pytest.fixture
def fake_bf16(monkeypatch):
    """A CPU with native bf16 on which the tiny model runs bf16 twice as fast as fp32 and ranks
    like fp32 (both faked: the tiny model's own timings and bf16 ranks are machine noise)."""
    monkeypatch.setattr(precision, "native_precisions", lambda device_type: ("bf16",))
    monkeypatch.setattr(precision, "judge_precision",
                        lambda reference, candidate, dtype, **_: precision.PrecisionCheck(dtype, 1, True))
    clock = {"t": 0.0, "model": None}

    def timer():
        weights = next(clock["model"].parameters()).dtype
        clock["t"] += 1.0 if weights == torch.float32 else 0.5
        return clock["t"]

    monkeypatch.setattr(precision, "perf_counter", timer)
    monkeypatch.setattr(precision, "process_time", timer)
    return clock


def counting(teacher: Teacher) -> list[int]:
    """Count the pairs ``teacher`` runs through its model, call by call."""
    calls: list[int] = []
    inner = teacher._score

    def score(queries, docs, progress=None):
        calls.append(len(queries))
        return inner(queries, docs, progress)

    teacher._score = score
    return calls


@pytest.mark.isa
def test_score_teacher_measures_once_keeps_the_sample_and_resumes_in_that_precision(
        tiny_cross_encoder, tiny_beir, tmp_path, fake_bf16, monkeypatch):
    from distill.cache.store import TeacherCache, read_scores
    from distill.core.errors import CacheMismatchError
    from distill.data.bm25 import bm25_run
    from teachers import score_teacher

    dataset = load_beir(tiny_beir, "train")
    run = bm25_run(dataset, 10)
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    fake_bf16["model"] = teacher.model
    calls = counting(teacher)
    result = score_teacher(teacher, dataset, run.head(120), tmp_path / "cache", show_progress=False)

    assert result.dtype == teacher.dtype == "bf16" and result.fingerprint["dtype"] == "bf16"
    assert next(teacher.model.parameters()).dtype == torch.bfloat16
    scores, manifest = read_scores(tmp_path / "cache")
    assert manifest["teacher"]["dtype"] == "bf16" and manifest["precision"] == result.precision
    assert [m["dtype"] for m in manifest["precision"]["measured"]] == ["fp32", "bf16"]
    assert manifest["precision"]["measured"][1]["pairs_per_s"] > manifest["precision"]["measured"][0]["pairs_per_s"]
    # the sample's scores are cache rows; the sanity check read them back and kept what it scored
    n = precision.SAMPLE_PAIRS
    assert result.sample_scored == n and result.sanity["reused"] > 0
    assert result.sample_scored + result.sanity["kept"] + result.scoring.scored == 120 == scores.height
    measuring = 2 * (precision.WARMUP_PAIRS + n)  # warm-up and timed sample, in fp32 and in bf16
    sanity_only = result.sanity["n_pairs"] - result.sanity["reused"] - result.sanity["kept"]  # judged, not candidates
    assert sum(calls) == measuring + result.sanity["kept"] + sanity_only + result.scoring.scored
    again = teacher.score(dataset.query_texts(scores["qid"]), dataset.doc_texts(scores["docid"]))
    np.testing.assert_allclose(again, scores["score"].to_numpy(), atol=1e-6)

    # a resumed run (a new process: auto again) scores the rest in the recorded precision, unmeasured
    chosen = []
    monkeypatch.setattr(precision, "choose_precision", lambda *a, **k: chosen.append(a))
    resumed = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    later = score_teacher(resumed, dataset, run, tmp_path / "cache", show_progress=False)
    assert not chosen and later.reused_precision and later.precision is None and resumed.dtype == "bf16"
    assert later.scored == later.sanity["kept"] + later.scoring.scored == run.height - 120
    assert TeacherCache.open(tmp_path / "cache").manifest["precision"] == result.precision

    # an explicit precision still wins: it is another teacher for this cache
    with pytest.raises(CacheMismatchError, match="dtype"):
        score_teacher(tiny_cross_encoder, dataset, run, tmp_path / "cache", dtype="fp32", max_length=128)


def test_score_teacher_refuses_a_file_as_cache(tiny_cross_encoder, tiny_beir, tmp_path):
    from distill.data.bm25 import bm25_run
    from teachers import score_teacher

    dataset = load_beir(tiny_beir, "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="folder"):
        score_teacher(tiny_cross_encoder, dataset, bm25_run(dataset, 3), tmp_path / "file", max_length=128)


@pytest.mark.isa
def test_score_teacher_weighs_an_export_against_every_pair_it_will_score(tiny_cross_encoder, tiny_beir, tmp_path,
                                                                        fake_bf16, monkeypatch):
    """Whether a graph runtime's export can pay off depends on the run's pairs, not on the sample it is timed on."""
    from distill.data.bm25 import bm25_run
    from distill.rankers.base import SETTLE_PAIRS
    from teachers import base, score_teacher

    totals = []
    choose = base.choose_precision
    monkeypatch.setattr(base, "choose_precision", lambda *a, **kw: totals.append(kw["total_pairs"]) or choose(*a, **kw))
    dataset = load_beir(tiny_beir, "train")
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    fake_bf16["model"] = teacher.model
    score_teacher(teacher, dataset, bm25_run(dataset, 10).head(120), tmp_path / "cache", show_progress=False,
                  sanity_check=False)
    assert totals == [120] and SETTLE_PAIRS < 120


@pytest.mark.isa
def test_first_score_call_keeps_the_measured_sample(tiny_cross_encoder, fake_bf16):
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=128)
    fake_bf16["model"] = teacher.model
    calls = counting(teacher)
    queries, docs = mixed_pairs(50)
    scores = teacher.score(queries, docs)
    assert teacher.dtype == "bf16" and teacher.precision["dtype"] == "bf16"
    n = precision.SAMPLE_PAIRS
    assert sum(calls) == 2 * (precision.WARMUP_PAIRS + n) + (50 - n)  # the sample is not scored again
    np.testing.assert_allclose(scores, teacher.score(queries, docs), atol=1e-6)


# -- untrained head ------------------------------------------------------------------------------


def test_untrained_head_is_drawn_from_its_seed(headless_bert, tiny_cross_encoder):
    queries, docs = mixed_pairs(8)
    scores = []
    for global_seed in (1, 2):  # what transformers would draw a fresh head from
        torch.manual_seed(global_seed)
        teacher = CrossEncoderTeacher(headless_bert, max_length=128, allow_untrained_head=True)
        scores.append(teacher.score(queries, docs))
    np.testing.assert_array_equal(*scores)
    other = CrossEncoderTeacher(headless_bert, max_length=128, allow_untrained_head=True, head_seed=1)
    assert not np.allclose(other.score(queries, docs), scores[0])
    fingerprint = CrossEncoderTeacher(headless_bert, max_length=128, allow_untrained_head=True).fingerprint()
    assert fingerprint["allow_untrained_head"] is True and fingerprint["head_seed"] == 0
    assert other.fingerprint()["head_seed"] == 1
    # a trained head ignores both options, and so does the fingerprint
    trained = CrossEncoderTeacher(tiny_cross_encoder, max_length=128, allow_untrained_head=True, head_seed=5)
    assert "head_seed" not in trained.fingerprint()
    assert trained.fingerprint() == CrossEncoderTeacher(tiny_cross_encoder, max_length=128).fingerprint()


@pytest.mark.isa
def test_a_cache_fingerprint_rebuilds_its_teacher_in_its_precision(headless_bert, causal_lm, tmp_path):
    from distill.core.errors import CacheMismatchError
    from teachers import teacher_from_fingerprint

    queries, docs = mixed_pairs(6)
    teacher = CrossEncoderTeacher(headless_bert, max_length=128, allow_untrained_head=True, head_seed=3)
    teacher.use_precision("bf16")
    rebuilt = teacher_from_fingerprint(teacher.fingerprint())
    assert rebuilt.fingerprint() == teacher.fingerprint() and not rebuilt.precision_pending
    assert next(rebuilt.model.parameters()).dtype == torch.bfloat16
    np.testing.assert_array_equal(rebuilt.score(queries, docs), teacher.score(queries, docs))

    generative = GenerativeTeacher(causal_lm, instruction="Find papers", dtype="fp32")
    assert teacher_from_fingerprint(generative.fingerprint()).fingerprint() == generative.fingerprint()
    with pytest.raises(CacheMismatchError, match="weights_sha256"):
        teacher_from_fingerprint({**generative.fingerprint(), "weights_sha256": "0" * 64})
