"""vLLM as the model host: ``tunery serve --engine vllm`` on a machine with CUDA and vLLM installed.

tunery starts vLLM's OpenAI-compatible server for one base model with ``--enable-lora`` and registers each
tuned adapter of that base (``--lora-modules`` at launch, vLLM's ``/v1/load_lora_adapter`` for adapters
tuned later). ``VllmHost`` is a ``tunery.serving.process.GenerationHost``, as ``ModelHost`` is (``generate``,
``agenerate``, ``astream``: one chunk, ``generate_batch``, ``count_tokens``, ``evict``), so generateContent, chat
completions and batch prediction all go to vLLM: a Gemini request becomes a chat completion (``responseSchema`` a
``json_schema`` response format, ``text/x.enum`` a guided choice), and vLLM's answer a GenerateContentResponse.

Before launching, every adapter is checked against what vLLM serves (``check_adapter``): a LoRA adapter
(not DoRA, no bias, no ``modules_to_save``) of rank at most ``--max-lora-rank`` on supported linear
layers; one that is not is named with the reason and left out. vLLM is optional: without it (or without
CUDA) ``require_vllm`` says what is missing. Nothing here imports torch or vLLM at import time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tunery import settings
from tunery.errors import ConfigError, ModelError, ServingError

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank takes
DEFAULT_MAX_LORA_RANK = 16
DEFAULT_MAX_LORAS = 4
SUPPORTED_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj",
     "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "c_attn", "c_proj", "c_fc", "fc1", "fc2",
     "out_proj", "W_pack", "wqkv", "wo", "w1", "w2", "w3"}
)  # fmt: skip
STARTUP_SECONDS = 600


@dataclass(frozen=True)
class AdapterCheck:
    """Whether vLLM serves one adapter, and if not, why."""

    name: str
    path: str
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def check_adapter(name: str, path: str | Path, max_lora_rank: int = DEFAULT_MAX_LORA_RANK) -> AdapterCheck:
    """Check a PEFT adapter directory against what vLLM's LoRA support serves."""
    config_path = Path(path) / "adapter_config.json"
    if not config_path.is_file():
        return AdapterCheck(name, str(path), ("no adapter_config.json: a full fine-tune is a base model of its own",))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}: vLLM serves LoRA adapters only")
    rank = int(config.get("r", 0))
    if rank > max_lora_rank:
        problems.append(f"rank {rank} is over --max-lora-rank {max_lora_rank}")
    if config.get("use_dora"):
        problems.append("DoRA (use_dora) is not supported by vLLM")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config['bias']!r}: vLLM serves adapters without bias terms")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']}: vLLM loads LoRA weights only")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        problems.append(f"target_modules is a pattern ({targets!r}); vLLM needs a list of module names")
    else:
        unsupported = sorted({t.rsplit(".", 1)[-1] for t in targets} - SUPPORTED_MODULES)  # vLLM: by last name
        if unsupported:
            problems.append(f"target modules vLLM does not serve: {', '.join(unsupported)}")
    if not (Path(path) / "adapter_model.safetensors").is_file():
        problems.append("no adapter_model.safetensors")
    return AdapterCheck(name, str(path), tuple(problems))


def max_lora_rank_for(ranks: list[int]) -> int:
    """The smallest ``--max-lora-rank`` value vLLM takes that covers ``ranks``."""
    need = max(ranks, default=DEFAULT_MAX_LORA_RANK)
    for value in MAX_LORA_RANKS:
        if value >= need:
            return value
    raise ConfigError(f"LoRA rank {need} is over vLLM's largest --max-lora-rank {MAX_LORA_RANKS[-1]}")


