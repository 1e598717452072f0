"""Dataset statistics in the shape of Vertex's ``supervisedTuningDataStats``.

Media parts (#15) add ``mediaStats`` (only to a dataset that has media, so a text dataset's statistics are
unchanged): per modality the examples and parts that hold it, their bytes, image sizes, audio seconds and PDF
pages, and the media tokens estimated for them. Where no processor counted the media tokens (``tunery datasets
validate/stats`` reads with the tokenizer alone), each part costs a constant per kind, as the Gemini API counts
them; these estimated tokens are added to the example's (prompt) tokens in the distributions and in the
length check. A processor's exact count (tuning a vision-language model) replaces the estimate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunery.data.media import MediaInfo
from tunery.data.tokenize import Encoded

BUCKETS = 10  # histogram bins per token distribution

IMAGE_TOKENS = 258
"""Tokens one image is estimated to take (Gemini: 258 per image; Gemma 3: 256 image tokens plus its two
boundary tokens). Families that tile or resize (Qwen2-VL, Idefics3) vary with the size: an estimate."""
AUDIO_TOKENS_PER_SECOND = 32
"""Tokens per second of audio (Gemini: 32; Qwen2-Audio's encoder gives 25 per second)."""
PDF_PAGE_TOKENS = 258
"""Tokens per PDF page for a model that sees pages as images (one image per page). A text-only model reads
the page's text instead, which the tokenizer counts exactly."""


@dataclass(frozen=True)
class ExampleMedia:
    """What one example's media parts hold, from their headers (``tunery.data.media.probe``), in part order."""

    parts: tuple[MediaInfo, ...] = ()

    def of(self, modality: str) -> list[MediaInfo]:
        return [p for p in self.parts if p.modality == modality]

    def estimated_tokens(self, modalities: Collection[str]) -> int:
        """Media tokens for a model of ``modalities``: IMAGE_TOKENS per image, AUDIO_TOKENS_PER_SECOND per
        second of audio (rounded up), PDF_PAGE_TOKENS per page where the model sees pages as images."""
        tokens = IMAGE_TOKENS * len(self.of("image"))
        tokens += sum(math.ceil(a.seconds * AUDIO_TOKENS_PER_SECOND) for a in self.of("audio"))
        if "image" in modalities:
            tokens += PDF_PAGE_TOKENS * sum(p.pages for p in self.of("pdf"))
        return tokens


@dataclass(frozen=True)
class EncodedWithMedia(Encoded):
    """An example's text tokens (``input_ids``, from the tokenizer) plus what its media holds and the tokens
    estimated for it (``media_tokens``, not in ``input_ids``; prompt tokens, as media parts are in user turns)."""

    media: ExampleMedia = field(default_factory=ExampleMedia)
    media_tokens: int = 0
    over_budget: bool = False  # text plus estimated media tokens are more than maxLength

    @property
    def truncated(self) -> bool:
        return super().truncated or self.over_budget


def media_tokens(encoded: Encoded) -> int:
    """The estimated media tokens of an encoded example (0 for a text example or a processor's exact count)."""
    return encoded.media_tokens if isinstance(encoded, EncodedWithMedia) else 0


def default_epochs(example_count: int) -> int:
    """About 1,000 example passes, 2 to 10 epochs: small datasets need more passes to be learned."""
    return max(2, min(10, math.ceil(1000 / max(example_count, 1))))


def distribution(values: Sequence[int]) -> dict[str, float]:
    """sum, min, max, mean, median, p5 and p95 of a list of token counts."""
    if not values:
        return {"sum": 0, "min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p5": 0.0, "p95": 0.0}
    ordered = sorted(values)
    return {
        "sum": sum(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 2),
        "median": float(statistics.median(ordered)),
        "p5": round(_percentile(ordered, 5), 2),
        "p95": round(_percentile(ordered, 95), 2),
    }


def buckets(values: Sequence[int], most: int = BUCKETS) -> list[dict[str, int]]:
    """A histogram as Vertex's ``DatasetDistribution.buckets``: at most ``most`` equal whole-number bins
    ``[left, right)`` from the least value to past the largest, each with its ``count``."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, math.ceil((hi - lo + 1) / most))
    counts = [0] * ((hi - lo) // width + 1)
    for value in values:
        counts[(value - lo) // width] += 1
    return [{"count": n, "left": lo + i * width, "right": lo + (i + 1) * width} for i, n in enumerate(counts)]


def _histogram(values: Sequence[int]) -> dict[str, Any]:
    return {**distribution(values), "buckets": buckets(values)}


def _percentile(ordered: Sequence[int], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def tuning_data_stats(encoded: Sequence[Encoded], epochs: int, batch_size: int) -> dict[str, Any]:
    """``supervisedTuningDataStats`` for a tokenized dataset tuned for ``epochs`` at ``batch_size``."""
    kept = [len(e.input_ids) + media_tokens(e) for e in encoded]
    truncated = [i for i, e in enumerate(encoded) if e.truncated]
    stats: dict[str, Any] = {
        "tuningDatasetExampleCount": len(encoded),
        "totalBillableTokenCount": sum(kept) * epochs,
        "tuningStepCount": math.ceil(len(encoded) / batch_size) * epochs if encoded else 0,
        "userInputTokenDistribution": _histogram([e.input_tokens + media_tokens(e) for e in encoded]),
        "userOutputTokenDistribution": _histogram([e.trained_tokens for e in encoded]),
        "exampleTokenDistribution": _histogram(kept),
        "totalTruncatedExampleCount": len(truncated),
        "truncatedExampleIndices": truncated,
    }
    with_media = [e for e in encoded if isinstance(e, EncodedWithMedia)]
    if with_media:
        stats["mediaStats"] = media_stats([e.media for e in with_media], [e.media_tokens for e in with_media])
    return stats


MODALITIES = ("image", "audio", "pdf", "video")


def media_stats(media: Sequence[ExampleMedia], tokens: Sequence[int] | None = None) -> dict[str, Any]:
    """Per modality: ``exampleCount`` (examples with at least one such part), ``partCount``, ``totalBytes``,
    ``partsPerExample``, and image ``width``/``height``, audio ``seconds``, PDF ``pages`` (sum, min, max, mean per
    part; audio ``secondsPerExample`` and PDF ``pagesPerExample`` over the examples that hold any); with ``tokens``
    (each example's estimated media tokens), ``mediaTokens``: their distribution and the constants used."""
    out: dict[str, Any] = {}
    for modality in MODALITIES:
        per_example = [m.of(modality) for m in media]
        parts = [p for ps in per_example for p in ps]
        if not parts:
            continue
        entry: dict[str, Any] = {
            "exampleCount": sum(1 for ps in per_example if ps),
            "partCount": len(parts),
            "totalBytes": sum(p.size_bytes for p in parts),
            "partsPerExample": _range([len(ps) for ps in per_example if ps]),
        }
        if modality == "image":
            entry["width"] = _range([p.width for p in parts])
            entry["height"] = _range([p.height for p in parts])
        elif modality == "audio":
            entry["seconds"] = _range([round(p.seconds, 3) for p in parts])
            entry["secondsPerExample"] = _range([round(sum(p.seconds for p in ps), 3) for ps in per_example if ps])
        elif modality == "pdf":
            entry["pages"] = _range([p.pages for p in parts])
            entry["pagesPerExample"] = _range([sum(p.pages for p in ps) for ps in per_example if ps])
            entry["pagesWithoutText"] = sum(p.pages_without_text for p in parts)
        out[modality] = entry
    if tokens is not None:
        out["mediaTokens"] = {
            **distribution(list(tokens)),
            "estimated": True,
            "perImage": IMAGE_TOKENS,
            "perAudioSecond": AUDIO_TOKENS_PER_SECOND,
            "perPdfPage": PDF_PAGE_TOKENS,
        }
    return out


def _range(values: Sequence[float]) -> dict[str, float]:
    return {
        "sum": round(sum(values), 3),
        "min": min(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 2),
    }


def describe_media(media: dict[str, Any]) -> list[str]:
    """``mediaStats`` as lines for a terminal: ``images: 3 in 2 examples, 12.5 KiB, 16-40 x 8-30 px``."""
    lines = []
    if image := media.get("image"):
        w, h = image["width"], image["height"]
        lines.append(
            f"images: {image['partCount']} in {_examples(image)}, {_bytes(image['totalBytes'])}, "
            f"{w['min']}-{w['max']} x {h['min']}-{h['max']} px"
        )
    if audio := media.get("audio"):
        lines.append(
            f"audio: {audio['partCount']} file(s) in {_examples(audio)}, {_bytes(audio['totalBytes'])}, "
            f"{audio['seconds']['sum']:g} s in all (longest {audio['seconds']['max']:g} s)"
        )
    if pdf := media.get("pdf"):
        lines.append(
            f"PDFs: {pdf['partCount']} in {_examples(pdf)}, {_bytes(pdf['totalBytes'])}, {pdf['pages']['sum']} pages "
            f"({pdf['pagesWithoutText']} without a text layer)"
        )
    if tokens := media.get("mediaTokens"):
        lines.append(
            f"media tokens: {tokens['sum']} (estimated: {tokens['perImage']} per image, {tokens['perAudioSecond']} "
            f"per second of audio, {tokens['perPdfPage']} per PDF page seen as an image)"
        )
    return lines


def _examples(entry: dict[str, Any]) -> str:
    n = entry["exampleCount"]
    return f"{n} example{'s' * (n != 1)}"


def _bytes(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def preference_data_stats(pairs: Sequence[Any], epochs: int, batch_size: int) -> dict[str, Any]:
    """``preferenceOptimizationDataStats`` for tokenized preference pairs (``tokenize.EncodedPair``): pair count,
    billable tokens and steps, the prompt's tokens and each side's answer tokens, the pairs cut by ``maxLength``
    (which side: ``truncatedChosenExampleIndices``, ``truncatedRejectedExampleIndices``)."""
    chosen = [i for i, p in enumerate(pairs) if p.chosen.truncated]
    rejected = [i for i, p in enumerate(pairs) if p.rejected.truncated]
    return {
        "tuningDatasetExampleCount": len(pairs),
        "totalBillableTokenCount": sum(len(p.input_ids) for p in pairs) * epochs,
        "tuningStepCount": math.ceil(len(pairs) / batch_size) * epochs if pairs else 0,
        "userInputTokenDistribution": _histogram([p.chosen.input_tokens for p in pairs]),
        "chosenOutputTokenDistribution": _histogram([p.chosen.trained_tokens for p in pairs]),
        "rejectedOutputTokenDistribution": _histogram([p.rejected.trained_tokens for p in pairs]),
        "totalTruncatedExampleCount": len(set(chosen) | set(rejected)),
        "truncatedChosenExampleIndices": chosen,
        "truncatedRejectedExampleIndices": rejected,
    }
