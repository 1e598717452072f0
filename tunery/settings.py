"""Where tunery keeps its files: ``$TUNERY_HOME`` (default ``~/.tunery``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The catalog's default base model (``tunery.models.catalog``): what a job, a prediction or an upload that names
none uses. Kept here, below the catalog, so that settings such as ``warm_models()`` name it without importing it."""


def tunery_home() -> Path:
    """The root of tunery's state: converted base models, tuned models, jobs."""
    return Path(os.environ.get("TUNERY_HOME") or Path.home() / ".tunery").expanduser()


def models_cache() -> Path:
    """Converted base models, one safetensors directory per catalog id."""
    return tunery_home() / "models"


def artifacts() -> str | None:
    """``$TUNERY_ARTIFACTS``: where tuned models go, a path every Ray node reaches or an fsspec URL (``s3://...``)
    they are copied to (``tunery.jobs.artifacts``); unset, under ``$TUNERY_HOME``."""
    return os.environ.get("TUNERY_ARTIFACTS") or None


def tuned_models_dir() -> Path:
    """Default parent of tuned model directories: ``TUNERY_ARTIFACTS`` (a path every Ray node reaches) if set; a
    URL there (``s3://...``) is a copy (``tunery.jobs.artifacts``) and the directories stay under ``$TUNERY_HOME``."""
    artifacts_ = artifacts()
    if artifacts_ and "://" not in artifacts_:
        return Path(artifacts_).expanduser()
    return tunery_home() / "tuned-models"


def jobs_dir() -> Path:
    """Tuning job work directories (worker logs), one per job."""
    return tunery_home() / "jobs"


def job_inputs_dir() -> Path:
    """Queued and running jobs' own links to the uploads they train from, one directory per job."""
    return tunery_home() / "job-inputs"


def database_url() -> str:
    """The job store: ``$TUNERY_DATABASE_URL`` (a PostgreSQL URL, say), else SQLite under ``$TUNERY_HOME``."""
    return os.environ.get("TUNERY_DATABASE_URL") or f"sqlite:///{tunery_home() / 'tunery.db'}"


def files_dir() -> Path:
    """Uploaded dataset files, one JSONL per file id."""
    return tunery_home() / "files"


def upload_model() -> str | None:
    """``$TUNERY_UPLOAD_MODEL``: the model whose tokenizer counts an upload that names none (Google's and
    OpenAI's clients upload without one); unset, the catalog's default model."""
    return os.environ.get("TUNERY_UPLOAD_MODEL", "").strip() or None


def data_root() -> Path | None:
    """``$TUNERY_DATA_ROOT``: the only directory whose datasets and base models the service reads by path."""
    root = os.environ.get("TUNERY_DATA_ROOT")
    return Path(root).expanduser().resolve() if root else None


def _env_int(name: str, default: int, least: int = 1) -> int:
    """A whole-number setting; a value that is not one (or is below ``least``) is a ``ConfigError`` naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < least:
        raise ConfigError(f"{name}={raw!r}: expected a whole number, at least {least}")
    return int(raw)


def max_line_bytes() -> int:
    """``$TUNERY_MAX_LINE_BYTES`` (default 8 MiB): the longest dataset line the checker reads; a longer line is a
    problem at its line number, skipped without being held in memory. Room for a few MB of inline media."""
    return _env_int("TUNERY_MAX_LINE_BYTES", 8 * 2**20)


def max_example_chars() -> int:
    """``$TUNERY_MAX_EXAMPLE_CHARS`` (default 1 Mi characters): the most text one dataset example may hold; the
    tokenizer takes about 0.7 s and 150 MB per million characters, so this bounds one line's check."""
    return _env_int("TUNERY_MAX_EXAMPLE_CHARS", 2**20)


def public_url() -> str | None:
    """``$TUNERY_PUBLIC_URL``: the base URL clients reach the service at (``https://tunery.example.com/``), used
    for the URLs the service hands out (``tunedModel.endpoint``); unset, the address the server is bound to."""
    raw = os.environ.get("TUNERY_PUBLIC_URL", "").strip()
    return raw.rstrip("/") + "/" if raw else None


