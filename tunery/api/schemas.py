"""The REST shapes, as pydantic models: request bodies (validated) and responses (documented).

Requests are checked here first (every field at fault is named in one 400), then by the layer that owns
the meaning: ``TuningSpec.__post_init__`` for hyperparameters, ``tunery.serving.gemini`` for prompts.
Defaults are not repeated here: a field left out takes ``TuningSpec``'s default. Responses are built by
the storage rows (``Job.resource()``) and described by the models below in the OpenAPI document; they are
not re-validated on the way out.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tunery.api import limits
from tunery.jobs.store import STATES
from tunery.serving.constrain import json_limit_problem
from tunery.serving.gemini import DEFAULT_OUTPUT_TOKENS, LIMITS, MAX_STOP_SEQUENCES, PENALTY_BOUNDS
from tunery.tuning.spec import ABOVE_LEAST, ADAPTER_SIZES, HYPER_PARAMETERS, MAX_PROCESSES, RANGES, TuningSpec

LABEL_KEY = r"^[a-z][a-z0-9_-]{0,62}$"
LABEL_VALUE = r"^[a-z0-9_-]{0,63}$"
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE)]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=limits.MAX_URI_LENGTH)]
Text = Annotated[str, StringConstraints(max_length=limits.MAX_BODY_CHARS)]
State = Literal[STATES]  # type: ignore[valid-type]
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"  # printable: what a database column may hold
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="The id in tuningJobs/{id}")]
FileId = Annotated[str, Path(pattern=ID_PATTERN, description="The id in files/{id}")]
ModelId = Annotated[str, Path(pattern=ID_PATTERN, description="A catalog model id or a tuned model's id")]
DisplayName = Annotated[str, StringConstraints(max_length=limits.MAX_DISPLAY_NAME, pattern=r"^[^\x00-\x1f\x7f]*$")]


class Request(BaseModel):
    """A request body: camelCase names only, unknown fields refused, no NaN or infinity."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", allow_inf_nan=False, serialize_by_alias=True)


class Response(BaseModel):
    """A response body, described for the OpenAPI document (servers may add fields)."""

    model_config = ConfigDict(alias_generator=to_camel, extra="allow", serialize_by_alias=True)


# --- tuning jobs ------------------------------------------------------------------------------------------


def _spec_defaults(schema: dict[str, Any]) -> None:
    """The schema's ``default`` of each hyperparameter is ``TuningSpec``'s, the value a field left out takes."""
    for rest, name in HYPER_PARAMETERS.items():
        default = TuningSpec.__dataclass_fields__[name].default
        if rest in schema.get("properties", {}) and default is not None:
            schema["properties"][rest]["default"] = default


def _bounded(name: str, description: str) -> Any:
    """A hyperparameter field with ``TuningSpec``'s bounds (``RANGES``) and, in the schema, its default."""
    least, most = RANGES[name]
    if name in ABOVE_LEAST:
        return Field(None, gt=least, le=most, description=description)
    return Field(None, ge=least, le=most, description=description)


def _adapter_size(value: int) -> int:
    if value not in ADAPTER_SIZES:
        raise ValueError(f"expected one of {', '.join(map(str, ADAPTER_SIZES))}")
    return value


AdapterSize = Annotated[
    int, AfterValidator(_adapter_size), WithJsonSchema({"type": "integer", "enum": list(ADAPTER_SIZES)})
]


class HyperParameters(Request):
    """Vertex's supervised tuning hyperparameters; each one left out takes tunery's default. Types are strict:
    ``"3"``, ``3.0`` or ``true`` is not a count."""

    model_config = ConfigDict(strict=True, json_schema_extra=_spec_defaults)

    epoch_count: int | None = _bounded("epochs", "Passes over the data; default from its size.")
    learning_rate_multiplier: float | None = _bounded(
        "learning_rate_multiplier", "Times the base model's default learning rate for the method."
    )
    adapter_size: AdapterSize | None = Field(None, description="LoRA rank; PEFT_ADAPTER only (an error with FULL).")
    batch_size: int | None = _bounded("batch_size", "Examples per optimizer step.")
    max_length: int | None = _bounded("max_length", "Tokens per example; longer ones are truncated.")
    seed: int | None = _bounded("seed", "Seeds data order and initialisation.")


