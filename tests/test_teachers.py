"""Teachers: parity with sentence-transformers, batching, prompts, loading, identity (fingerprints) and untrained
heads."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import tiny
import torch

from distill.core.errors import ConfigError, InputError
from distill.data.beir import load_beir
from distill.inference.batching import token_batches
from distill.rankers.base import Ranker
from teachers import CrossEncoderTeacher, GenerativeTeacher, PromptTemplate, load_teacher
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
