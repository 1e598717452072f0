"""Export a tuned model (or a catalog base) to where small models run: a GGUF file for llama.cpp, an Ollama Modelfile.

    export_gguf("tuned-models/abc", Path("out"), quant="q8_0", ollama=True)

It lives in ``tunery.models`` because everything it needs is here or below: loading tuned and base models, their
tokenizer and chat template (``tunery.models``), and the end-of-turn token and training examples
(``tunery.data``). Serving, jobs and the API call down into it; it calls nothing above.

A LoRA model is merged into its base first (or, with ``adapter_only``, written as llama.cpp's GGUF LoRA adapter).
The GGUF carries the chat template the model was tuned with (``tokenizer.chat_template``), its end-of-sequence
and end-of-turn token ids, and a model card (``general.*`` and ``tunery.*`` keys: base model, tuned-from, tunery
version, data stats). Everything is written into a hidden folder beside ``output`` and renamed to ``output`` at the
end: a failure (a full disk, a model it cannot write) leaves no half-written file behind.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery.errors import ConfigError, DiskFullError, ModelError, disk_full
from tunery.models import gguf as writer
from tunery.models.modelfile import modelfile

K_QUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}  # written by llama.cpp's llama-quantize
QUANTS = (*writer.PYTHON_QUANTS, *K_QUANTS)
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 1.07, "q4_0": 0.57, "q4_1": 0.63, "q4_k_m": 0.6,
                    "q5_k_m": 0.7, "q6_k": 0.83}  # fmt: skip
LLAMA_QUANTIZE = "llama-quantize"
TIMEOUT_SECONDS = 3600.0

Progress = Callable[[float, str], None]
"""``(fraction done, what is happening)``."""


@dataclass
class Exported:
    """What an export wrote, under ``output``."""

    output: Path
    gguf: Path
    quant: str
    seconds: float
    adapter: bool = False
    modelfile: Path | None = None
    files: dict[str, int] = field(default_factory=dict)  # file name → bytes

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "gguf": str(self.gguf), "quant": self.quant, "adapter": self.adapter,
                "modelfile": str(self.modelfile) if self.modelfile else None, "seconds": round(self.seconds, 2),
                "files": self.files}  # fmt: skip


@dataclass
class Source:
    """The model to export, loaded: a tuned model directory or a base model."""

    name: str  # for file names and general.name
    path: Path  # where its tokenizer (and template) are read
    manifest: dict[str, Any] | None  # tunery.json of a tuned model
    base_id: str
    adapter: bool


def check_request(quant: str, output: Path, adapter_only: bool) -> None:
    """The checks that need no model: a known quant that this machine can write, a new output folder."""
    if quant not in QUANTS:
        raise ConfigError(f"--quant {quant!r}: expected one of {', '.join(QUANTS)}")
    if quant in K_QUANTS and not adapter_only and shutil.which(LLAMA_QUANTIZE) is None:
        raise ConfigError(
            f"--quant {quant} is written by llama.cpp's {LLAMA_QUANTIZE}, which is not on PATH: install llama.cpp "
            "(brew install llama.cpp, or build it from https://github.com/ggml-org/llama.cpp: cmake -B build && "
            f"cmake --build build --target {LLAMA_QUANTIZE}) and put its bin folder on PATH; tunery itself writes "
            f"{', '.join(writer.PYTHON_QUANTS)}"
        )
    if adapter_only and quant not in ("f32", "f16"):
        raise ConfigError(f"--adapter-only writes f32 or f16 LoRA matrices (llama.cpp's adapters); not {quant}")
    if output.exists():
        raise ConfigError(f"--output {output} already exists; name a new folder (nothing was written)")
    if output.parent.exists() and not output.parent.is_dir():
        raise ConfigError(f"--output {output}: {output.parent} is not a folder")


def source(model: str | Path) -> Source:
    """A tuned model directory, a catalog id or a local base model directory."""
    from tunery.models.sources import resolve_base
    from tunery.models.tuned import is_adapter, is_tuned_dir, read_manifest

    if is_tuned_dir(model):
        path = Path(model)
        manifest = read_manifest(path)
        name = manifest.get("displayName") or manifest.get("id") or path.name
        return Source(name, path, manifest, manifest["baseModel"]["id"], is_adapter(path))
    base = resolve_base(model)
    return Source(Path(base.id).name, base.path, None, base.id, False)


def file_stem(name: str, quant: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") + f"-{quant}"


def export_gguf(
    model: str | Path,
    output: Path,
    quant: str = "f16",
    adapter_only: bool = False,
    ollama: bool = False,
    on_progress: Progress = lambda fraction, message: None,
    timeout: float = TIMEOUT_SECONDS,
) -> Exported:
    """Write ``output``/NAME-QUANT.gguf (and a ``Modelfile``); see the module docstring."""
    output = Path(output)
    check_request(quant, output, adapter_only)
    src = source(model)
    if adapter_only and not src.adapter:
        raise ConfigError(f"--adapter-only: {model} is not a LoRA tuned model (it holds full weights)")
    started = time.monotonic()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        on_progress(0.0, f"loading {src.name}")
        result = _write(src, staging, quant, adapter_only, ollama, on_progress, started + timeout)
        staging.rename(output)
    except OSError as exc:
        full = disk_full(exc, output.parent, f"the export folder {output.parent}")
        if full is not None:
            raise full from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.output = output
    result.gguf = output / result.gguf.name
    result.modelfile = output / result.modelfile.name if result.modelfile else None
    result.files = {p.name: p.stat().st_size for p in sorted(output.iterdir())}
    result.seconds = time.monotonic() - started
    on_progress(1.0, f"wrote {result.gguf.name} ({result.files[result.gguf.name] / 1e6:.1f} MB)")
    return result


def _write(
    src: Source, folder: Path, quant: str, adapter_only: bool, ollama: bool, on_progress: Progress, deadline: float
) -> Exported:
    from tunery.data.tokenize import end_of_turn_token
    from tunery.models.loading import load_tokenizer

    tokenizer = load_tokenizer(src.path)
    end_of_turn = end_of_turn_token(tokenizer)
    if adapter_only:
        path = _write_adapter(src, folder, quant, on_progress)
    else:
        model = _load(src)
        _check_space(folder, sum(p.numel() for p in model.parameters()) * BYTES_PER_WEIGHT[quant] * 2)
        path = _write_model(src, model, tokenizer, end_of_turn, folder, quant, on_progress, deadline)
        del model
    result = Exported(folder, path, quant, 0.0, adapter=adapter_only)
    if ollama:
        stops = [t for t in dict.fromkeys([end_of_turn, tokenizer.eos_token]) if t]
        base_file = file_stem(Path(src.base_id).name, quant) + ".gguf"  # what exporting the base writes
        text = modelfile(
            base_file if adapter_only else path.name,
            tokenizer,
            stops,
            shared_system(src.manifest),
            adapter=path.name if adapter_only else None,
            note=(f"FROM is the base model's GGUF: tunery export {src.base_id} --format gguf --quant {quant}"
                  if adapter_only else f"{src.name}, exported by tunery"),
        )  # fmt: skip
        result.modelfile = folder / "Modelfile"
        result.modelfile.write_text(text)
    return result


def _check_space(folder: Path, needed: float) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(f"the export folder {folder.parent} has {free / 1e9:.2f} GB free; this export needs about "
                            f"{needed / 1e9:.2f} GB")  # fmt: skip


def _load(src: Source) -> Any:
    from tunery.models.loading import load_model
    from tunery.models.tuned import load_tuned

    if src.adapter:
        model, _ = load_tuned(src.path)
        return model.merge_and_unload()
    return load_model(src.path)


def _metadata(src: Source, model: Any, tokenizer: Any, end_of_turn: str | None, quant: str) -> Callable[[Any], None]:
    from tunery import __version__
    from tunery.models.catalog import CATALOG

    config = model.config
    vocabulary = _vocabulary(src, tokenizer, config.vocab_size, end_of_turn)
    context = CATALOG[src.base_id].context_length if src.base_id in CATALOG else config.max_position_embeddings

    def write(w: Any) -> None:
        # transformers reads a "llama" GGUF as Mistral only when general.name says so
        is_mistral = "MistralForCausalLM" in (config.architectures or [])
        w.add_name(("mistral " if is_mistral and "mistral" not in src.name.lower() else "") + src.name)
        w.add_file_type(writer.file_type(quant))
        w.add_quantization_version(2)
        w.add_base_model_count(1)
        w.add_base_model_name(0, src.base_id)
        w.add_string("tunery.version", __version__)
        w.add_string("tunery.base_model", src.base_id)
        if src.manifest is not None:
            w.add_string("tunery.tuned_model", str(src.manifest.get("id", "")))
            w.add_string("tunery.tuned_from", src.base_id)
            w.add_string("tunery.tuning_mode", str(src.manifest.get("tuningMode", "")))
            w.add_string("tunery.data_stats", json.dumps(src.manifest.get("tuningDataStats") or {}))
            w.add_string("tunery.hyperparameters", json.dumps(src.manifest.get("hyperParameters") or {}))
            if src.manifest.get("labels"):
                w.add_string("tunery.labels", json.dumps(src.manifest["labels"]))
        writer.write_hyperparameters(w, config, context, writer.family(config))
        vocabulary(w)

    return write


def _vocabulary(src: Source, tokenizer: Any, vocab_size: int, end_of_turn: str | None) -> Callable[[Any], None]:
    """How the tokenizer is written: a byte-level BPE one from itself, the tokenization tuning used (which llama.cpp
    must repeat); a SentencePiece-style one (Gemma's) from the GGUF its catalog base was converted from."""
    from tunery.models.catalog import CATALOG
    from tunery.settings import models_cache

    try:
        pre = writer.pre_tokenizer_name(tokenizer)
        return lambda w: writer.write_tokenizer(w, tokenizer, vocab_size, pre, end_of_turn)
    except ModelError:
        entry = CATALOG.get(src.base_id)
        if entry is None or entry.gguf is None:
            raise
    source = entry.gguf()

    def write(w: Any) -> None:
        writer.copy_tokenizer(w, source, tokenizer, vocab_size, end_of_turn)
        if source.is_relative_to(models_cache()):  # a GGUF assembled only to be read here, as conversion does
            source.unlink(missing_ok=True)

    return write


def _write_model(
    src: Source, model: Any, tokenizer: Any, end_of_turn: str | None, folder: Path, quant: str,
    on_progress: Progress, deadline: float,
) -> Path:  # fmt: skip
    fam = writer.family(model.config)
    direct = quant if quant in writer.PYTHON_QUANTS else "f16"  # a K-quant: f16 first, then llama-quantize
    metadata = _metadata(src, model, tokenizer, end_of_turn, direct)
    count = len(model.state_dict())

    def on_tensor(n: int) -> None:
        if time.monotonic() > deadline:
            raise ModelError(f"the export ran past its time limit ({TIMEOUT_SECONDS:.0f} s)")
        on_progress(0.9 * n / count if direct == quant else 0.5 * n / count, f"writing tensor {n} of {count}")

    path = folder / (file_stem(src.name, quant) + ".gguf")
    tensors = ((name, data, writer.tensor_type(name, data, direct)) for name, data in writer.gguf_weights(model, fam))
    first = path if direct == quant else folder / ".f16.gguf"
    writer.write_file(first, fam.name, metadata, tensors, on_tensor)
    if direct != quant:
        on_progress(0.55, f"{LLAMA_QUANTIZE} → {quant}")
        _quantize(first, path, K_QUANTS[quant], deadline)
        first.unlink()
    return path


def _quantize(source_file: Path, target: Path, kind: str, deadline: float) -> None:
    command = [shutil.which(LLAMA_QUANTIZE) or LLAMA_QUANTIZE, str(source_file), str(target), kind]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"{LLAMA_QUANTIZE} ran past the export's time limit") from exc
    if run.returncode != 0:
        raise ModelError(f"{LLAMA_QUANTIZE} failed (exit {run.returncode}): {run.stderr.strip()[-800:]}")


