"""What a request may name: uploaded files by id, and datasets and model directories under the data root.

    resolve_dataset("files/2025...", tenant, store, root)  → the uploaded file's path
    resolve_dataset("tickets/train.jsonl", tenant, store, root) → <root>/tickets/train.jsonl
    resolve_base_model("smollm2-135m-instruct", root) → the catalog id
    resolve_base_model("models/tiny", root) → <root>/models/tiny

A path is relative to the data root, an absolute path inside it, or a ``file://`` URI of one. Paths with
``..``, paths that leave the root (symlinks included: the resolved path must stay inside), model directories
with any file or folder that links out of the root, and any path at all when no data root is configured
are refused with a ``ConfigError`` that names the field. A file id (``files/{id}``, or a bare id) names
the caller's own uploads only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from tunery.errors import ConfigError, NotFoundError
from tunery.jobs.store import Store, StoredFile
from tunery.models.catalog import CATALOG
from tunery.models.sources import is_hub_id
from tunery.settings import tunery_home

FILE_ID = re.compile(r"[0-9]{14}[0-9a-f]{12}")
MAX_MODEL_ENTRIES = 10_000


def file_id(ref: str) -> str | None:
    """The file id ``ref`` names (``files/{id}`` or a bare id), or None when it is a path."""
    if ref.startswith("files/"):
        return ref.removeprefix("files/")
    return ref if FILE_ID.fullmatch(ref) else None


def resolve_dataset(
    ref: str, tenant: str, store: Store, root: Path | None, field: str
) -> tuple[str, StoredFile | None]:
    """The dataset file ``ref`` names, and its upload record when it is one; ConfigError otherwise."""
    found = file_id(ref)
    if found is not None:
        try:
            record = store.get_file(tenant, found)
        except NotFoundError:
            raise ConfigError(f"{field}: files/{found} not found (upload it with POST /v1/files)") from None
        return record.path, record
    path = resolve_under(root, ref, field)
    if not _is_file(path):
        raise ConfigError(f"{field}: {ref!r} is not a file under the data root")
    return str(path), None


def resolve_base_model(ref: str, root: Path | None, field: str = "baseModel") -> str:
    """A catalog id as it is, or the model directory ``ref`` names under the data root."""
    if ref in CATALOG:
        return ref
    if is_hub_id(ref) and (root is None or not _is_file(root / ref.partition("@")[0] / "config.json")):
        return ref  # a Hugging Face Hub id (org/name[@revision]): the job's worker fetches it (safetensors only)
    if root is None:
        raise ConfigError(f"{field}: {ref!r} is not a catalog model (one of {', '.join(CATALOG)})")
    path = resolve_under(root, ref, field)
    if not _is_file(path / "config.json"):
        raise ConfigError(
            f"{field}: {ref!r} is neither a catalog model ({', '.join(CATALOG)}) nor a model directory "
            "(with config.json) under the data root"
        )
    escape = _leaves_root(path, root.resolve())
    if escape:
        raise ConfigError(f"{field}: {ref!r}: {escape}")
    return str(path)


def _leaves_root(directory: Path, root: Path) -> str | None:
    """Why a model directory could read outside ``root`` (a file or folder in it that links out, or is a
    broken link), or None. Linked folders inside the root are followed; at most ``MAX_MODEL_ENTRIES`` entries."""
    seen = 0
    for folder, folders, files in os.walk(directory, followlinks=True):
        for name in (*folders, *files):
            seen += 1
            if seen > MAX_MODEL_ENTRIES:
                return f"more than {MAX_MODEL_ENTRIES} files; a model directory holds a few dozen"
            entry = Path(folder) / name
            if not entry.is_symlink():
                continue
            shown = entry.relative_to(directory).as_posix()
            try:
                target = entry.resolve(strict=True)
            except (OSError, RuntimeError):
                return f"{shown} is a broken or looping link"
            if not target.is_relative_to(root):
                return f"{shown} links outside the data root"
    return None


def resolve_under(root: Path | None, ref: str, field: str) -> Path:
    """The absolute, symlink-free path ``ref`` names inside ``root``; ConfigError when it could leave it."""
    if root is None:
        raise ConfigError(f"{field}: {ref!r}: this server takes uploaded file ids only (no TUNERY_DATA_ROOT is set)")
    raw = _path_of(ref, field)
    if "\x00" in raw or not raw.strip():
        raise ConfigError(f"{field}: {ref!r} is not a path")
    if ".." in PurePosixPath(raw).parts or ".." in Path(raw).parts:
        raise ConfigError(f"{field}: {ref!r}: '..' is not allowed")
    root = root.resolve()
    candidate = Path(raw) if Path(raw).is_absolute() else root / raw
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError, ValueError):
        raise ConfigError(f"{field}: {ref!r} cannot be read") from None
    if not resolved.is_relative_to(root):
        raise ConfigError(f"{field}: {ref!r} is outside the data root")
    return resolved


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the OS refuses the name (too long, say) instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _path_of(ref: str, field: str) -> str:
    """The path of a plain path or a ``file://`` URI; other URI schemes are refused."""
    if "://" not in ref and not ref.startswith("file:"):
        return ref
    parts = urlsplit(ref)
    if parts.scheme != "file":
        raise ConfigError(f"{field}: {ref!r}: only uploaded file ids, paths and file:// URIs are supported")
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{field}: {ref!r}: a file:// URI must name a local path")
    return unquote(parts.path)


_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"()\[\]{}<>,;:|]+/)*[^\s'\"()\[\]{}<>,;:|/]*")


def hide_server_paths(text: str, root: Path | None, others: bool = True) -> str:
    """``text`` (a job's error, an event's message) as a client may see it: a path under the data root as the
    client names it (relative to the root), one under ``TUNERY_HOME`` by its place there, any other absolute
    path by its file name only (left as it is with ``others=False``: an error that quotes the request). The
    full paths stay in the server's logs."""
    roots = [(base, "") for base in {root, root.resolve()}] if root is not None else []
    roots += [(base, "TUNERY_HOME/") for base in {tunery_home(), tunery_home().resolve()}]

    def shown(match: re.Match[str]) -> str:
        path = Path(match.group(0))
        for base, prefix in roots:
            if path.is_relative_to(base):
                return prefix + path.relative_to(base).as_posix()
        if not others:
            return match.group(0)
        return f"…/{path.name}" if path.name else "…"

    return _ABSOLUTE.sub(shown, text)
