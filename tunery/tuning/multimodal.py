"""Tuning vision-language (and audio-language) models: a family registry, per-batch collation, loss masks.

A *family* says how one kind of model (keyed by its ``config.model_type``) is driven through its own
processor: which chat-template content item a media part becomes, which processor argument takes the
decoded media, which token sequence opens a model turn and which token closes it, which token ids are
media placeholders, and which modules are the media tower and the projector (frozen unless opened).

Loss masks are built from the processor's own output: the processor renders the chat template and
expands each media placeholder into its tokens; the trained positions are then found in those token
ids, per family, as everything after a model-turn opener up to and including its end-of-turn token.
Placeholder ids are never trained even if a template put one inside a model turn.

Media is decoded per batch (``MultimodalCollator``), never for the whole dataset at once: ``encode_all``
runs the processor once per example to learn its token count and trained positions, keeps the token ids
and drops the pixels.

Other modalities register their own family (the audio work of #15 does)::

    from tunery.tuning.multimodal import Family, MediaKind, register_family

    register_family(Family(
        name="Qwen2-Audio", model_types=("qwen2_audio",),
        media={"audio": MediaKind("audio", "audio", decode_audio)},
        model_turn="<|im_start|>assistant\\n", end_of_turn="<|im_end|>",
        placeholder_tokens=("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"),
        tower=("model.audio_tower",), projector=("model.multi_modal_projector",),
    ))

``MediaKind.decode(media_bytes_or_part, processor)`` turns one part into what the processor takes
(a PIL image; a float32 mono array at the feature extractor's sampling rate).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunery.data import documents
from tunery.data.formats import Example, Part
from tunery.data.media import MediaSource, load_image, open_media
from tunery.data.tokenize import IGNORE_INDEX, Encoded
from tunery.errors import DatasetError, ModelError


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


# Media decoding -------------------------------------------------------------------------------------------------


def media_source(source: Any) -> MediaSource:
    """``source`` as a ``MediaSource``: given as one, or as the dataset's folder (a path), or None (inline only)."""
    if isinstance(source, MediaSource):
        return source
    return MediaSource(base=Path(source) if source is not None else None)


def decode_image(part: Part, source: Any, processor: Any = None) -> Any:
    """One image part as an RGB PIL image."""
    return load_image(open_media(part, media_source(source)))


IMAGE = MediaKind("image", "images", decode_image)


# Families ---------------------------------------------------------------------------------------------------------


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


# Examples → processor inputs and labels ---------------------------------------------------------------------------


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