class ComputeConfig(Request):
    """Where and how a job computes (``TuningSpec``'s ``COMPUTE_CONFIG`` fields): never what it learns, except
    ``quantize``, ``trainProjector`` and ``trainVision``. Each one left out takes tunery's default; ``TuningSpec``
    checks the values."""

    model_config = ConfigDict(strict=True)

    device: str | None = Field(None, max_length=16, description="auto (CUDA when present), cpu, cuda, cuda:N or mps.")
    process_count: int | None = Field(None, ge=1, le=MAX_PROCESSES, description="Processes sharing each step.")
    quantize: Literal["4bit"] | None = Field(None, description="4bit: QLoRA on a CUDA GPU; PEFT_ADAPTER only.")
    gradient_checkpointing: bool | None = Field(None, description="Recompute activations: less memory.")
    packing: bool | None = Field(None, description="Padding-free micro-batches; default on CUDA only.")
    train_projector: bool | None = Field(None, description="Vision-language models: train the projector too.")
    train_vision: bool | None = Field(None, description="Vision-language models: train the vision tower too.")
    fsdp: bool | None = Field(None, description="FULL over several processes: shard weights and optimizer (FSDP).")
    cpu_offload: bool | None = Field(None, description="With fsdp: the shards and optimizer step in CPU memory.")


class SupervisedTuningSpec(Request):
    model_config = ConfigDict(strict=True)

    training_dataset_uri: Uri = Field(
        description="An uploaded file (`files/{id}` or its id), or a JSONL path under the server's data root."
    )
    validation_dataset_uri: Uri | None = Field(None, description="Same forms as trainingDatasetUri.")
    auto_validation: bool = Field(
        TuningSpec.auto_validation,
        description="Without validationDatasetUri, hold out a stratified 10 % of the training examples (at most "
        "200; a file of fewer than 40 is not split) to validate on and choose the best checkpoint by; they are not "
        "trained on. false: train on every example (a tunery extension).",
    )
    hyper_parameters: HyperParameters = Field(default_factory=lambda: HyperParameters.model_validate({}))
    compute_config: ComputeConfig | None = Field(None, description="Where the job computes (default: tunery's).")


class PreferenceHyperParameters(HyperParameters):
    """Vertex's preference optimization hyperparameters: the supervised ones and DPO's ``beta``."""

    beta: float | None = _bounded("beta", "How far from the reference model the tuned one may move (DPO).")


class PreferenceOptimizationSpec(SupervisedTuningSpec):
    """Vertex's ``preferenceOptimizationSpec``: DPO on preference pairs (Vertex, OpenAI or TRL lines)."""

    hyper_parameters: PreferenceHyperParameters = Field(
        default_factory=lambda: PreferenceHyperParameters.model_validate({})
    )


class CreateTuningJobRequest(Request):
    """``POST /v1/tuningJobs``: tune ``baseModel`` on the training dataset: supervised examples
    (``supervisedTuningSpec``) or preference pairs (``preferenceOptimizationSpec``), one of the two."""

    model_config = ConfigDict(strict=True)

    base_model: Uri | None = Field(
        None,
        description="A catalog model id (GET /v1/models), a model directory under the data root, or a tuned model "
        "(models/{id}, its id).",
    )
    supervised_tuning_spec: SupervisedTuningSpec | None = None
    preference_optimization_spec: PreferenceOptimizationSpec | None = Field(
        None, description="DPO on preference pairs, instead of supervisedTuningSpec."
    )
    tuning_mode: Literal["PEFT_ADAPTER", "FULL"] | None = Field(None, description="Default PEFT_ADAPTER (LoRA).")
    tuned_model_display_name: DisplayName | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=limits.MAX_LABELS)

    @model_validator(mode="after")
    def _one_spec(self) -> CreateTuningJobRequest:
        if (self.supervised_tuning_spec is None) == (self.preference_optimization_spec is None):
            raise ValueError("give supervisedTuningSpec or preferenceOptimizationSpec (one of the two)")
        return self

    @property
    def tuning(self) -> SupervisedTuningSpec:
        """The one tuning spec given."""
        return self.preference_optimization_spec or self.supervised_tuning_spec  # type: ignore[return-value]

    @property
    def spec_name(self) -> str:
        return "preferenceOptimizationSpec" if self.preference_optimization_spec else "supervisedTuningSpec"


class TuningJobError(Response):
    code: int
    message: str


class TunedModelRef(Response):
    model: str
    endpoint: str | None = None


class TuningJob(Response):
    name: str = Field(description="tuningJobs/{id}")
    base_model: str
    tuned_model_display_name: str
    tuning_mode: str
    supervised_tuning_spec: dict[str, Any] | None = None
    preference_optimization_spec: dict[str, Any] | None = None
    state: State
    create_time: str
    update_time: str
    start_time: str | None = None
    end_time: str | None = None
    labels: dict[str, str] = {}
    error: TuningJobError | None = None
    tuned_model: TunedModelRef | None = None
    tuning_data_stats: dict[str, Any] | None = None


