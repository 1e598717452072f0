"""Tuning audio-language models (Qwen2-Audio): the family registered into ``tunery.tuning.multimodal``.

An audio part becomes the chat template's ``{"type": "audio"}`` item; the processor expands it into
``<|audio_bos|>`` + one ``<|AUDIO|>`` per encoder frame + ``<|audio_eos|>`` and passes the clip to its
Whisper feature extractor (log-mel features at the extractor's sampling rate). Loss masks come from the
shared ``loss_labels``: model turns plus ``<|im_end|>``, never the audio placeholders or the prompt.

Audio is decoded per batch through ``tunery.data.media`` (``open_media`` + ``load_audio``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tunery.data.formats import Part
from tunery.data.media import load_audio, open_media
from tunery.tuning.multimodal import Family, MediaKind, media_source, register_family


def sampling_rate_of(processor: Any) -> int:
    """The rate the processor's feature extractor expects (16 kHz for Whisper)."""
    extractor = getattr(processor, "feature_extractor", None)
    return int(getattr(extractor, "sampling_rate", 16000))


def decode_audio(part: Part, source: Any, processor: Any = None) -> np.ndarray:
    """One audio part as float32 mono samples at the processor's sampling rate."""
    return load_audio(open_media(part, media_source(source)), sampling_rate_of(processor))


AUDIO = MediaKind("audio", "audio", decode_audio, nested=False)

QWEN2_AUDIO = register_family(
    Family(
        name="Qwen2-Audio",
        model_types=("qwen2_audio",),
        media={"audio": AUDIO},
        model_turn="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        placeholder_tokens=("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"),
        tower=("audio_tower",),
        projector=("multi_modal_projector",),
    )
)
