"""Serving a vision-language model: a model dir whose config is a multimodal family (``tunery.tuning.multimodal``).

    vlm = VisionLanguageModel(path)            # AutoModelForImageTextToText + its processor, no trust_remote_code
    vlm.generate(example, GenerationConfig())  # Generation; greedy equals model.generate on the processor's inputs
    vlm.count_tokens(example)                  # prompt tokens, media tokens included (the processor's output)

Rows run one at a time through the processor and ``model.generate``: continuous batching (and stacked LoRA
slots) is the text engine's (``tunery.serving.engine``) and is not done for VLM rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from tunery.data.formats import Example
from tunery.errors import ModelError
from tunery.serving.gemini import Generation, GenerationConfig


def is_vision_language(path: str | Path) -> bool:
    """Whether ``path`` is a model directory whose ``config.json`` names a registered multimodal family."""
    from tunery.tuning.multimodal import family_of

    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return family_of(json.loads(config.read_text())) is not None
    except (OSError, ValueError):
        return False


class VisionLanguageModel:
    """One VLM loaded in this process, answering one row at a time."""

    def __init__(self, path: str | Path, model: Any = None, processor: Any = None) -> None:
        from transformers import AutoModelForImageTextToText

        from tunery.models.loading import load_processor
        from tunery.tuning.multimodal import require_family

        self.path = str(path)
        self.processor = processor if processor is not None else load_processor(path)
        self.model = (model if model is not None else AutoModelForImageTextToText.from_pretrained(self.path)).eval()
        self.family = require_family(self.model.config, self.path)
        self.tokenizer = self.processor.tokenizer
        self.modalities = tuple(self.family.modalities)

    def inputs(self, example: Example) -> dict[str, torch.Tensor]:
        """The processor's tensors for ``example``'s prompt (its final model turn dropped), generation prompt on."""
        from tunery.tuning.multimodal import chat_messages, decoded_media

        prompt = example.prompt()
        text = self.processor.apply_chat_template(
            chat_messages(prompt, self.family), tokenize=False, add_generation_prompt=True
        )
        media = decoded_media(prompt, self.family, None, self.processor)
        arguments: dict[str, Any] = {}
        for kind in {k.argument: k for k in self.family.media.values()}.values():
            items = media.get(kind.argument, [])
            if items:
                arguments[kind.argument] = [items] if kind.nested else items
        batch = self.processor(text=[text], return_tensors="pt", **arguments)
        return {name: value for name, value in batch.items() if isinstance(value, torch.Tensor)}

    def count_tokens(self, example: Example) -> int:
        return int(self.inputs(example)["input_ids"].shape[1])

    @torch.inference_mode()
    def generate(self, example: Example, config: GenerationConfig | None = None) -> Generation:
        config = config or GenerationConfig()
        if config.response_mime_type != "text/plain" or config.response_schema or config.response_json_schema:
            raise ModelError(
                f"{self.path}: controlled output (responseMimeType) is not served for vision-language models"
            )
        started = time.perf_counter()
        inputs = self.inputs(example)
        sampling: dict[str, Any] = {"do_sample": False}
        if config.temperature > 0:
            if config.seed is not None:
                torch.manual_seed(config.seed)
            sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
            sampling["top_k"] = config.top_k or None
        out = self.model.generate(
            **inputs,
            max_new_tokens=config.max_output_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **sampling,
        )
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        eos = self.tokenizer.eos_token_id
        finish = "STOP" if eos in new else "MAX_TOKENS"
        if eos in new:
            new = new[: new.index(eos) + 1]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for stop in config.stop_sequences:
            if stop in text:
                text, finish = text[: text.index(stop)], "STOP"
        return Generation(
            text=text.strip(),
            finish_reason=finish,
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            output_tokens=len(new),
            latency_ms=(time.perf_counter() - started) * 1000,
        )