def _write_adapter(src: Source, folder: Path, quant: str, on_progress: Progress) -> Path:
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from tunery.models.tuned import base_path

    assert src.manifest is not None
    peft = json.loads((src.path / "adapter_config.json").read_text())
    config = AutoConfig.from_pretrained(str(base_path(src.manifest)))
    fam = writer.family(config)
    state = load_file(str(src.path / "adapter_model.safetensors"))
    rank = int(peft["r"])
    alpha = float(peft["lora_alpha"]) * (rank**0.5 if peft.get("use_rslora") else 1.0)  # llama.cpp scales by α/r

    def metadata(w: Any) -> None:
        from tunery import __version__

        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name(src.name)
        w.add_string("tunery.version", __version__)
        w.add_string("tunery.base_model", src.base_id)
        w.add_string("tunery.data_stats", json.dumps(src.manifest.get("tuningDataStats") or {}))  # type: ignore[union-attr]

    on_progress(0.1, "writing the LoRA adapter")
    qtype = "F16" if quant == "f16" else "F32"
    tensors = ((name, data, qtype) for name, data in writer.adapter_tensors(state, config, fam))
    path = folder / (file_stem(src.name, quant) + "-lora.gguf")
    writer.write_file(path, fam.name, metadata, tensors)
    return path


def shared_system(manifest: dict[str, Any] | None) -> str | None:
    """The system instruction every training example carried, if they all carried the same one."""
    from tunery.data.formats import parse_example

    train = ((manifest or {}).get("spec") or {}).get("train")
    if not train or not Path(train).is_file():
        return None
    systems = set()
    with Path(train).open() as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                example, _ = parse_example(json.loads(line), number)
                systems.add(example.system if example else None)
                if len(systems) > 1:
                    return None
    return next(iter(systems), None)
