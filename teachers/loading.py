"""``load_teacher``: build a teacher by kind, or by reading the model's config."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from distill.core.errors import CacheMismatchError, ConfigError, InputError
from distill.inference.passages import PassageConfig
from teachers.base import Teacher, check_model_reference
from teachers.cross_encoder import CrossEncoderTeacher
from teachers.generative import GenerativeTeacher, PromptTemplate
from teachers.precision import compute_name

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


def teacher_from_fingerprint(fingerprint: dict[str, Any], **options: Any) -> Teacher:
    """The teacher a cache's fingerprint names, computing in the precision it records (unmeasured).

    For every process that scores into, or times, an existing cache: a resumed run, a
    scale-out worker, a latency measurement of the cached teacher. ``options`` give what
    the fingerprint leaves out (device, max_tokens_per_batch, trust_remote_code). A model
    whose files changed since is a :class:`CacheMismatchError`.
    """
    kind = fingerprint.get("kind")
    if kind not in TEACHERS or "model" not in fingerprint:
        raise ConfigError(f"the fingerprint names no teacher model ({fingerprint.get('kind')!r})", field="teacher")
    named = {"max_length": fingerprint.get("max_length"), "revision": fingerprint.get("revision")}
    if kind == GenerativeTeacher.kind:
        named |= {"template": PromptTemplate(**fingerprint["template"]), "instruction": fingerprint["instruction"],
                  "yes_token": fingerprint["yes_token"], "no_token": fingerprint["no_token"]}
    if fingerprint.get("allow_untrained_head"):
        named |= {"allow_untrained_head": True, "head_seed": fingerprint["head_seed"]}
    if fingerprint.get("passages"):
        named |= {"passages": PassageConfig(**fingerprint["passages"])}
    teacher = load_teacher(fingerprint["model"], kind=kind, dtype="fp32", **named, **options)
    teacher.use_precision(compute_name(fingerprint.get("backend", "torch"), fingerprint.get("dtype", "fp32")))
    if teacher.fingerprint() != fingerprint:
        raise CacheMismatchError("the teacher's files changed since the cache was scored: "
                                 + _diff(fingerprint, teacher.fingerprint()), path=fingerprint["model"])
    return teacher


def _diff(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    keys = sorted(set(recorded) | set(now))
    return "; ".join(f"{k}: cache has {recorded.get(k)!r}, now {now.get(k)!r}" for k in keys
                     if recorded.get(k) != now.get(k))