class ListTuningJobsResponse(Response):
    tuning_jobs: list[TuningJob]
    next_page_token: str | None = None


class JobEvent(Response):
    id: int = Field(description="Its number within its job (1, 2, ...); pass it as `after` or Last-Event-ID.")
    create_time: str
    type: str = Field(description="state, metrics, log, ...")
    message: str | None = None
    data: dict[str, Any] | None = None


class ListEventsResponse(Response):
    events: list[JobEvent]


# --- files ------------------------------------------------------------------------------------------------


class FileUploadForm(BaseModel):
    """``POST /v1/files`` (multipart/form-data)."""

    file: bytes = Field(json_schema_extra={"format": "binary"}, description="A JSONL dataset, or an image/audio/PDF.")
    model: str | None = Field(None, max_length=limits.MAX_URI_LENGTH, description="Model whose tokens are counted.")
    maxLength: int | None = _bounded("max_length", "Tokens per example (default 1024).")  # noqa: N815


class File(Response):
    name: str = Field(description="files/{id}")
    display_name: str
    mime_type: str
    size_bytes: str
    sha256_hash: str
    create_time: str
    example_count: int
    tokenized_with: str
    supervised_tuning_data_stats: dict[str, Any] = Field(description="Empty for a partly checked file.")
    partial_check: dict[str, Any] | None = Field(
        None,
        description="A big file whose check reached its time bound: the lines and bytes checked (no error among "
        "them); the rest is checked when a tuning job reads the file, before its first step.",
    )


class ListFilesResponse(Response):
    files: list[File]


# --- models -----------------------------------------------------------------------------------------------


class Model(Response):
    name: str = Field(description="models/{id}")
    display_name: str
    description: str | None = None
    base_model: str | None = Field(None, description="The model a tuned model was tuned from.")
    tuning_mode: str | None = None
    tuning_job: str | None = None
    endpoint: str | None = None


class ModelEvaluation(Response):
    """What ``tunery.evaluation`` measured on the job's validation set after tuning."""

    model: str = Field(description="models/{id}")
    task: dict[str, Any] | None = Field(None, description="classification, extraction or generation, and labels")
    metrics: dict[str, Any] | None = Field(None, description="accuracy, macro-F1, ... ; tokens and latency")
    error_analysis: dict[str, Any] | None = None
    robustness: dict[str, Any] | None = None
    weights: str | None = Field(None, description="the weights form measured: the model server's on that machine")
    reference: dict[str, Any] | None = Field(
        None, description="when weights is not fp32: the fp32 weights' metrics and how many answers agree"
    )
    error: str | None = Field(None, description="why the evaluation did not finish (the tuned model is fine)")


class ListModelsResponse(Response):
    models: list[Model]


