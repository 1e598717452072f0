"""What the OpenAI, Vertex AI and Gemini route variants share: one way onto the native handlers.

    job = create_job(native_body, request, tenant, store, settings, scheduler)   # POST /v1/tuningJobs's handler
    model = base_model_id("publishers/google/models/tiny")                       # → "tiny"
    parts = chat_parts(message["content"], "messages[1]", problems)            # OpenAI content → Gemini parts

A variant translates its body into the native ``CreateTuningJobRequest`` shape and hands it to the native
handler, so every rule (datasets, base model, hyperparameter ranges, idempotency) is checked once, in one
place; ``names`` maps the native field names in its 400 back to the ones the caller sent.

``chat_parts`` maps an OpenAI chat message's ``content`` onto Gemini parts: ``text`` (joined in a text-only message;
one part per content part where there is media, so ``chat_error`` names ``messages[i].content[j]`` back),
``image_url`` with a ``data:`` URL and ``input_audio`` (``wav``/``mp3``) → ``inlineData``, and ``file`` (an
uploaded ``file_id`` → ``fileData`` ``files/{id}``, or ``file_data`` as a data URL) — each problem named by
``messages[i].content[j]``. Remote URLs are not fetched: upload the file instead.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tunery.api.errors import ApiError, field_name
from tunery.api.limits import ApiSettings
from tunery.api.paths import resolve_base_model
from tunery.api.routes import jobs
from tunery.api.schemas import CreateTuningJobRequest
from tunery.data.media import normalize_mime, sniff
from tunery.errors import ConfigError, DatasetError
from tunery.jobs.store import Job, Store

MODEL_PREFIXES = re.compile(r"^(projects/[^/]+/locations/[^/]+/)?(publishers/[^/]+/)?(models|tunedModels|endpoints)/")


def base_model_id(name: Any) -> Any:
    """``models/x``, ``publishers/google/models/x`` or ``projects/p/locations/l/endpoints/x`` → ``x``; anything
    else as it is (a path under the data root, or a value the native schema will name as wrong)."""
    return MODEL_PREFIXES.sub("", name, count=1) if isinstance(name, str) else name


def reference_problems(base_model: str, settings: ApiSettings) -> list[str]:
    """Why ``base_model`` names no model this server has (checked before its tokenizer counts an upload)."""
    try:
        resolve_base_model(base_model, settings.data_root, "baseModel")
    except ConfigError as exc:
        return [str(exc).removeprefix("baseModel: ")]
    return []


def create_job(
    body: dict[str, Any],
    request: Request,
    tenant: str,
    store: Store,
    settings: ApiSettings,
    scheduler: Any,
    idempotency_key: str | None = None,
    names: dict[str, str] | None = None,
) -> tuple[Job, bool]:
    """The native create for a translated ``body``: the job, and whether it is new (an idempotent retry is not)."""
    try:
        checked = CreateTuningJobRequest.model_validate(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *_renamed_loc(e["loc"], names))} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=body) from None
    response = Response()
    try:
        resource = jobs.create_job(checked, request, response, tenant, store, settings, scheduler, idempotency_key)
    except ApiError as exc:
        raise renamed(exc, names) from None
    return store.get_job(tenant, resource["name"].removeprefix("tuningJobs/")), response.status_code != 200


def _renamed_loc(loc: tuple[Any, ...], names: dict[str, str] | None) -> tuple[Any, ...]:
    if not names:
        return loc
    native = field_name(loc)
    for old, new in names.items():
        if native == old or native.startswith(old + "."):
            return (new + native[len(old) :],)
    return loc


def renamed(exc: ApiError, names: dict[str, str] | None) -> ApiError:
    """``exc`` with each native field name in its message and field violations replaced by the caller's."""
    if not names:
        return exc
    message = str(exc.detail)
    for old, new in names.items():
        message = message.replace(old, new)
    details = exc.details
    for detail in details or []:
        for violation in detail.get("fieldViolations", []):
            for old, new in names.items():
                if violation.get("field", "").startswith(old):
                    violation["field"] = new + violation["field"][len(old) :]
                    violation["description"] = violation.get("description", "").replace(old, new)
    return ApiError(exc.status_code, message, details, dict(exc.headers or {}))


# --- OpenAI chat content parts → Gemini parts -------------------------------------------------------------

DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(;[\w.+-]+=[^;,]*)*);base64,(?P<data>.*)$", re.DOTALL
)
AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg"}
STORED_TYPE = "application/octet-stream"
"""The ``mimeType`` of a ``fileData`` part whose type is the uploaded file's own (``file_id`` parts name none)."""
FILE_IDS = re.compile(r"^(files/)?[A-Za-z0-9_-]{1,128}$")


def chat_parts(content: Any, field: str, problems: list[tuple[str, str]]) -> list[dict[str, Any]] | None:
    """The Gemini parts of an OpenAI message's ``content`` (a string, or a list of content parts as dicts or
    pydantic models); None, with each problem appended as ``(messages[i].content[j], message)``, when any is bad."""
    if content is None:
        problems.append((f"{field}.content", "required: the message's text"))
        return None
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    before = len(problems)
    raws = [item.model_dump(exclude_none=True) if hasattr(item, "model_dump") else item for item in content]
    join = all(isinstance(raw, dict) and raw.get("type") == "text" for raw in raws)
    for j, raw in enumerate(raws):
        where = f"{field}.content[{j}]"
        part = _chat_part(raw, where, problems)
        if part is None:
            continue
        if join and parts:
            parts[-1] = {"text": parts[-1]["text"] + part["text"]}
        else:
            parts.append(part)
    if len(problems) > before:
        return None
    if not parts:
        problems.append((f"{field}.content", "empty: at least one part"))
        return None
    return parts


