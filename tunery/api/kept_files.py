"""What an upload becomes: checked, then kept as a ``StoredFile`` (``files/{id}``) or refused naming every problem.

    record = check_and_keep(upload, tenant, store, settings, checker)   # POST /v1/files, Gemini's uploads
    media = referenced_media([train, validation], tenant, store)       # the media uploads a dataset names

A dataset is checked by the dataset checker (its own model host process) with the form's ``model`` tokenizer; an
OpenAI batch input (``purpose=batch``) line by line (``tunery.jobs.batch_files``); a media file by its magic
bytes (``tunery.api.uploads.check_media``), kept under ``files/media/<tenant>/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from tunery import settings as settings_module
from tunery.api.errors import invalid
from tunery.api.limits import ApiSettings
from tunery.api.paths import resolve_base_model
from tunery.api.uploads import Upload, check_media, media_type
from tunery.data.formats import modality_of
from tunery.data.validation import Problem
from tunery.errors import ConfigError, DatasetError, NotFoundError
from tunery.jobs.batch_files import check_batch_file
from tunery.jobs.store import StoredFile, new_id, now
from tunery.models.catalog import DEFAULT_MODEL
from tunery.tuning.spec import RANGES, TuningSpec, range_problem

DEFAULT_MAX_LENGTH: int = TuningSpec.__dataclass_fields__["max_length"].default  # type: ignore[assignment]
MEDIA_PURPOSES = ("vision", "user_data")
FILE_REFERENCE = re.compile(rb'"file_?[Uu]ri"\s*:\s*"files/([A-Za-z0-9_-]{1,128})"')


def check_and_keep(
    upload: Upload, tenant: str, store: Any, settings: ApiSettings, checker: Any, until: float | None = None
) -> StoredFile:
    """An upload checked (a dataset by the checker, an OpenAI batch input line by line, media by its bytes) and
    kept as ``files/{id}``; 400 naming every problem, the bytes gone, when it is not."""
    model_ref, model, max_length = _options(upload, settings)
    real, purpose = media_type(upload.path), upload.fields.get("purpose")
    if real is not None and purpose in (None, *MEDIA_PURPOSES):
        return _keep_media(upload, real, purpose, tenant, store, settings)
    if real is not None or purpose in MEDIA_PURPOSES:
        wanted = "an image" if purpose == "vision" else "an image, audio or PDF file"
        reason = (
            f"the bytes are {real}; upload media with purpose vision or user_data" if real else f"expected {wanted}"
        )
        raise invalid([("purpose" if real else "file", f"{purpose!r}: {reason}")], "upload")
    if upload.fields.get("purpose") == "batch":  # OpenAI batch requests: each line's envelope, no tokenizer
        report, model_ref = check_batch_file(upload.path), ""
    else:
        report = checker.validate(
            str(upload.path),
            model,
            max_length,
            TuningSpec.batch_size,
            media_dir=str(media_dir(settings, tenant)),
            until=until,
        )
    problems = [
        Problem(upload.filename, p.get("line", 0), p.get("field", ""), p.get("message", ""), p.get("severity", "error"))
        for p in report.get("problems", [])
    ]
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        n = len(errors)
        first = "; ".join(f"line {p.line}: {p.field or 'line'}: {p.message}" for p in errors[:5])  # clients show this
        raise DatasetError(f"{upload.filename}: {n} problem{'s' * (n != 1)}; the file was not kept: {first}", errors)
    stats = report.get("supervisedTuningDataStats") or report.get("preferenceOptimizationDataStats") or {}
    if report.get("complete") is False:
        stats = {"partialCheck": partial_check(report, upload.size)}
    file_id = new_id()
    return _keep(
        upload,
        settings.files_dir / f"{file_id}.jsonl",
        StoredFile(
            id=file_id,
            tenant=tenant,
            display_name=upload.filename,
            path="",
            size_bytes=upload.size,
            sha256=upload.sha256,
            example_count=int(report.get("exampleCount", 0)),
            model=model_ref,
            stats=stats,
            create_time=now(),
        ),
        store,
    )


def partial_check(report: dict[str, Any], size: int) -> dict[str, Any]:
    """What a check stopped by its time bound read (its lines had no error), and what happens to the rest."""
    lines, checked = int(report.get("checkedLines") or 0), int(report.get("checkedBytes") or 0)
    return {
        "checkedLines": lines,
        "checkedBytes": checked,
        "message": (
            f"checked the first {lines} lines ({checked / size:.0%} of the file) within the upload's time bound "
            "(TUNERY_UPLOAD_CHECK_SECONDS) and found no error; the rest is checked when a tuning job reads the file, "
            "before its first step (a bad line there fails the job, naming the line); the statistics come with it"
        ),
    }


def _keep(upload: Upload, path: Path, record: StoredFile, store: Any) -> StoredFile:
    """Move the checked upload to ``path`` and add ``record`` (its path set) to the store; on failure the bytes go."""
    os.replace(upload.path, path)
    try:
        return store.add_file(dataclasses.replace(record, path=str(path)))
    except BaseException:
        remove(path)
        raise


def media_dir(settings: ApiSettings, tenant: str) -> Path:
    """Where ``tenant``'s media uploads are kept: ``files/{id}`` in a dataset line resolves in here only."""
    return settings.files_dir / "media" / hashlib.sha256(tenant.encode()).hexdigest()[:24]


