"""``/v1/files``: upload a JSONL dataset (checked and counted on the way in) or a media file (image, audio, PDF),
list, read and delete uploads.

An upload streams to disk under ``$TUNERY_HOME/files``; the dataset checker (a model host process of its
own, so an upload never waits behind a generation) then parses every line and counts its tokens with the
``model`` form field's tokenizer (no training). A file with problems is not kept: the
400 lists every one by line and field. A kept file is named ``files/{id}`` in a tuning job's
``trainingDatasetUri``.

A media upload is typed by its magic bytes (``tunery.api.uploads.check_media``: header-only, per-file limits)
and kept under ``files/media/<tenant>/``; a dataset line or a generateContent request names it by
``fileData.fileUri: files/{id}``. The OpenAI client's ``purpose`` says what a file is for: ``fine-tune`` (a
dataset), ``vision`` (an image) or ``user_data`` (image, audio or PDF); without one, the bytes decide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from tunery.api import checks
from tunery.api.deps import CheckerDep, SettingsDep, StoreDep, Tenant
from tunery.api.kept_files import check_and_keep, remove
from tunery.api.schemas import Empty, ErrorResponse, File, FileId, FileUploadForm, ListFilesResponse
from tunery.api.uploads import receive_upload
from tunery.api.views import file_view

router = APIRouter(prefix="/v1/files", tags=["files"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid upload: every problem, by line and field"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "No such file for this tenant"},
    413: {"model": ErrorResponse, "description": "The file is larger than the server takes"},
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": FileUploadForm.model_json_schema()}},
    }
}


@router.post(
    "",
    status_code=201,
    response_model=None,
    summary="Upload a JSONL dataset",
    openapi_extra=UPLOAD_BODY,
    responses={201: {"model": File, "description": "The file, its examples counted"}, **ERRORS},
)
async def create_file(
    request: Request, tenant: Tenant, store: StoreDep, settings: SettingsDep, checker: CheckerDep
) -> Any:
    """Stream the ``file`` part to disk, check every line and count tokens with ``model``'s tokenizer (default
    the catalog default) at ``maxLength``; keep it only when it has no errors."""
    upload = await receive_upload(
        request, settings.files_dir, max_bytes=settings.max_upload_bytes, fields=("model", "maxLength", "purpose")
    )
    try:
        record = await checks.run(
            request,
            tenant,
            upload.size,
            checker,
            lambda own, until: check_and_keep(upload, tenant, store, settings, own, until),
        )
    finally:
        upload.discard()
    return file_view(record)


@router.get(
    "", response_model=None, summary="List uploaded files", responses={200: {"model": ListFilesResponse}, **ERRORS}
)
def read_files(tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    listed = [file_view(record) for record in store.list_files(tenant)]
    return {"files": listed, "object": "list", "data": listed, "has_more": False}  # Gemini reads files, OpenAI data


@router.get(
    "/{file_id}", response_model=None, summary="Read an uploaded file", responses={200: {"model": File}, **ERRORS}
)
def read_file(file_id: FileId, tenant: Tenant, store: StoreDep) -> dict[str, Any]:
    return file_view(store.get_file(tenant, file_id))


@router.delete(
    "/{file_id}", response_model=None, summary="Delete an uploaded file", responses={200: {"model": Empty}, **ERRORS}
)
def delete_file(file_id: FileId, tenant: Tenant, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    """Forget the file and remove its bytes; jobs created from it keep their own link to them."""
    record = store.delete_file(tenant, file_id)
    path = Path(record.path)
    if path.resolve().is_relative_to(settings.files_dir.resolve()):
        remove(path)
    return {"id": file_id, "object": "file", "deleted": True}  # OpenAI's FileDeleted; Google's clients read nothing
