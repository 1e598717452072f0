"""Serving a vision-language model: a model dir whose config is a multimodal family (``tunery.models.multimodal``).

    vlm = VisionLanguageModel(path)            # AutoModelForImageTextToText + its processor, no trust_remote_code
    vlm.generate(example, GenerationConfig())  # Generation; greedy equals model.generate on the processor's inputs
    vlm.count_tokens(example)                  # prompt tokens, media tokens included (the processor's output)

What is served as one: a model directory of a registered family (a base, or a FULL-tuned model), a tuned LoRA
directory whose base is one (the adapter merged into its base on load), or a catalog id whose modalities go past
text (``vlm_location``).

Rows run one at a time through the processor and ``model.generate``: continuous batching (and stacked LoRA
slots) is the text engine's (``tunery.serving.engine``) and is not done for VLM rows.

``inline_media`` / ``inline_request`` turn the ``fileData`` parts that name a path (relative to a request or data
file's folder) into ``inlineData``, so a request carries its media wherever it is answered (the model host, a
remote server); ``files/{id}`` and ``http(s)://`` are left to whoever can resolve them.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tunery.data.formats import Example, Part, Turn
from tunery.data.media import MediaError, MediaSource, media_source, open_media
from tunery.errors import DatasetError, ModelError
from tunery.serving.gemini import Generation, GenerationConfig

if TYPE_CHECKING:
    import torch


def _family_dir(path: Path) -> bool:
    from tunery.models.multimodal import family_of

    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return family_of(json.loads(config.read_text())) is not None
    except (OSError, ValueError):
        return False


def vlm_location(name: str | Path) -> tuple[str, str | None] | None:
    """Where a multimodal model served under ``name`` lives: ``(model dir or catalog id, tuned adapter dir or
    None)``, or None when ``name`` is a text model. Reads manifests and configs only, loads nothing."""
    from tunery.models.catalog import CATALOG

    text = str(name)
    if text in CATALOG:
        return (text, None) if set(CATALOG[text].modalities) - {"text"} else None
    path = Path(text).expanduser()
    if _family_dir(path):  # a base model dir, or a FULL-tuned one (its own weights and config)
        return str(path), None
    if (path / "adapter_config.json").is_file() and (path / "tunery.json").is_file():
        try:
            base = json.loads((path / "tunery.json").read_text())["baseModel"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if _family_dir(Path(str(base.get("path", "")))):
            return str(base["path"]), str(path)
        found = vlm_location(str(base.get("id", ""))) if base.get("id") in CATALOG else None
        return (found[0], str(path)) if found else None
    return None


def is_vision_language(path: str | Path) -> bool:
    """Whether ``path`` is served as a multimodal model (``vlm_location``): a model directory of a registered
    family, a tuned adapter on one, or a catalog id that takes media."""
    return vlm_location(path) is not None


def served_modalities(name: str | Path) -> tuple[str, ...]:
    """The modalities a model takes as it is served: its family's (text first) for a multimodal model, else text."""
    from tunery.models.catalog import CATALOG
    from tunery.models.multimodal import family_of

    found = vlm_location(name)
    if found is None:
        return ("text",)
    model, _ = found
    if model in CATALOG:
        return tuple(CATALOG[model].modalities)
    family = family_of(json.loads((Path(model) / "config.json").read_text()))
    return family.modalities if family is not None else ("text",)


# Media carried inline -------------------------------------------------------------------------------------------


def _local(uri: str, source: MediaSource) -> bool:
    """Whether a ``fileUri`` is resolved here: a path (relative, absolute, file://), an uploaded file when the
    source knows them, http(s) when the source may fetch."""
    if uri.startswith("files/"):
        return source.resolve_file is not None
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        return source.allow_remote
    return True


def _inline_bytes(part: Part, source: MediaSource, where: str) -> str:
    try:
        return base64.b64encode(open_media(part, source).read()).decode("ascii")
    except MediaError as exc:
        raise DatasetError(f"{where}: {exc}") from None