def store_retry_seconds() -> int:
    """``$TUNERY_STORE_RETRY_SECONDS`` (default 60): how long a job's worker retries a job-store write that fails
    (the database restarting, a full disk), backing off, before it gives up and exits; the scheduler never gives up."""
    return _env_int("TUNERY_STORE_RETRY_SECONDS", 60, least=0)


def fault_pause_at() -> str | None:
    """``$TUNERY_FAULT_PAUSE_AT``, for fault tests: phases of a tuning run, comma-separated (``step 3``, ``save``,
    ``evaluation``), where a job's worker writes the phase to ``paused`` in the job's directory and waits until that
    file is removed."""
    return os.environ.get("TUNERY_FAULT_PAUSE_AT") or None


def warm_start() -> bool:
    """``TUNERY_WARM_START`` (default on; ``0`` turns it off): ``tunery serve`` starts its model host and checker
    with the server and loads ``warm_models()`` in them, so the first request does not wait for a cold start."""
    return os.environ.get("TUNERY_WARM_START", "1").strip().lower() not in ("0", "false", "no", "off")


def warm_models() -> list[str]:
    """``TUNERY_WARM_MODELS``: the comma-separated models the model host loads at start (default the catalog's
    default model; empty: none, only the engine is imported)."""
    raw = os.environ.get("TUNERY_WARM_MODELS")
    return [DEFAULT_MODEL] if raw is None else [name.strip() for name in raw.split(",") if name.strip()]


def max_upload_bytes() -> int:
    """``$TUNERY_MAX_UPLOAD_BYTES`` (default 256 MiB): the largest dataset file the service accepts in one upload."""
    return _env_int("TUNERY_MAX_UPLOAD_BYTES", 256 * 2**20)


def upload_own_checker_bytes() -> int:
    """``TUNERY_UPLOAD_OWN_CHECKER_BYTES`` (default 4 MiB): from this size on an upload is checked in a checker
    process of its own (``tunery.api.checks``)."""
    return _env_int("TUNERY_UPLOAD_OWN_CHECKER_BYTES", 4 * 2**20)


def upload_check_seconds() -> float:
    """``TUNERY_UPLOAD_CHECK_SECONDS`` (default 600): the most one big upload's check may take."""
    return _env_seconds("TUNERY_UPLOAD_CHECK_SECONDS", 600.0)


def orphan_grace_seconds() -> float:
    """``TUNERY_ORPHAN_GRACE_SECONDS`` (default 30): how long a job's worker whose server died may take to
    checkpoint before it exits anyway (``tunery.lifeline``)."""
    return _env_seconds("TUNERY_ORPHAN_GRACE_SECONDS", 30.0)


def _env_seconds(name: str, default: float) -> float:
    """A duration setting in seconds, above 0; anything else is a ``ConfigError`` naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds above 0")
    return value


@dataclass(frozen=True)
class AdmissionLimits:
    """What the service admits to generation, and to tuning, per model host and per tenant (``tunery.api.admission``).

    A request past a limit is answered 429 ``RESOURCE_EXHAUSTED`` with ``Retry-After`` at once, never left to
    time out. ``from_env()`` reads each from the variable named in its docstring.
    """

    host_slots: int = 8
    """``TUNERY_GENERATION_SLOTS``: calls a model host runs at once (it batches them); the rest wait in its queue."""
    host_queue: int = 64
    """``TUNERY_GENERATION_QUEUE``: calls that may wait for a model host's slot, all tenants together."""
    queue_seconds: float = 30.0
    """``TUNERY_GENERATION_QUEUE_SECONDS``: the longest a call waits for a slot before it is refused (429)."""
    tenant_requests: int = 16
    """``TUNERY_TENANT_MAX_REQUESTS``: one tenant's generation calls in flight (running and waiting)."""
    tenant_tokens: int = 32768
    """``TUNERY_TENANT_MAX_TOKENS``: one tenant's tokens in flight (each call: its text / 4 + maxOutputTokens)."""
    tenant_jobs: int = 8
    """``TUNERY_TENANT_MAX_JOBS``: one tenant's tuning jobs waiting or running."""
    max_request_seconds: float = 300.0
    """``TUNERY_MAX_REQUEST_TIMEOUT``: the longest deadline a client may set with ``X-Request-Timeout`` (and the
    deadline of a call that sets none)."""
    api_threads: int = 64
    """``TUNERY_API_THREADS``: threads for the control plane's blocking work (store reads, auth); generation
    never holds one."""

    @classmethod
    def from_env(cls) -> AdmissionLimits:
        return cls(
            host_slots=_env_int("TUNERY_GENERATION_SLOTS", cls.host_slots),
            host_queue=_env_int("TUNERY_GENERATION_QUEUE", cls.host_queue, least=0),
            queue_seconds=_env_seconds("TUNERY_GENERATION_QUEUE_SECONDS", cls.queue_seconds),
            tenant_requests=_env_int("TUNERY_TENANT_MAX_REQUESTS", cls.tenant_requests),
            tenant_tokens=_env_int("TUNERY_TENANT_MAX_TOKENS", cls.tenant_tokens),
            tenant_jobs=_env_int("TUNERY_TENANT_MAX_JOBS", cls.tenant_jobs),
            max_request_seconds=_env_seconds("TUNERY_MAX_REQUEST_TIMEOUT", cls.max_request_seconds),
            api_threads=_env_int("TUNERY_API_THREADS", cls.api_threads),
        )