def launch_command(
    base: str,
    adapters: dict[str, str],
    *,
    port: int,
    host: str = "127.0.0.1",
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
    max_loras: int = DEFAULT_MAX_LORAS,
    served_name: str | None = None,
    python: str = sys.executable,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The command line that starts vLLM's OpenAI server for ``base`` with ``adapters`` (name → directory)."""
    if max_lora_rank not in MAX_LORA_RANKS:
        raise ConfigError(f"--max-lora-rank {max_lora_rank}: vLLM takes one of {', '.join(map(str, MAX_LORA_RANKS))}")
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", base,
               "--served-model-name", served_name or base, "--host", host, "--port", str(port), "--enable-lora",
               "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max(1, max_loras))]  # fmt: skip
    if adapters:
        command.append("--lora-modules")
        command += [json.dumps({"name": name, "path": path, "base_model_name": served_name or base})
                    for name, path in adapters.items()]  # fmt: skip
    return command + list(extra)


def require_vllm() -> None:
    """ConfigError saying what is missing when this machine cannot run vLLM (CUDA, the package)."""
    import importlib.util

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package (pip install vllm, on a machine with CUDA)")
    if shutil.which("nvidia-smi") is None and not Path("/proc/driver/nvidia").exists():
        missing.append("an NVIDIA GPU with its driver (CUDA)")
    if missing:
        raise ConfigError("--engine vllm needs " + " and ".join(missing) + "; --engine transformers runs on CPU")


# --- requests and answers --------------------------------------------------------------------------------


def chat_request(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """A Gemini generateContent body as a vLLM chat completion body for ``model`` (the base or an adapter)."""
    from tunery.serving.constrain import ENUM_MIME, to_json_schema
    from tunery.serving.gemini import parse_generate_request

    example, config = parse_generate_request(request)
    if config.response_logprobs:
        raise ModelError("responseLogprobs is not served with --engine vllm yet; --engine transformers returns them")
    messages: list[dict[str, str]] = [{"role": "system", "content": example.system}] if example.system else []
    messages += [{"role": "assistant" if t.role == "model" else "user", "content": t.text} for t in example.turns]
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": config.max_output_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
    }
    if config.top_k:
        body["top_k"] = config.top_k
    if config.seed is not None:
        body["seed"] = config.seed
    if config.stop_sequences:
        body["stop"] = list(config.stop_sequences)
    if config.response_mime_type == ENUM_MIME and config.response_schema is not None:
        body["guided_choice"] = list(config.response_schema["enum"])
    elif config.response_mime_type == "application/json":
        schema = config.response_json_schema
        if schema is None:
            schema = to_json_schema(config.response_schema) if config.response_schema is not None else {}
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return body


def gemini_response(answer: dict[str, Any], model_version: str, latency_ms: float) -> dict[str, Any]:
    """vLLM's chat completion as Gemini's GenerateContentResponse."""
    choice = (answer.get("choices") or [{}])[0]
    usage = answer.get("usage") or {}
    reason = "MAX_TOKENS" if choice.get("finish_reason") == "length" else "STOP"
    prompt, output = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    text = (choice.get("message") or {}).get("content") or ""
    return {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output,
                          "totalTokenCount": prompt + output},
        "modelVersion": model_version,
        "latencyMs": round(latency_ms, 1),
    }  # fmt: skip


# --- the host ------------------------------------------------------------------------------------------


