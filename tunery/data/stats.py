"""Dataset statistics in the shape of Vertex's ``supervisedTuningDataStats``.

Media parts (#15) add ``mediaStats`` (only to a dataset that has media, so a text dataset's statistics are
unchanged): per modality the examples and parts that hold it, their bytes, image sizes, audio seconds and PDF
pages, and the media tokens estimated for them. Where no processor counted the media tokens (``tunery datasets
validate/stats`` reads with the tokenizer alone), each part costs a constant per kind, as the Gemini API counts
them; these estimated tokens are added to the example's (prompt) tokens in the distributions and in the
length check. A processor's exact count (tuning a vision-language model) replaces the estimate.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections import Counter
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


def distribution(values: Sequence[int] | Counter[int]) -> dict[str, float]:
    """sum, min, max, mean, median, p5 and p95 of token counts: a list, or a ``Counter`` of value → how many
    (what a streaming check keeps: its memory grows with the distinct values, never with the examples)."""
    counts = values if isinstance(values, Counter) else Counter(values)
    n = counts.total()
    if not n:
        return {"sum": 0, "min": 0, "max": 0, "mean": 0.0, "median": 0.0, "p5": 0.0, "p95": 0.0}
    ordered = _Ranked(counts)
    total = sum(value * count for value, count in counts.items())
    middle = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return {
        "sum": total,
        "min": ordered[0],
        "max": ordered[n - 1],
        "mean": round(total / n, 2),
        "median": float(middle),
        "p5": round(_percentile(ordered, n, 5), 2),
        "p95": round(_percentile(ordered, n, 95), 2),
    }


def buckets(values: Sequence[int] | Counter[int], most: int = BUCKETS) -> list[dict[str, int]]:
    """A histogram as Vertex's ``DatasetDistribution.buckets``: at most ``most`` equal whole-number bins
    ``[left, right)`` from the least value to past the largest, each with its ``count``."""
    counts = values if isinstance(values, Counter) else Counter(values)
    if not counts.total():
        return []
    lo, hi = min(counts), max(counts)
    width = max(1, math.ceil((hi - lo + 1) / most))
    bins = [0] * ((hi - lo) // width + 1)
    for value, count in counts.items():
        bins[(value - lo) // width] += count
    return [{"count": n, "left": lo + i * width, "right": lo + (i + 1) * width} for i, n in enumerate(bins)]


def _histogram(values: Sequence[int] | Counter[int]) -> dict[str, Any]:
    return {**distribution(values), "buckets": buckets(values)}


class _Ranked:
    """``counts`` read as the sorted list of its values: ``ranked[i]`` is the i-th smallest (0-based)."""

    def __init__(self, counts: Counter[int]) -> None:
        self.values = sorted(counts)
        self.ends = list(itertools.accumulate(counts[value] for value in self.values))

    def __getitem__(self, rank: int) -> int:
        return self.values[bisect.bisect_right(self.ends, rank)]


def _percentile(ordered: _Ranked, n: int, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    pos = (n - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def tuning_data_stats(encoded: Sequence[Encoded], epochs: int, batch_size: int) -> dict[str, Any]:
    """``supervisedTuningDataStats`` for a tokenized dataset tuned for ``epochs`` at ``batch_size``."""
    tally = SupervisedTally()
    for example in encoded:
        tally.add(example)
    return tally.stats(epochs, batch_size)


@dataclass
class SupervisedTally:
    """What ``supervisedTuningDataStats`` needs of a dataset, added one encoded example at a time (a streaming
    check keeps this, not the examples): token counts as ``Counter``s, the truncated examples' indices, and the
    media of the examples that have any."""

    count: int = 0
    prompt: Counter[int] = field(default_factory=Counter)
    answer: Counter[int] = field(default_factory=Counter)
    whole: Counter[int] = field(default_factory=Counter)
    truncated: list[int] = field(default_factory=list)
    media: list[ExampleMedia] = field(default_factory=list)
    media_tokens: list[int] = field(default_factory=list)

    def add(self, encoded: Encoded) -> None:
        extra = media_tokens(encoded)
        self.prompt[encoded.input_tokens + extra] += 1
        self.answer[encoded.trained_tokens] += 1
        self.whole[len(encoded.input_ids) + extra] += 1
        if encoded.truncated:
            self.truncated.append(self.count)
        if isinstance(encoded, EncodedWithMedia):
            self.media.append(encoded.media)
            self.media_tokens.append(encoded.media_tokens)
        self.count += 1

    def stats(self, epochs: int, batch_size: int) -> dict[str, Any]:
        tokens = sum(value * count for value, count in self.whole.items())
        stats: dict[str, Any] = {
            "tuningDatasetExampleCount": self.count,
            "totalBillableTokenCount": tokens * epochs,
            "tuningStepCount": math.ceil(self.count / batch_size) * epochs,
            "userInputTokenDistribution": _histogram(self.prompt),
            "userOutputTokenDistribution": _histogram(self.answer),
            "exampleTokenDistribution": _histogram(self.whole),
            "totalTruncatedExampleCount": len(self.truncated),
            "truncatedExampleIndices": list(self.truncated),
        }
        if self.media:
            stats["mediaStats"] = media_stats(self.media, self.media_tokens)
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
    tally = PreferenceTally()
    for pair in pairs:
        tally.add(pair)
    return tally.stats(epochs, batch_size)


@dataclass
class PreferenceTally:
    """``SupervisedTally``'s counterpart for preference pairs."""

    count: int = 0
    tokens: int = 0
    prompt: Counter[int] = field(default_factory=Counter)
    chosen: Counter[int] = field(default_factory=Counter)
    rejected: Counter[int] = field(default_factory=Counter)
    truncated_chosen: list[int] = field(default_factory=list)
    truncated_rejected: list[int] = field(default_factory=list)

    def add(self, pair: Any) -> None:
        self.tokens += len(pair.chosen.input_ids) + len(pair.rejected.input_ids)
        self.prompt[pair.chosen.input_tokens] += 1
        self.chosen[pair.chosen.trained_tokens] += 1
        self.rejected[pair.rejected.trained_tokens] += 1
        if pair.chosen.truncated:
            self.truncated_chosen.append(self.count)
        if pair.rejected.truncated:
            self.truncated_rejected.append(self.count)
        self.count += 1

    def stats(self, epochs: int, batch_size: int) -> dict[str, Any]:
        return {
            "tuningDatasetExampleCount": self.count,
            "totalBillableTokenCount": self.tokens * epochs,
            "tuningStepCount": math.ceil(self.count / batch_size) * epochs,
            "userInputTokenDistribution": _histogram(self.prompt),
            "chosenOutputTokenDistribution": _histogram(self.chosen),
            "rejectedOutputTokenDistribution": _histogram(self.rejected),
            "totalTruncatedExampleCount": len(set(self.truncated_chosen) | set(self.truncated_rejected)),
            "truncatedChosenExampleIndices": list(self.truncated_chosen),
            "truncatedRejectedExampleIndices": list(self.truncated_rejected),
        }