def _keep_media(
    upload: Upload, real: str, purpose: str | None, tenant: str, store: Any, settings: ApiSettings
) -> StoredFile:
    if purpose == "vision" and modality_of(real) != "image":
        raise invalid(
            [("purpose", f"'vision' takes an image; the bytes are {real} (send purpose=user_data)")], "upload"
        )
    info = check_media(upload, real)
    file_id = new_id()
    folder = media_dir(settings, tenant)
    folder.mkdir(parents=True, exist_ok=True)
    facts = {k: v for k, v in vars(info).items() if v and k not in ("mime_type", "size_bytes", "textless_pages")}
    record = StoredFile(
        id=file_id,
        tenant=tenant,
        display_name=upload.filename,
        path="",
        size_bytes=upload.size,
        sha256=upload.sha256,
        example_count=0,
        model="",
        stats={
            "mimeType": real,
            "purpose": purpose or ("vision" if info.modality == "image" else "user_data"),
            **facts,
        },
        create_time=now(),
    )
    return _keep(upload, folder / file_id, record, store)


def referenced_media(datasets: list[str | None], tenant: str, store: Any) -> dict[str, Path]:
    """The media uploads (file id → path) of ``tenant`` that the datasets' lines name by ``files/{id}``; what a
    tuning job pins beside its datasets (an id that names none is left for the job's check to report)."""
    ids: set[str] = set()
    for dataset in datasets:
        if dataset:
            with open(dataset, "rb") as fh:
                for line in fh:
                    ids.update(found.decode() for found in FILE_REFERENCE.findall(line))
    media = {}
    for file_id in sorted(ids):
        try:
            record = store.get_file(tenant, file_id)
        except NotFoundError:
            continue
        if "mimeType" in record.stats and Path(record.path).is_file():
            media[file_id] = Path(record.path)
    return media


def _options(upload: Upload, settings: ApiSettings) -> tuple[str, str, int]:
    """The form's ``model`` (as given, and resolved) and ``maxLength``; 400 names each bad field."""
    fields, problems = upload.fields, list(upload.problems)
    model_ref = fields.get("model") or settings_module.upload_model() or DEFAULT_MODEL
    model = model_ref
    try:
        model = resolve_base_model(model_ref, settings.data_root, "model")
    except ConfigError as exc:
        problems.append(("model", str(exc).removeprefix("model: ")))
    if fields.get("purpose", "fine-tune") not in ("fine-tune", "batch", *MEDIA_PURPOSES):  # what the file is for
        problems.append(
            (
                "purpose",
                f"{fields['purpose'][:40]!r}: expected 'fine-tune' (a dataset), 'batch', 'vision' or 'user_data'",
            )
        )
    raw = fields.get("maxLength", "").strip()
    max_length = DEFAULT_MAX_LENGTH
    if raw:
        wrong = range_problem("max_length", int(raw)) if raw.isdigit() and len(raw) < 10 else "not a whole number"
        if wrong:
            least, most = RANGES["max_length"]
            problems.append(("maxLength", f"{raw[:40]!r}: expected a whole number from {least} to {most}"))
        else:
            max_length = int(raw)
    if problems:
        raise invalid(problems, "upload")
    return model_ref, model, max_length


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
