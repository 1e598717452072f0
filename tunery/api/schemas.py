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
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from tunery.api import limits
from tunery.jobs.store import STATES
from tunery.serving.gemini import MAX_OUTPUT_TOKENS, MAX_STOP_SEQUENCES
from tunery.tuning.spec import ADAPTER_SIZES

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


class HyperParameters(Request):
    """Vertex's supervised tuning hyperparameters; each one left out takes tunery's default."""

    epoch_count: int | None = Field(None, ge=1, le=100, description="Passes over the data; default from its size.")
    learning_rate_multiplier: float | None = Field(
        None, gt=0, le=100, description="Times the base model's default learning rate for the method (default 1)."
    )
    adapter_size: Literal[ADAPTER_SIZES] | None = Field(  # type: ignore[valid-type]
        None, description="LoRA rank (default 8); PEFT_ADAPTER only."
    )
    batch_size: int | None = Field(None, ge=1, le=1024, description="Examples per optimizer step (default 8).")
    max_length: int | None = Field(None, ge=16, le=131072, description="Tokens per example (default 1024).")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Seeds data order and initialisation (default 0).")


class SupervisedTuningSpec(Request):
    training_dataset_uri: Uri = Field(
        description="An uploaded file (`files/{id}` or its id), or a JSONL path under the server's data root."
    )
    validation_dataset_uri: Uri | None = Field(None, description="Same forms as trainingDatasetUri.")
    hyper_parameters: HyperParameters = Field(default_factory=lambda: HyperParameters.model_validate({}))


class CreateTuningJobRequest(Request):
    """``POST /v1/tuningJobs``: tune ``baseModel`` on the training dataset."""

    base_model: Uri | None = Field(
        None, description="A catalog model id (GET /v1/models) or a model directory under the data root."
    )
    supervised_tuning_spec: SupervisedTuningSpec
    tuning_mode: Literal["PEFT_ADAPTER", "FULL"] | None = Field(None, description="Default PEFT_ADAPTER (LoRA).")
    tuned_model_display_name: DisplayName | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=limits.MAX_LABELS)


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
    supervised_tuning_spec: dict[str, Any]
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
    id: int = Field(description="Sequence number; pass it as `after` (or Last-Event-ID) to read what follows.")
    create_time: str
    type: str = Field(description="state, metrics, log, ...")
    message: str | None = None
    data: dict[str, Any] | None = None


class ListEventsResponse(Response):
    events: list[JobEvent]


# --- files ------------------------------------------------------------------------------------------------


class FileUploadForm(BaseModel):
    """``POST /v1/files`` (multipart/form-data)."""

    file: bytes = Field(json_schema_extra={"format": "binary"}, description="The JSONL dataset.")
    model: str | None = Field(None, max_length=limits.MAX_URI_LENGTH, description="Model whose tokens are counted.")
    maxLength: int | None = Field(None, ge=16, le=131072, description="Tokens per example (default 1024).")  # noqa: N815


class File(Response):
    name: str = Field(description="files/{id}")
    display_name: str
    mime_type: str
    size_bytes: str
    sha256_hash: str
    create_time: str
    example_count: int
    tokenized_with: str
    supervised_tuning_data_stats: dict[str, Any]


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
    error: str | None = Field(None, description="why the evaluation did not finish (the tuned model is fine)")


class ListModelsResponse(Response):
    models: list[Model]


class Blob(Request):
    mime_type: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    data: str = Field(description="base64")


class FileData(Request):
    mime_type: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    file_uri: Uri


class Part(Request):
    """Exactly one of text, inlineData, fileData."""

    text: Text | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None


class Content(Request):
    role: Literal["user", "model"] | None = Field(None, description="Default user.")
    parts: list[Part] = Field(min_length=1, max_length=limits.MAX_PARTS)


class GenerationConfig(Request):
    temperature: float | None = Field(None, ge=0, le=2, description="0 (the default) is greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_OUTPUT_TOKENS, description="Default 256.")
    stop_sequences: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        None, max_length=MAX_STOP_SEQUENCES
    )
    candidate_count: Literal[1] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class GenerateContentRequest(Request):
    """Gemini's generateContent body: the conversation so far, its last turn the user's."""

    contents: list[Content] = Field(min_length=1, max_length=limits.MAX_TURNS)
    system_instruction: Content | Text | None = None
    generation_config: GenerationConfig | None = None


class CountTokensInner(GenerateContentRequest):
    model: Annotated[str, StringConstraints(max_length=limits.MAX_URI_LENGTH)] | None = Field(
        None, description="Ignored: the URL names the model."
    )


class CountTokensRequest(Request):
    """Gemini's countTokens body: ``contents`` (and ``systemInstruction``), or a whole ``generateContentRequest``."""

    contents: list[Content] | None = Field(None, min_length=1, max_length=limits.MAX_TURNS)
    system_instruction: Content | Text | None = None
    generate_content_request: CountTokensInner | None = None


class Candidate(Response):
    content: dict[str, Any]
    finish_reason: str
    index: int = 0


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


class Empty(Response):
    pass


def dump(model: BaseModel) -> dict[str, Any]:
    """A request as JSON, camelCase, only the fields the caller gave (what the job store keeps)."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)
