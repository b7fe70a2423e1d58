"""Tiny random models and a tiny BEIR dataset, built offline for the tests.

Models are saved to folders and loaded back through the same code paths as real ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "apple banana cherry grape lemon mango melon orange peach pear plum berry "
    "river ocean lake stream rain cloud storm wind snow ice "
    "engine motor wheel brake gear fuel road car truck train "
    "cell gene protein virus blood heart brain lung liver bone "
    "the a of and in on with for to is are was by from about what which how"
).split()

TOPICS = [WORDS[0:12], WORDS[12:22], WORDS[22:32], WORDS[32:42]]
FILLER = WORDS[42:]


def write_wordpiece_vocab(folder: Path) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + sorted(set(WORDS)) + ["yes", "no", "query", "document", ":"]
    vocab += list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return path


def build_bert_cross_encoder(folder: Path, seed: int = 0, num_layers: int = 2) -> Path:
    """A 2-layer, 32-hidden BERT with a 1-label head, saved as a CrossEncoder folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(seed)
    vocab = write_wordpiece_vocab(folder)
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True, model_max_length=128)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=1,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_bert_bi_encoder(folder: Path, seed: int = 0) -> Path:
    """A tiny BERT with mean pooling, saved as a SentenceTransformer folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    raw = folder / "raw"
    vocab = write_wordpiece_vocab(raw)
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True, model_max_length=128)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=128)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    out = folder / "model"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(out))
    return out


def build_causal_lm(folder: Path, seed: int = 0) -> Path:
    """A tiny Qwen2 causal LM whose word-level vocabulary has 'yes' and 'no' as single tokens."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    words = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    words += sorted(set(WORDS) | {"yes", "no", "Yes", "No"})
    words += list(':.,?!"<>|/\n') + ["system", "user", "assistant", "Query", "Document", "Instruct", "Judge"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(r"\w+|[^\w\s]|\n"), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>", padding_side="left")
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        pad_token_id=vocab["<pad>"], eos_token_id=vocab["<|im_end|>"], tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_beir(folder: Path, n_docs_per_topic: int = 10, n_queries_per_topic: int = 6, seed: int = 0) -> Path:
    """A tiny BEIR folder: 4 topics; a query's relevant documents share its topic (grade 1)
    and, for one, its two rarest words (grade 2). Queries split into train and test."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    docs, queries, qrels = [], [], {"train": [], "test": []}
    for t, topic in enumerate(TOPICS):
        topic_docs = []
        for i in range(n_docs_per_topic):
            words = rng.choices(topic, k=8) + rng.choices(FILLER, k=6) + rng.choices(WORDS[:42], k=2)
            rng.shuffle(words)
            docid = f"d{t}_{i}"
            docs.append({"_id": docid, "title": " ".join(rng.choices(topic, k=2)), "text": " ".join(words)})
            topic_docs.append((docid, set(words)))
        for j in range(n_queries_per_topic):
            qid = f"q{t}_{j}"
            target_id, target_words = topic_docs[j % n_docs_per_topic]
            on_topic = sorted(w for w in target_words if w in topic)
            qwords = rng.sample(on_topic, k=min(2, len(on_topic)))
            queries.append({"_id": qid, "text": " ".join(qwords + ["what", "about"])})
            split = "test" if j % 3 == 0 else "train"
            qrels[split].append((qid, target_id, 2))
            for docid, _ in rng.sample(topic_docs, k=3):
                if docid != target_id:
                    qrels[split].append((qid, docid, 1))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, d, r in rows]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``distill ARGS`` in-process as the console script does; returns (exit code, stdout, stderr)."""
    import sys

    from distill.app.cli import main

    argv = sys.argv
    sys.argv = ["distill", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes, to check that a failed command wrote nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def counting_loss(stop_at: int | None = None):
    """MarginMSE that counts its calls and raises KeyboardInterrupt at call ``stop_at``: a run
    stopped mid-training (Ctrl-C), to resume from its checkpoints."""
    from distill.training.losses import MarginMSE

    class Counting(MarginMSE):
        calls = 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            if self.calls == stop_at:
                raise KeyboardInterrupt("stopped")
            return super().forward(*args, **kwargs)

    return Counting()