def inline_media(example: Example, source: MediaSource | str | Path | None) -> Example:
    """``example`` with each ``fileData`` part that ``source`` resolves (a path against its folder; see ``_local``)
    read into an ``inlineData`` part of the same MIME type; the same object when it has none. ``DatasetError``
    names the line and part of a file that is missing or outside the roots."""
    media = media_source(source)
    if not any(p.kind == "fileData" and _local(p.uri, media) for t in example.turns for p in t.parts):
        return example
    turns = []
    for i, turn in enumerate(example.turns):
        parts = []
        for j, part in enumerate(turn.parts):
            if part.kind == "fileData" and _local(part.uri, media):
                where = f"line {example.line}: contents[{i}].parts[{j}].fileData"
                part = Part("inlineData", mime_type=part.mime_type, data=_inline_bytes(part, media, where))
            parts.append(part)
        turns.append(Turn(turn.role, tuple(parts)))
    return Example(turns=tuple(turns), system=example.system, line=example.line)


def inline_request(body: dict[str, Any], source: MediaSource | str | Path | None) -> dict[str, Any]:
    """A generateContent body (JSON, camelCase or snake_case parts) with its resolvable ``fileData`` parts read
    into ``inlineData`` (see ``inline_media``); the same dict when it has none. ``DatasetError`` names the field."""
    media = media_source(source)
    contents = body.get("contents")
    if not isinstance(contents, list):
        return body
    changed = False
    out = []
    for i, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            out.append(content)
            continue
        new_parts = []
        for j, part in enumerate(parts):
            key = next((k for k in ("fileData", "file_data") if isinstance(part, dict) and k in part), None)
            data = part[key] if key else None
            if isinstance(data, dict):
                uri = data.get("fileUri", data.get("file_uri"))
                mime = data.get("mimeType", data.get("mime_type"))
                if isinstance(uri, str) and isinstance(mime, str) and _local(uri, media):
                    given = Part("fileData", mime_type=mime, uri=uri)
                    payload = _inline_bytes(given, media, f"contents[{i}].parts[{j}].{key}")
                    part = {"inlineData": {"mimeType": mime, "data": payload}}
                    changed = True
            new_parts.append(part)
        out.append({**content, "parts": new_parts})
    return {**body, "contents": out} if changed else body


class VisionLanguageModel:
    """One VLM loaded in this process, answering one row at a time."""

    def __init__(self, path: str | Path, model: Any = None, processor: Any = None) -> None:
        from tunery.models.loading import load_processor
        from tunery.models.multimodal import require_family
        from tunery.models.tuned import is_tuned_dir, read_manifest

        self.path = str(path)
        self.manifest = read_manifest(path) if is_tuned_dir(path) else None
        found = vlm_location(path) if model is None or processor is None else (self.path, None)
        if found is None:
            raise ModelError(f"{path}: not a vision- or audio-language model tunery serves")
        weights, adapter = found
        if processor is None:  # a tuned dir holds the processor it was trained with (the adapter's too)
            processor = load_processor(adapter or self._directory(weights))
        self.processor = processor
        self.model = (model if model is not None else self._load(weights, adapter)).eval()
        self.family = require_family(self.model.config, self.path)
        self.tokenizer = self.processor.tokenizer
        self.modalities = tuple(self.family.modalities)

    @staticmethod
    def _directory(model: str) -> str:
        """A model dir, or a catalog id's converted (or Hub-cached) dir."""
        from tunery.models.catalog import CATALOG
        from tunery.models.sources import resolve_base

        return str(resolve_base(model).path) if model in CATALOG else model

    def _load(self, weights: str, adapter: str | None) -> Any:
        """The model: its own weights, or a base with a tuned LoRA adapter merged in (projector kept whole)."""
        from tunery.models.loading import load_model  # image-text-to-text, or a multimodal LM for audio_config

        model = load_model(self._directory(weights), dtype="auto")
        if adapter is None:
            return model
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter).merge_and_unload()

    def inputs(self, example: Example) -> dict[str, torch.Tensor]:
        """The processor's tensors for ``example``'s prompt (its final model turn dropped), generation prompt on."""
        import torch

        from tunery.models.multimodal import chat_messages, decoded_media

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
                arguments.update(kind.options(self.processor))  # audio: the extractor's sampling_rate
        batch = self.processor(text=[text], return_tensors="pt", **arguments)
        return {name: value for name, value in batch.items() if isinstance(value, torch.Tensor)}

    def count_tokens(self, example: Example) -> int:
        return int(self.inputs(example)["input_ids"].shape[1])

    def generate(self, example: Example, config: GenerationConfig | None = None) -> Generation:
        import torch

        with torch.inference_mode():
            return self._generate(example, config or GenerationConfig())

    def _generate(self, example: Example, config: GenerationConfig) -> Generation:
        import torch

        from tunery.serving.constrain import is_constrained

        if is_constrained(config) or config.response_schema or config.response_json_schema:
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