def _chat_part(raw: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append((where, "expected a content part object with a 'type'"))
        return None
    kind = raw.get("type")
    value = raw.get(kind) if isinstance(kind, str) else None
    if kind == "text":
        if not isinstance(raw.get("text"), str):
            problems.append((where, "text: expected a string"))
            return None
        return {"text": raw["text"]}
    if kind == "image_url":
        return _image_part(value, where, problems)
    if kind == "input_audio":
        return _audio_part(value, where, problems)
    if kind == "file":
        return _file_part(value, where, problems)
    shown = repr(kind)[:40]
    problems.append((where, f"{shown}: unsupported content part; expected text, image_url, input_audio or file"))
    return None


def _image_part(value: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    url = value.get("url") if isinstance(value, dict) else value if isinstance(value, str) else None
    if not isinstance(url, str) or not url:
        problems.append((where, "image_url: expected {'url': 'data:image/png;base64,...'}"))
        return None
    detail = value.get("detail") if isinstance(value, dict) else None
    if detail not in (None, "auto"):
        problems.append((where, f"image_url.detail {str(detail)[:20]!r}: only 'auto' (images are used as sent)"))
        return None
    return _data_url(url, "image", f"{where}: image_url.url", problems)


def _audio_part(value: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("data"), str) or not value["data"]:
        problems.append((where, "input_audio: expected {'data': base64 audio, 'format': 'wav' or 'mp3'}"))
        return None
    fmt = value.get("format")
    if fmt not in AUDIO_FORMATS:
        problems.append((where, f"input_audio.format {str(fmt)[:20]!r}: expected 'wav' or 'mp3'"))
        return None
    return _inline(AUDIO_FORMATS[fmt], value["data"], f"{where}: input_audio.data", problems)


def _file_part(value: Any, where: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not (value.get("file_id") or value.get("file_data")):
        problems.append((where, "file: expected {'file_id': an uploaded file's id} or {'file_data': a data: URL}"))
        return None
    if value.get("file_id"):
        file_id = value["file_id"]
        if not isinstance(file_id, str) or not FILE_IDS.match(file_id):
            problems.append((where, f"file.file_id {str(file_id)[:40]!r}: not a file id (POST /v1/files returns one)"))
            return None
        return {"fileData": {"mimeType": STORED_TYPE, "fileUri": "files/" + file_id.removeprefix("files/")}}
    data = value["file_data"]
    if not isinstance(data, str):
        problems.append((where, "file.file_data: expected a data: URL (data:application/pdf;base64,...)"))
        return None
    return _data_url(data, None, f"{where}: file.file_data", problems)


def _data_url(url: str, modality: str | None, label: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    """``data:<mime>;base64,<data>`` as an ``inlineData`` part; a remote URL is refused (nothing is fetched)."""
    where, _, name = label.partition(": ")
    match = DATA_URL.match(url)
    if match is None:
        scheme = url.split(":", 1)[0].lower() if ":" in url[:16] else ""
        if scheme in ("http", "https"):
            reason = "remote URLs are not fetched; send a data: URL (base64) or upload the file (POST /v1/files)"
            problems.append((where, f"{name}: {reason} and send {{'type': 'file', 'file': {{'file_id': ...}}}}"))
        else:
            problems.append((where, f"{name}: expected a data: URL such as data:image/png;base64,..."))
        return None
    mime = normalize_mime(match["mime"])
    if modality is not None and not mime.startswith(modality + "/"):
        problems.append((where, f"{name}: {mime} is not an {modality} type"))
        return None
    return _inline(mime, match["data"], label, problems)


def _inline(mime: str, data: str, label: str, problems: list[tuple[str, str]]) -> dict[str, Any] | None:
    """An ``inlineData`` part, its base64 checked and its bytes' real type matched against ``mime``."""
    where, _, name = label.partition(": ")
    try:
        payload = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        problems.append((where, f"{name}: not valid base64"))
        return None
    real = sniff(payload[:64])
    if real is not None and real != mime:
        problems.append((where, f"{name}: declared {mime} but the bytes are {real}"))
        return None
    if real is None:
        problems.append((where, f"{name}: the bytes are not a known media type (declared {mime})"))
        return None
    return {"inlineData": {"mimeType": mime, "data": data}}


CONTENTS_FIELD = re.compile(r"^contents\[(\d+)\](\.parts\[(\d+)\])?")


def chat_field(name: str, origin: dict[int, int]) -> str:
    """A Gemini field of a translated chat request (``contents[k].parts[p]...``) as the OpenAI body names it
    (``messages[i].content[p]...``); other names as they are."""
    match = CONTENTS_FIELD.match(name)
    if match is None or int(match[1]) not in origin:
        return name
    head = f"messages[{origin[int(match[1])]}]" + (f".content[{match[3]}]" if match[2] else "")
    return head + name[match.end() :]


def chat_error(exc: Exception, origin: dict[int, int]) -> Exception:
    """``exc`` (a 400 of the generation path, or the model host's ``DatasetError``) with each field named as the
    chat request named it; anything else as it is."""
    if isinstance(exc, ApiError) and exc.details:
        names = {}
        for detail in exc.details:
            for violation in detail.get("fieldViolations", []):
                names[violation.get("field", "")] = chat_field(violation.get("field", ""), origin)
        return renamed(exc, {old: new for old, new in names.items() if old != new})
    if isinstance(exc, DatasetError) and exc.problems:
        problems = [dataclasses.replace(p, field=chat_field(p.field, origin)) for p in exc.problems]
        message = exc.args[0] if exc.args else ""
        for old, new in zip(exc.problems, problems, strict=True):
            message = message.replace(old.field, new.field)
        return DatasetError(message, problems)
    return exc
