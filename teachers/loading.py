"""``load_teacher``: build a teacher by kind, or by reading the model's config."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, InputError
from teachers.base import Teacher, check_model_reference
from teachers.cross_encoder import CrossEncoderTeacher
from teachers.generative import GenerativeTeacher

TEACHERS: dict[str, type[Teacher]] = {
    CrossEncoderTeacher.kind: CrossEncoderTeacher,
    GenerativeTeacher.kind: GenerativeTeacher,
}
KINDS = ("auto", *TEACHERS)


def detect_kind(model_name_or_path: str | Path, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """"generative" for a causal LM (an architecture ending in ``ForCausalLM``), else "cross-encoder"."""
    from transformers import AutoConfig

    check_model_reference(model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(str(model_name_or_path), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the model config: {err}", path=str(model_name_or_path)) from err
    architectures = getattr(config, "architectures", None) or []
    return GenerativeTeacher.kind if any(a.endswith("ForCausalLM") for a in architectures) else CrossEncoderTeacher.kind


def load_teacher(model_name_or_path: str | Path, kind: str = "auto", **kwargs: Any) -> Teacher:
    """A teacher of ``kind`` (one of :data:`KINDS`); ``kwargs`` go to its constructor.

    An option the kind does not take is dropped when unset (None or False), so callers may
    pass every option they offer; set, it is a :class:`ConfigError`.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown teacher kind {kind!r}; choose from {', '.join(KINDS)}", field="kind")
    if kind == "auto":
        kind = detect_kind(model_name_or_path, kwargs.get("revision"), kwargs.get("trust_remote_code", False))
    cls = TEACHERS[kind]
    accepted = inspect.signature(cls.__init__).parameters
    for name in [n for n in kwargs if n not in accepted]:
        if kwargs.pop(name) not in (None, False):
            raise ConfigError(f"option {name} does not apply to a {kind} teacher", field=name)
    return cls(model_name_or_path, **kwargs)
