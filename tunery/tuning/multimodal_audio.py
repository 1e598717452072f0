"""Tuning audio-language models (Qwen2-Audio): the family registered into ``tunery.tuning.multimodal``.

An audio part becomes the chat template's ``{"type": "audio"}`` item; the processor expands it into
``<|audio_bos|>`` + one ``<|AUDIO|>`` per encoder frame + ``<|audio_eos|>`` and passes the clip to its
Whisper feature extractor (log-mel features at the extractor's sampling rate). Loss masks come from the
shared ``loss_labels``: model turns plus ``<|im_end|>``, never the audio placeholders or the prompt.

Audio is decoded per batch through ``tunery.data.media.load_audio`` when that module provides it, else
by a private WAV reader (stdlib ``wave``, PCM 8/16/32-bit, mixed to mono, linearly resampled).
"""

from __future__ import annotations

import io
import wave
from typing import Any

import numpy as np

from tunery.data.formats import Part
from tunery.tuning.multimodal import Family, MediaKind, _raw_bytes, register_family


def sampling_rate_of(processor: Any) -> int:
    """The rate the processor's feature extractor expects (16 kHz for Whisper)."""
    extractor = getattr(processor, "feature_extractor", None)
    return int(getattr(extractor, "sampling_rate", 16000))


def decode_audio(part: Part, source: Any, processor: Any = None) -> np.ndarray:
    """One audio part as float32 mono samples at the processor's sampling rate."""
    rate = sampling_rate_of(processor)
    try:
        from tunery.data import media as media_module

        open_media = getattr(media_module, "open_media", None)
        load_audio = getattr(media_module, "load_audio", None)
        media_source = getattr(media_module, "MediaSource", None)
        if open_media and load_audio and media_source and isinstance(source, media_source):
            return np.asarray(load_audio(open_media(part, source), rate), dtype=np.float32)
    except ImportError:
        pass
    return wav_samples(_raw_bytes(part, source), rate)


def wav_samples(data: bytes, sampling_rate: int) -> np.ndarray:
    """A PCM WAV file's samples in [-1, 1], mono, resampled to ``sampling_rate``."""
    try:
        with wave.open(io.BytesIO(data)) as reader:
            channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a PCM WAV file ({exc}); install the media extra for flac, mp3 and ogg") from exc
    if width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(frames, dtype=dtype).astype(np.float32) / float(np.iinfo(dtype).max)
    else:
        raise ValueError(f"unsupported WAV sample width of {8 * width} bits")
    samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != sampling_rate and len(samples):
        count = max(1, round(len(samples) * sampling_rate / rate))
        samples = np.interp(np.linspace(0, len(samples) - 1, count), np.arange(len(samples)), samples)
    return samples.astype(np.float32)


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
