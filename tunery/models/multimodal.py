"""Multimodal model families: how a vision- or audio-language model's processor is driven, in one table.

A *family* says how one kind of model (keyed by its ``config.model_type``) is driven through its own
processor: which chat-template content item a media part becomes, which processor argument takes the
decoded media, which token sequence opens a model turn and which token closes it, which token ids are
media placeholders, and which modules are the media tower and the projector (frozen unless opened).
Tuning (``tunery.tuning.multimodal``: loss masks, collation) and serving (``tunery.serving.multimodal``)
both read it.

Other modalities register their own family, as Qwen2-Audio does below (its decoding in
``tunery.models.multimodal_audio``)::

    from tunery.models.multimodal import Family, MediaKind, register_family

    register_family(Family(
        name="Qwen2-Audio", model_types=("qwen2_audio",),
        media={"audio": MediaKind("audio", "audio", decode_audio)},
        model_turn="<|im_start|>assistant\\n", end_of_turn="<|im_end|>",
        placeholder_tokens=("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"),
        tower=("model.audio_tower",), projector=("model.multi_modal_projector",),
    ))

``MediaKind.decode(part, source, processor)`` turns one part into what the processor takes
(a PIL image; a float32 mono array at the feature extractor's sampling rate).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunery.data import documents
from tunery.data.formats import Example, Part
from tunery.data.media import load_image, media_source, open_media
from tunery.errors import DatasetError, ModelError
from tunery.models.multimodal_audio import decode_audio, sampling_rate_of


@dataclass(frozen=True)
class MediaKind:
    """How one modality reaches a family's processor.

    ``content_type``: the chat-template content item's ``type`` (``"image"``, ``"audio"``);
    ``argument``: the processor's keyword for the decoded media (``"images"``, ``"audio"``);
    ``decode(part, source, processor)``: one part's decoded media, where ``source`` is the ``MediaSource``
    (or the JSONL file's folder) that relative ``fileUri`` values resolve against.
    """

    content_type: str
    argument: str
    decode: Callable[[Part, Any, Any], Any]
    nested: bool = True  # the processor takes one list per example (images); False: a flat list (audio)
    # extra processor keywords when this media is passed, e.g. audio's ``sampling_rate`` (from the processor)
    options: Callable[[Any], dict[str, Any]] = field(default=lambda processor: {}, compare=False)
    item: dict[str, Any] = field(default_factory=dict)  # more keys of the content item (templates that test them)


@dataclass(frozen=True)
class Family:
    """One model family: how its processor is driven and where its loss mask lies (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    media: dict[str, MediaKind]  # modality ("image", "audio") → how it is decoded and passed
    model_turn: str  # rendered text that opens a model turn, e.g. "<|im_start|>assistant\n"
    end_of_turn: str  # the special token that closes it, e.g. "<|im_end|>"
    placeholder_tokens: tuple[str, ...]  # media placeholder and delimiter tokens: never trained
    tower: tuple[str, ...]  # module-name prefixes of the vision/audio encoder (frozen unless --train-vision)
    projector: tuple[str, ...]  # module-name prefixes of the projector (frozen unless --train-projector)
    system_as_list: bool = True  # the template wants a system message's content as a list of items
    extra_placeholder_ids: Callable[[Any], set[int]] = field(default=lambda processor: set(), compare=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("text", *self.media)

    def placeholder_ids(self, processor: Any) -> set[int]:
        """Token ids that stand for media (never trained)."""
        tokenizer = processor.tokenizer
        ids = {tokenizer.convert_tokens_to_ids(t) for t in self.placeholder_tokens}
        ids |= self.extra_placeholder_ids(processor)
        unknown = tokenizer.unk_token_id
        return {i for i in ids if i is not None and i != unknown}


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` under each of its ``model_types`` (a later registration replaces an earlier one)."""
    for model_type in family.model_types:
        FAMILIES[model_type] = family
    return family


def family_of(config: Any) -> Family | None:
    """The registered family of a model config (an object or a ``config.json`` dict), or None for a text model."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    return FAMILIES.get(str(model_type))


def require_family(config: Any, where: str = "the model") -> Family:
    family = family_of(config)
    if family is None:
        model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
        known = ", ".join(sorted(FAMILIES))
        raise ModelError(f"{where}: model_type {model_type!r} is not a multimodal family tunery knows ({known})")
    return family


# Media decoding -----------------------------------------------------------------------------------------------------


def decode_image(part: Part, source: Any, processor: Any = None) -> Any:
    """One image part as an RGB PIL image."""
    return load_image(open_media(part, media_source(source)))


IMAGE = MediaKind("image", "images", decode_image)


# Families -------------------------------------------------------------------------------------------------------------


def _idefics3_extra(processor: Any) -> set[int]:
    tokenizer = processor.tokenizer
    pattern = re.compile(r"^<row_\d+_col_\d+>$")
    return {i for t, i in tokenizer.get_vocab().items() if pattern.match(t)}


QWEN2_VL = register_family(
    Family(
        name="Qwen2-VL",
        model_types=("qwen2_vl", "qwen2_5_vl"),
        media={"image": IMAGE},
        model_turn="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        placeholder_tokens=("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"),
        tower=("model.visual",),
        projector=("model.visual.merger",),
    )
)
GEMMA3 = register_family(
    Family(
        name="Gemma 3",
        model_types=("gemma3",),
        media={"image": IMAGE},
        model_turn="<start_of_turn>model\n",
        end_of_turn="<end_of_turn>",
        placeholder_tokens=("<image_soft_token>", "<start_of_image>", "<end_of_image>"),
        tower=("model.vision_tower",),
        projector=("model.multi_modal_projector",),
    )
)
IDEFICS3 = register_family(
    Family(
        name="Idefics3 / SmolVLM",
        model_types=("idefics3", "smolvlm"),
        media={"image": IMAGE},
        model_turn="Assistant:",
        end_of_turn="<end_of_utterance>",
        placeholder_tokens=("<image>", "<fake_token_around_image>", "<global-img>"),
        tower=("model.vision_model",),
        projector=("model.connector",),
        extra_placeholder_ids=_idefics3_extra,
    )
)
AUDIO = MediaKind(
    "audio",
    "audio",
    decode_audio,
    nested=False,
    options=lambda processor: {"sampling_rate": sampling_rate_of(processor)},
    item={"audio": None},
)
QWEN2_AUDIO = register_family(
    Family(
        name="Qwen2-Audio",
        model_types=("qwen2_audio",),
        media={"audio": AUDIO},
        model_turn="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        placeholder_tokens=("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"),
        tower=("model.audio_tower",),
        projector=("model.multi_modal_projector",),
    )
)


# Examples → chat-template messages and decoded media ------------------------------------------------------------------


def check_media(example: Example, family: Family) -> None:
    """Raise ``DatasetError`` naming the line and part of the first media part ``family`` does not take (a PDF part
    is taken by every family: as page images and text where it takes images, else as its text)."""
    for i, turn in enumerate(example.turns):
        for j, part in enumerate(turn.parts):
            if part.kind != "text" and part.modality not in family.media and not documents.is_pdf(part):
                takes = ", ".join(family.modalities)
                raise DatasetError(
                    f"line {example.line}: contents[{i}].parts[{j}]: {family.name} models take {takes}, "
                    f"not {part.modality} ({part.mime_type})"
                )


def expand_documents(example: Example, family: Family, source: Any) -> Example:
    """``example`` with each PDF part replaced by what ``family`` reads: its rendered pages as image parts (page
    order kept) plus its text layer where the family takes images, else its page-marked text
    (``tunery.data.documents``). Unchanged when it holds no PDF; rendering is the costly step, so call it once
    per request or batch and pass the result on."""
    if not documents.has_documents(example):
        return example
    check_media(example, family)  # named by the parts as given, before pages shift their indices
    if "image" in family.media:
        return documents.vlm_example(example, media_source(source))
    return documents.text_example(example, media_source(source))


def chat_messages(example: Example, family: Family, source: Any = None) -> list[dict[str, Any]]:
    """``example`` as processor chat-template messages: each media part becomes its content item, in place (a
    PDF part, its pages and text: ``expand_documents``, its ``fileUri`` resolved against ``source``)."""
    check_media(example, family)
    example = expand_documents(example, family, source)
    out: list[dict[str, Any]] = []
    if example.system:
        content: Any = [{"type": "text", "text": example.system}] if family.system_as_list else example.system
        out.append({"role": "system", "content": content})
    for turn in example.turns:
        items: list[dict[str, Any]] = []
        for part in turn.parts:
            if part.kind == "text":
                items.append({"type": "text", "text": part.text})
                continue
            kind = family.media[part.modality]
            items.append({"type": kind.content_type, **kind.item})
        out.append({"role": "assistant" if turn.role == "model" else "user", "content": items})
    return out


def decoded_media(example: Example, family: Family, source: Any, processor: Any) -> dict[str, list[Any]]:
    """The example's media, decoded, by processor argument (``{"images": [PIL, ...]}``), in part order (a PDF
    part's pages as images: ``expand_documents``)."""
    example = expand_documents(example, family, source)
    found: dict[str, list[Any]] = {}
    for i, turn in enumerate(example.turns):
        for j, part in enumerate(turn.parts):
            if part.kind == "text":
                continue
            kind = family.media[part.modality]
            try:
                item = kind.decode(part, source, processor)
            except DatasetError:
                raise
            except Exception as exc:  # a decoder's own error, named by line and field
                raise DatasetError(
                    f"line {example.line}: contents[{i}].parts[{j}]: cannot decode {part.mime_type}: {exc}"
                ) from exc
            found.setdefault(kind.argument, []).append(item)
    return found