def device_memory_limit() -> int | None:
    """``$TUNERY_DEVICE_MEMORY``: bytes a tuning run may use on its device (``24GiB``, ``512MiB``, a number of
    bytes); unset, the device's own (free GPU memory; the machine's or cgroup's memory on a CPU)."""
    raw = os.environ.get("TUNERY_DEVICE_MEMORY", "").strip()
    if not raw:
        return None
    units = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    units.update({"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12})
    number = raw.rstrip("bBiIkKmMgGtT")
    unit = raw[len(number) :].strip().lower()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ConfigError(f"TUNERY_DEVICE_MEMORY={raw!r}: expected bytes, or a size such as 512MiB or 24GiB") from None
    if value <= 0:
        raise ConfigError(f"TUNERY_DEVICE_MEMORY={raw!r}: expected more than 0")
    return int(value)


def hf_offline() -> bool:
    """``$HF_HUB_OFFLINE`` (1/true): resolve Hub models from the local cache only, never the network."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


SERVING_WEIGHTS = ("auto", "fp32", "bf16", "int8", "int4")


def serving_max_models() -> int:
    """``$TUNERY_SERVING_MAX_MODELS`` (default 2): base models the model host keeps loaded (a full tuned model is
    a base of its own); the least recently used idle one is dropped first."""
    return _serving_int("TUNERY_SERVING_MAX_MODELS", 2)


def serving_max_adapters() -> int:
    """``$TUNERY_SERVING_MAX_ADAPTERS`` (default 8, like vLLM's ``--max-loras``): LoRA adapters attached to each
    loaded base at once; the least recently used idle one is dropped for a new one (reloaded when asked again)."""
    return _serving_int("TUNERY_SERVING_MAX_ADAPTERS", 8)


def serving_max_batch() -> int:
    """``$TUNERY_SERVING_MAX_BATCH`` (default 8): rows that decode together on one base; more wait to join."""
    return _serving_int("TUNERY_SERVING_MAX_BATCH", 8)


def serving_prefix_cache_bytes() -> int:
    """``$TUNERY_SERVING_PREFIX_CACHE_MIB`` (default 256; 0 turns it off): the keys and values of recent prompts kept
    per loaded base, so a prompt that starts like one of them prefills only the rest (``tunery.serving.prefix``)."""
    return _env_int("TUNERY_SERVING_PREFIX_CACHE_MIB", 256, least=0) << 20


SERVING_PREFILL_CHUNK = 128


def serving_prefill_chunk() -> int | None:
    """``$TUNERY_SERVING_PREFILL_CHUNK`` (default 128; 0: a whole prompt at once): the prompt tokens the model host
    prefills between two decode steps, so a long prompt joining a running batch does not stall the rows in it."""
    return _env_int("TUNERY_SERVING_PREFILL_CHUNK", SERVING_PREFILL_CHUNK, least=0) or None


def serving_weights() -> str:
    """``$TUNERY_SERVING_WEIGHTS`` (default ``auto``): how the model host holds weights: ``auto`` (the fastest this
    machine runs: int4 on a CPU with AVX512-BF16/AMX, else fp32), ``fp32`` (the reference: the answers ``tunery
    evaluate`` measured), ``bf16``, ``int8`` or ``int4`` (weight-only, bf16 activations:
    ``tunery.serving.quantized``)."""
    from tunery.errors import ConfigError

    raw = os.environ.get("TUNERY_SERVING_WEIGHTS", "").strip() or "auto"
    if raw not in SERVING_WEIGHTS:
        raise ConfigError(f"TUNERY_SERVING_WEIGHTS={raw!r}: expected one of {', '.join(SERVING_WEIGHTS)}")
    return raw


EVALUATION_WEIGHTS = ("served", "auto", "fp32", "bf16", "int8", "int4")


def evaluation_weights() -> str:
    """``$TUNERY_EVALUATION_WEIGHTS`` (default ``served``): the weights an evaluation measures: ``served`` (the form
    ``tunery serve`` holds here, ``$TUNERY_SERVING_WEIGHTS`` resolved), ``auto`` or a form; any form but fp32 is
    measured beside fp32, and ``fp32`` alone."""
    from tunery.errors import ConfigError

    raw = os.environ.get("TUNERY_EVALUATION_WEIGHTS", "").strip() or "served"
    if raw not in EVALUATION_WEIGHTS:
        raise ConfigError(f"TUNERY_EVALUATION_WEIGHTS={raw!r}: expected one of {', '.join(EVALUATION_WEIGHTS)}")
    return raw


def _serving_int(name: str, default: int) -> int:
    """A whole-number serving setting of at least 1; anything else is a ``ConfigError`` naming it."""
    from tunery.errors import ConfigError

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name}={raw!r}: expected a whole number, at least 1")
    return int(raw)


def executor() -> str | None:
    """``$TUNERY_EXECUTOR`` (``local`` or ``ray``): where the server's scheduler runs job workers when ``tunery serve
    --executor`` names none; unset, local processes (``tunery.jobs.scheduler.make_executor``)."""
    return os.environ.get("TUNERY_EXECUTOR") or None


API_ENDPOINT_ENV = "TUNERY_API_ENDPOINT"
API_KEY_ENV = "TUNERY_API_KEY"


def api_client() -> tuple[str, str]:
    """``($TUNERY_API_ENDPOINT, $TUNERY_API_KEY)``, each ``""`` when unset: the tunery server the SDK and the CLI's
    remote commands talk to, and the key they send; no endpoint: the SDK is embedded."""
    return os.environ.get(API_ENDPOINT_ENV) or "", os.environ.get(API_KEY_ENV) or ""


def progress_seconds() -> float:
    """``$TUNERY_PROGRESS_SECONDS`` (default 30): away from a terminal, the CLI prints a long step's progress line
    at most this often."""
    return float(os.environ.get("TUNERY_PROGRESS_SECONDS", "30"))


KILL_AFTER_STEP_ENV = "TUNERY_TEST_KILL_AFTER_STEP"


def kill_after_step() -> str | None:
    """``$TUNERY_TEST_KILL_AFTER_STEP`` (``STEP[:RANK]``), for fault tests: the step after which a tuning process
    kills itself (``tunery.tuning.distributed.kill_point``)."""
    return os.environ.get(KILL_AFTER_STEP_ENV) or None


def announce_vllm_server(url: str, base: str) -> None:
    """Set ``vllm_server()`` for this process and the workers it starts (``tunery serve --engine vllm``)."""
    os.environ["TUNERY_VLLM_URL"], os.environ["TUNERY_VLLM_BASE"] = url, base


def vllm_server() -> tuple[str, str] | None:
    """``$TUNERY_VLLM_URL`` and ``$TUNERY_VLLM_BASE``: the vLLM server ``tunery serve --engine vllm`` started and
    its base model, which batch prediction workers send their lines to; None when generation is tunery's own."""
    url, base = os.environ.get("TUNERY_VLLM_URL", "").strip(), os.environ.get("TUNERY_VLLM_BASE", "").strip()
    return (url, base) if url and base else None
