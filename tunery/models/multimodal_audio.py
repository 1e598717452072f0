"""Audio-language models (Qwen2-Audio): decoding an audio part for the family in ``tunery.models.multimodal``.

An audio part becomes the chat template's ``{"type": "audio", "audio": None}`` item (Qwen2-Audio-Instruct's
own template tests for the ``audio`` key, transformers' default one for the type); the processor expands the
template's ``<|AUDIO|>`` into one ``<|AUDIO|>`` per encoder frame between ``<|audio_bos|>`` and ``<|audio_eos|>``
and passes the clip to its Whisper feature extractor (128 log-mel bins at 16 kHz, padded to the extractor's
chunk length: 30 s for the released model, 750 audio tokens). Loss masks come from the shared ``loss_labels``
(``tunery.tuning.multimodal``): model turns plus ``<|im_end|>``, never the audio placeholders, the prompt, or the
template's default system line (``You are a helpful assistant.``, written when an example has no system
instruction).

The model is ``Qwen2AudioForConditionalGeneration`` (``AutoModelForMultimodalLM``; ``tunery.models.loading``
loads a directory whose config has an ``audio_config``): ``model.audio_tower`` (the Whisper-style encoder,
frozen unless ``--train-vision``), ``model.multi_modal_projector`` (one linear layer, frozen unless
``--train-projector``), ``model.language_model`` (Qwen2: where LoRA goes).

Audio is decoded per batch through ``tunery.data.media`` (``open_media`` + ``load_audio``, resampled to the
extractor's rate, which is passed on to the processor).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunery.data.formats import Part
from tunery.data.media import load_audio, media_source, open_media


def sampling_rate_of(processor: Any) -> int:
    """The rate the processor's feature extractor expects (16 kHz for Whisper)."""
    extractor = getattr(processor, "feature_extractor", None)
    return int(getattr(extractor, "sampling_rate", 16000))


def longest_clip(processor: Any) -> int | None:
    """The most samples one clip may have: the extractor's chunk (30 s for Qwen2-Audio); longer would be cut."""
    extractor = getattr(processor, "feature_extractor", None)
    limit = getattr(extractor, "n_samples", None)
    return int(limit) if limit else None


def decode_audio(part: Part, source: Any, processor: Any = None) -> np.ndarray:
    """One audio part as float32 mono samples at the processor's sampling rate; a clip longer than the feature
    extractor's chunk is refused (the extractor would silently cut it, training on audio the model never hears)."""
    rate = sampling_rate_of(processor)
    samples = load_audio(open_media(part, media_source(source)), rate)
    limit = longest_clip(processor)
    if limit is not None and len(samples) > limit:
        raise ValueError(
            f"the clip is {len(samples) / rate:.1f} s long; this model hears at most {limit / rate:g} s per audio part "
            "(its feature extractor's chunk_length): cut it into parts of at most that length"
        )
    return samples