def loss_labels(family: Family, processor: Any, input_ids: Sequence[int], model_turns: int | None = None) -> list[int]:
    """Labels for one row of the processor's token ids: each model turn's tokens after ``family.model_turn`` up
    to and including ``family.end_of_turn``; everything else (prompt, media placeholders, padding) masked.

    ``model_turns``, when given, is how many model turns the row must hold: a template whose markers are not
    found raises ``ModelError`` rather than train on the wrong tokens.
    """
    tokenizer = processor.tokenizer
    opener = tokenizer(family.model_turn, add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    skip = family.placeholder_ids(processor)
    ids = list(input_ids)
    labels = [IGNORE_INDEX] * len(ids)
    found, i, width = 0, 0, len(opener)
    while i + width <= len(ids):
        if ids[i : i + width] != opener:
            i += 1
            continue
        found += 1
        j = i + width
        while j < len(ids) and ids[j] != end:
            if ids[j] not in skip:
                labels[j] = ids[j]
            j += 1
        if j < len(ids):
            labels[j] = ids[j]
        i = j + 1
    if model_turns is not None and found != model_turns:
        raise ModelError(
            f"{family.name}: found {found} model turn(s) opened by {family.model_turn!r} in the processor's tokens, "
            f"expected {model_turns}; the chat template does not match the family"
        )
    return labels


def process(
    family: Family, processor: Any, examples: Sequence[Example], source: Any
) -> tuple[dict[str, torch.Tensor], list[list[Any]]]:
    """Run the processor on ``examples`` (chat template, media decoded now) → its tensors plus ``labels``."""
    texts, media = [], []
    for example in examples:
        example = expand_documents(example, family, source)  # PDF pages rendered once per batch, then dropped
        texts.append(processor.apply_chat_template(chat_messages(example, family), tokenize=False))
        media.append(decoded_media(example, family, source, processor))
    arguments: dict[str, Any] = {}
    for kind in {k.argument: k for k in family.media.values()}.values():
        per_example = [m.get(kind.argument, []) for m in media]
        if any(per_example):
            arguments[kind.argument] = per_example if kind.nested else [x for xs in per_example for x in xs]
            arguments.update(kind.options(processor))
    with torch.autocast("cpu", enabled=False):  # an evaluation pass's bf16 autocast would reach Whisper's STFT
        batch = processor(text=texts, padding=True, return_tensors="pt", **arguments)
    batch = {name: value for name, value in batch.items() if isinstance(value, torch.Tensor)}
    mask = batch.get("attention_mask")
    labels = []
    for row, example in enumerate(examples):
        turns = sum(1 for t in example.turns if t.role == "model")
        labels.append(loss_labels(family, processor, batch["input_ids"][row].tolist(), turns))
    batch["labels"] = torch.tensor(labels, dtype=torch.long)
    if mask is not None:
        batch["labels"][mask == 0] = IGNORE_INDEX
    return batch, [list(m.values()) for m in media]


@dataclass(frozen=True)
class MediaEncoded(Encoded):
    """An encoded example that keeps its source ``Example``: its media is decoded again, per batch."""

    example: Example | None = None


def encode_all(
    family: Family, processor: Any, examples: Sequence[Example], source: Any, max_length: int, name: str = "dataset"
) -> list[MediaEncoded]:
    """Each example's token ids (media tokens included) and labels, from the processor one example at a time;
    the decoded media is dropped. An example longer than ``max_length`` is an error naming its line (media
    tokens cannot be cut); so is media the family cannot take or decode, each named ``FILE:LINE: field``."""
    out, too_long, unusable = [], [], []
    for example in examples:
        try:
            batch, _ = process(family, processor, [example], source)
        except DatasetError as exc:
            unusable.append(f"{name}:{example.line}: {str(exc).removeprefix(f'line {example.line}: ')}")
            continue
        ids = batch["input_ids"][0].tolist()
        if len(ids) > max_length:
            too_long.append(f"{name}:{example.line}: {len(ids)} tokens with media, over the maximum {max_length}")
            continue
        out.append(MediaEncoded(ids, batch["labels"][0].tolist(), len(ids), example))
    if unusable:
        raise DatasetError(
            f"{name}: {len(unusable)} example(s) with unusable media; nothing was tuned: " + "; ".join(unusable)
        )
    if too_long:
        raise DatasetError(f"{name}: {len(too_long)} example(s) too long; nothing was tuned: " + "; ".join(too_long))
    return out


class MultimodalCollator:
    """A batch of ``MediaEncoded`` examples → the processor's tensors and labels, media decoded now, on ``device``."""

    def __init__(self, family: Family, processor: Any, source: Any, device: Any = None) -> None:
        self.family, self.processor, self.source, self.device = family, processor, source, device

    def __call__(self, examples: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        originals = [e.example for e in examples if isinstance(e, MediaEncoded) and e.example is not None]
        if len(originals) != len(examples):
            raise TypeError("MultimodalCollator takes MediaEncoded examples (from encode_all)")
        batch, _ = process(self.family, self.processor, originals, self.source)
        return {k: v.to(self.device) for k, v in batch.items()} if self.device is not None else batch


def body(core: Any) -> Any:
    """The module whose forward takes the processor's inputs and returns hidden states: the whole vision-language
    model (media tower, projector, language model) for a registered family, else the text decoder."""
    if family_of(core.config) is not None:
        return core.model
    return core.get_decoder()


# What trains ------------------------------------------------------------------------------------------------------


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def lora_targets(model: Any, family: Family, train_vision: bool = False) -> list[str]:
    """Full names of the linear layers LoRA goes on: the language model's (not its output layer), plus the media
    tower's with ``train_vision``; never the projector (``projector_modules`` trains it whole)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] == "lm_head":
            continue
        if _under(name, family.projector) or (_under(name, family.tower) and not train_vision):
            continue
        names.append(name)
    if not names:
        raise ModelError(f"{family.name}: no linear layers found for LoRA outside the media tower and projector")
    return names


def projector_modules(family: Family, train_projector: bool) -> list[str] | None:
    """PEFT ``modules_to_save``: the projector, trained whole and saved with the adapter, when asked for."""
    return list(family.projector) if train_projector else None


def freeze_media(model: Any, family: Family, train_projector: bool = False, train_vision: bool = False) -> None:
    """Full tuning: the media tower and the projector stay frozen unless opened (``--train-vision``,
    ``--train-projector``); every other weight trains."""
    for name, parameter in model.named_parameters():
        if _under(name, family.projector):
            parameter.requires_grad_(train_projector)
        elif _under(name, family.tower):
            parameter.requires_grad_(train_vision)


# Audio-language families register themselves on import (Qwen2-Audio); imported last, after what they use.
from tunery.tuning import multimodal_audio as _audio  # noqa: E402, F401