@dataclass
class VllmHost:
    """vLLM's OpenAI server for one base model and its adapters, behind the ``ModelHost`` calls the API makes.

    ``adapters`` maps a tuned model's directory to the name vLLM serves it under; a request for a model
    directory not registered yet is checked and loaded at run time (``/v1/load_lora_adapter``).
    """

    base: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> adapter directory
    port: int = 0
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_loras: int = DEFAULT_MAX_LORAS
    timeout: float = 300
    log_path: str | None = None
    skipped: list[AdapterCheck] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._external = False  # attached to a server another process started (``connect``)
        checks = [check_adapter(name, path, self.max_lora_rank) for name, path in self.adapters.items()]
        self.skipped = [c for c in checks if not c.ok]
        self.adapters = {c.name: c.path for c in checks if c.ok}
        self._by_path = {str(Path(p).resolve()): n for n, p in self.adapters.items()}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def connect(cls, url: str, base: str) -> VllmHost:
        """A client of the vLLM server at ``url`` (started by ``tunery serve --engine vllm``), for workers."""
        host = cls(base, port=int(url.rstrip("/").rsplit(":", 1)[1]))
        host._external = True
        return host

    def command(self) -> list[str]:
        return launch_command(self.base, self.adapters, port=self.port, max_lora_rank=self.max_lora_rank,
                              max_loras=self.max_loras)  # fmt: skip

    def start(self) -> None:
        """Launch vLLM and wait until it answers ``/health``."""
        require_vllm()
        if not self.port:
            import socket

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        import httpx

        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServingError(f"vLLM exited (code {self._proc.returncode}) while starting; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.close()
        raise ServingError(f"vLLM did not start within {STARTUP_SECONDS} s")

    def served_name(self, model: str) -> str:
        """The name vLLM serves ``model`` (the base, or a tuned adapter directory) under, loading it if new."""
        if model == self.base:
            return model
        resolved = str(Path(model).resolve())
        if resolved in self._by_path:
            return self._by_path[resolved]
        name = Path(model).name
        check = check_adapter(name, model, self.max_lora_rank)
        if not check.ok:
            raise ModelError(f"vLLM cannot serve {name}: {'; '.join(check.problems)}")
        self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": resolved})
        self.adapters[name], self._by_path[resolved] = resolved, name
        return name

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        if self._proc is None and not self._external:
            self.start()
        reply = httpx.post(f"{self.url}{path}", json=body, timeout=self.timeout)
        if reply.status_code >= 400:
            code = 400 if reply.status_code < 500 else 502
            raise ServingError(f"vLLM answered {reply.status_code}: {reply.text[:500]}", code)
        return reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}

    def generate(
        self,
        model: str,
        request: dict[str, Any],
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        answer = self._post("/v1/chat/completions", chat_request(self.served_name(model), request))
        return gemini_response(answer, model_version or Path(model).name, (time.perf_counter() - started) * 1000)

    def generate_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any] | BaseException]:
        """Each item sent at once (vLLM batches them continuously); each one's answer or error, in order."""
        from concurrent.futures import ThreadPoolExecutor

        def one(item: dict[str, Any]) -> dict[str, Any] | BaseException:
            try:
                return self.generate(item["model"], item["request"], item.get("maxPromptTokens"),
                                     item.get("modelVersion"))  # fmt: skip
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
            return list(pool.map(one, items))

    async def agenerate(self, model: str, request: dict[str, Any], *, max_prompt_tokens: int | None = None,
                        model_version: str | None = None, timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
        work = partial(self.generate, model, request, max_prompt_tokens, model_version)
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, work), timeout)

    async def astream(
        self,
        model: str,
        request: dict[str, Any],
        *,
        max_prompt_tokens: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The answer as one ``GenerateContentResponse`` chunk (its ``finishReason`` and ``usageMetadata`` with it)."""
        yield await self.agenerate(
            model, request, max_prompt_tokens=max_prompt_tokens, model_version=model_version, timeout=timeout
        )

    async def acount_tokens(
        self, model: str, request: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        work = partial(self.count_tokens, model, request)
        return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, work), timeout)

    def evict(self, model: str) -> bool:
        """Unload a tuned adapter (its directory was deleted) from vLLM; whether it was loaded. Starts no server."""
        name = self._by_path.get(str(Path(model).resolve()))
        if name is None or (self._proc is None and not self._external):
            return False
        self._post("/v1/unload_lora_adapter", {"lora_name": name})
        del self._by_path[str(Path(model).resolve())], self.adapters[name]
        return True

    def count_tokens(self, model: str, request: dict[str, Any]) -> dict[str, Any]:
        body = chat_request(self.served_name(model), {**request, "generationConfig": {}})
        answer = self._post("/tokenize", {"model": body["model"], "messages": body["messages"]})
        return {"totalTokens": int(answer.get("count", 0))}

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> VllmHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def adapters_of(base: str, tuned: list[tuple[str, str, str]]) -> dict[str, str]:
    """The tuned adapters (``(id, base model, directory)`` rows) that were tuned from ``base``."""
    return {model_id: path for model_id, model_base, path in tuned if model_base == base}


def stored_adapters(store: Any, base: str) -> dict[str, str]:
    """Every tenant's tuned models of ``base`` in the job store (``Store.every_tuned_model``), by id (vLLM's adapter
    names)."""
    return adapters_of(base, [(m.id, m.base_model, m.path) for m in store.every_tuned_model()])


def start_for_service(store: Any, base: str, max_lora_rank: int, max_loras: int, log_path: str | None) -> VllmHost:
    """Check the stored adapters of ``base``, say on stderr which vLLM cannot serve and why, start vLLM with the
    rest, and tell worker processes (batch prediction) where it is."""
    require_vllm()
    from tunery.models.catalog import CATALOG

    model = str(settings.models_cache() / base) if base in CATALOG else base  # a catalog model's converted HF directory
    host = VllmHost(model, stored_adapters(store, base), max_lora_rank=max_lora_rank, max_loras=max_loras,
                    log_path=log_path)  # fmt: skip
    for check in host.skipped:
        sys.stderr.write(f"vLLM will not serve tuned model {check.name}: {'; '.join(check.problems)}\n")
    host.start()
    settings.announce_vllm_server(host.url, base)
    return host


def importlib_available() -> bool:
    """Whether the vllm package is installed (it is never imported here)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None
