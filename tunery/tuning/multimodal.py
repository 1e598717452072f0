"""Tuning vision-language (and audio-language) models: per-batch collation, loss masks, what trains.

A model's *family* (``tunery.models.multimodal``) says how its processor is driven. Loss masks are built from
the processor's own output: the processor renders the chat template and expands each media placeholder into its
tokens; the trained positions are then found in those token ids, per family, as everything after a model-turn
opener up to and including its end-of-turn token. Placeholder ids are never trained even if a template put one
inside a model turn.

Media is decoded per batch (``MultimodalCollator``), never for the whole dataset at once: ``encode_all``
runs the processor once per example to learn its token count and trained positions, keeps the token ids
and drops the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tunery.data.formats import Example
from tunery.data.tokenize import IGNORE_INDEX, Encoded
from tunery.errors import DatasetError, ModelError
from tunery.models.multimodal import Family, chat_messages, decoded_media, expand_documents, family_of

# Examples → processor inputs and labels ---------------------------------------------------------------------------


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
