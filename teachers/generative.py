"""Generative teachers: a causal LM asked whether the document answers the query.

The score is logit("yes") - logit("no") at the last position of the prompt, as in
Qwen3-Reranker, whose prompt is the default :data:`QWEN3_RERANKER_TEMPLATE`.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distill.core.errors import ConfigError
from teachers.base import Teacher

if TYPE_CHECKING:
    import torch

FIELDS = ("instruction", "query", "document")
TRUNCATION_ORDER = ("document", "query")  # what gives way, first to last, when a prompt is too long


@dataclass(frozen=True)
class PromptTemplate:
    """``prefix + body + suffix``; ``body`` holds ``{query}``, ``{document}`` and optionally
    ``{instruction}``. Only the body's document (then query) is ever truncated."""

    prefix: str
    body: str
    suffix: str

    def __post_init__(self) -> None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.body) if f is not None]
        except ValueError as err:
            raise ConfigError(f"prompt body is not a valid format string: {err}", field="template") from None
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown or any(fields.count(f) != 1 for f in ("query", "document")) or fields.count("instruction") > 1:
            raise ConfigError(f"prompt body must hold {{query}} and {{document}} once each, optionally "
                              f"{{instruction}}, and no other field; got {fields}", field="template")

    def render(self, instruction: str, query: str, document: str) -> tuple[str, dict[str, tuple[int, int]]]:
        """The body filled in, and the character span of each field in it."""
        values = {"instruction": instruction, "query": query, "document": document}
        parts: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        position = 0
        for literal, field, _, _ in string.Formatter().parse(self.body):
            parts.append(literal)
            position += len(literal)
            if field is not None:
                spans[field] = (position, position + len(values[field]))
                parts.append(values[field])
                position += len(values[field])
        return "".join(parts), spans


QWEN3_RERANKER_TEMPLATE = PromptTemplate(
    prefix="<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n',
    body="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
)
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def fit_body(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: dict[str, tuple[int, int]],
             room: int) -> list[int]:
    """Token ids of a rendered body cut to ``room`` tokens by dropping the document's last tokens,
    then the query's; ``offsets`` are each token's character span in the body."""
    excess = len(ids) - room
    if excess <= 0:
        return list(ids)
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    keep = np.ones(len(ids), dtype=bool)
    for field in TRUNCATION_ORDER:
        start, end = spans[field]
        inside = np.flatnonzero(keep & (bounds[:, 0] < end) & (bounds[:, 1] > start))
        dropped = inside[len(inside) - min(excess, len(inside)):]
        keep[dropped] = False
        excess -= len(dropped)
        if excess <= 0:
            return np.asarray(ids)[keep].tolist()
    raise ConfigError(f"the prompt without query and document takes more than max_length tokens ({room} left "
                      "after prefix and suffix)", field="max_length")


class GenerativeTeacher(Teacher):
    """A causal LM reranker scored by logit(yes) - logit(no) after a prompt holding the pair."""

    kind = "generative"
    # Left padding puts every row's last token in the last column, so only that column's
    # logits are computed; right padding is handled too (see _forward).
    padding_side = "left"

    def __init__(
        self,
        model_name_or_path: str | Path,
        max_length: int = 512,
        dtype: str = "auto",
        device: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        template: PromptTemplate | None = None,
        instruction: str | None = None,
        max_tokens_per_batch: int | None = None,
        yes_token: str = "yes",
        no_token: str = "no",
        backend: str = "auto",
    ) -> None:
        self.template = template or QWEN3_RERANKER_TEMPLATE
        self.instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
        self.yes_token, self.no_token = yes_token, no_token
        super().__init__(model_name_or_path, max_length=max_length, dtype=dtype, device=device, revision=revision,
                         trust_remote_code=trust_remote_code, max_tokens_per_batch=max_tokens_per_batch,
                         backend=backend)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        options = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, **options)
        if not tokenizer.is_fast:
            raise ConfigError("the model has no fast tokenizer; truncating documents needs its offsets",
                              path=self.model_name_or_path)
        vocab = tokenizer.get_vocab()
        for option, token in (("yes_token", self.yes_token), ("no_token", self.no_token)):
            if token not in vocab:
                raise ConfigError(f"{token!r} is not a single token of the model's vocabulary; set {option} to "
                                  "the model's answer token", path=self.model_name_or_path, field=option)
        self.yes_id, self.no_id = vocab[self.yes_token], vocab[self.no_token]
        self.prefix_ids = tokenizer(self.template.prefix, add_special_tokens=False)["input_ids"]
        self.suffix_ids = tokenizer(self.template.suffix, add_special_tokens=False)["input_ids"]
        if len(self.prefix_ids) + len(self.suffix_ids) >= self.max_length:
            raise ConfigError(f"the prompt prefix and suffix alone take {len(self.prefix_ids) + len(self.suffix_ids)} "
                              f"tokens, max_length is {self.max_length}", field="max_length")
        model = AutoModelForCausalLM.from_pretrained(self.model_name_or_path, dtype=torch.float32, **options)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad or 0
        self.keeps_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _encode(self, queries: Sequence[str], docs: Sequence[str]) -> dict[str, list[list[int]]]:
        rendered = [self.template.render(self.instruction, q, d) for q, d in zip(queries, docs)]
        encoded = self.tokenizer([body for body, _ in rendered], add_special_tokens=False,
                                 return_offsets_mapping=True, return_attention_mask=False)
        room = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        return {"input_ids": [
            self.prefix_ids + fit_body(ids, offsets, spans, room) + self.suffix_ids
            for ids, offsets, (_, spans) in zip(encoded["input_ids"], encoded["offset_mapping"], rendered)
        ]}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        mask = batch["attention_mask"]
        width = mask.shape[1]
        last = width - 1 - mask.flip(1).argmax(1)  # each row's last real token, whatever the padding side
        # Positions count real tokens only, so a padded row is computed like the pair alone.
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        aligned = bool((last == width - 1).all())
        keep = {"logits_to_keep": 1} if aligned and self.keeps_last_logits else {}
        logits = self.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, **keep).logits
        rows = logits[:, -1] if aligned else logits[torch.arange(len(last), device=last.device), last]
        return rows[:, self.yes_id].float() - rows[:, self.no_id].float()

    def _scoring_options(self) -> dict[str, Any]:
        return {"template": asdict(self.template), "instruction": self.instruction,
                "yes_token": self.yes_token, "no_token": self.no_token}