class GeminiRequest(Request):
    """A Gemini/Vertex prediction body: camelCase or snake_case names (official clients and Google's REST
    examples send either); ``tunery.serving.gemini`` then says which values tunery cannot honour."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)


class Blob(GeminiRequest):
    mime_type: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    data: str = Field(description="base64")


class FileData(GeminiRequest):
    mime_type: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    file_uri: Uri


class Part(GeminiRequest):
    """Exactly one of text, inlineData, fileData."""

    text: Text | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None


class Content(GeminiRequest):
    role: Literal["user", "model"] | None = Field(None, description="Default user.")
    parts: list[Part] = Field(min_length=1, max_length=limits.MAX_PARTS)


class SystemInstruction(Content):
    role: Literal["user", "model", "system"] | None = Field(  # type: ignore[assignment]
        None, description="Ignored: any role, or none."
    )


class GenerationConfig(GeminiRequest):
    temperature: float | None = Field(None, **LIMITS["temperature"].bounds(), description="0 (the default) is greedy.")
    top_p: float | None = Field(None, **LIMITS["top_p"].bounds())
    top_k: int | None = Field(None, **LIMITS["top_k"].bounds())
    max_output_tokens: int | None = Field(
        None, **LIMITS["max_output_tokens"].bounds(), description=f"Default {DEFAULT_OUTPUT_TOKENS}."
    )
    stop_sequences: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        None, max_length=MAX_STOP_SEQUENCES
    )
    candidate_count: int | None = Field(None, ge=1, le=2**31 - 1, description="1: one candidate per request.")
    seed: int | None = Field(None, **LIMITS["seed"].bounds())
    presence_penalty: float | None = Field(None, **PENALTY_BOUNDS, description="0 only (no penalty is applied).")
    frequency_penalty: float | None = Field(None, **PENALTY_BOUNDS, description="0 only (no penalty is applied).")
    response_modalities: list[Annotated[str, StringConstraints(max_length=32)]] | None = Field(
        None, max_length=8, description='["TEXT"] only.'
    )
    response_logprobs: bool | None = Field(None, description="Return each answer token's log probability.")
    logprobs: int | None = Field(
        None, **LIMITS["logprobs"].bounds(), description="With responseLogprobs: the top tokens per place."
    )
    response_mime_type: str | None = Field(
        None,
        description="text/plain, application/json or text/x.enum. Not given: a tuned model with a kept label set or "
        "answer schema holds its answers to it; text/plain opts out.",
    )
    response_schema: dict[str, Any] | None = Field(None, description="The answer's schema (Gemini's OpenAPI subset).")
    response_json_schema: dict[str, Any] | None = Field(None, description="The answer's schema, as JSON Schema.")

    @field_validator("response_schema", "response_json_schema", mode="before")
    @classmethod
    def _within_limits(cls, value: Any) -> Any:
        """Depth and size are checked on the parsed JSON, before pydantic or anything else walks it."""
        problem = json_limit_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class GenerateContentRequest(GeminiRequest):
    """Gemini's generateContent body: the conversation so far, its last turn the user's. ``safetySettings``
    and ``labels`` are accepted and change nothing; ``tools``, ``toolConfig`` and ``cachedContent`` would
    change the answer and are refused by name."""

    contents: list[Content] = Field(min_length=1, max_length=limits.MAX_TURNS)
    system_instruction: SystemInstruction | Text | None = None
    generation_config: GenerationConfig | None = None
    safety_settings: list[dict[str, Any]] | None = Field(None, max_length=64, description="Accepted; no effect.")
    labels: dict[LabelKey, LabelValue] | None = Field(None, max_length=limits.MAX_LABELS, description="No effect.")
    tools: list[dict[str, Any]] | None = Field(None, max_length=128, description="Not supported (400).")
    tool_config: dict[str, Any] | None = Field(None, description="Not supported (400).")
    cached_content: Annotated[str, StringConstraints(max_length=limits.MAX_URI_LENGTH)] | None = Field(
        None, description="Not supported (400)."
    )


class CountTokensInner(GenerateContentRequest):
    model: Annotated[str, StringConstraints(max_length=limits.MAX_URI_LENGTH)] | None = Field(
        None, description="Ignored: the URL names the model."
    )


class CountTokensRequest(GeminiRequest):
    """Gemini's countTokens body: ``contents`` (and ``systemInstruction``), or a whole ``generateContentRequest``."""

    contents: list[Content] | None = Field(None, min_length=1, max_length=limits.MAX_TURNS)
    system_instruction: SystemInstruction | Text | None = None
    generate_content_request: CountTokensInner | None = None
    model: Annotated[str, StringConstraints(max_length=limits.MAX_URI_LENGTH)] | None = Field(
        None, description="Ignored (Vertex AI's clients send it): the URL names the model."
    )


class Candidate(Response):
    content: dict[str, Any]
    finish_reason: str
    index: int = 0
    logprobs_result: dict[str, Any] | None = Field(
        None, description="With responseLogprobs: chosenCandidates, topCandidates, logProbabilitySum."
    )
    avg_logprobs: float | None = Field(None, description="With responseLogprobs: the mean token log probability.")


class GenerateContentResponse(Response):
    candidates: list[Candidate]
    usage_metadata: dict[str, int]
    model_version: str | None = None


class CountTokensResponse(Response):
    total_tokens: int


# --- errors -----------------------------------------------------------------------------------------------


class Status(Response):
    code: int
    message: str
    status: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(Response):
    error: Status


JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Invalid request: every field at fault is named"),
        (401, "Missing or invalid API key"),
        (404, "No such job for this tenant"),
    )
}
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request: every field at fault is named"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "No such model for this tenant"},
}
SERVING_ERRORS = {**MODEL_ERRORS, 503: {"model": ErrorResponse, "description": "The model host is unavailable"}}


class Empty(Response):
    pass


def dump(model: BaseModel) -> dict[str, Any]:
    """A request as JSON, camelCase, only the fields the caller gave (what the job store keeps)."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)
