"""Checkpoints and tuned models at an fsspec URL: ``TUNERY_ARTIFACTS=s3://bucket/tunery`` (or ``gs://``,
``file://``, any filesystem fsspec knows; its package, ``s3fs`` say, installed on every node).

With a URL, a job's run directory stays local to the node its worker runs on (``$TUNERY_HOME/tuned-models/<id>``)
and is mirrored to ``URL/<job id>``: each new checkpoint as it appears (the checkpoint's files first, then its
``latest`` pointer, then the checkpoints it replaced are removed, so the copy always names a complete one),
and at the end the tuned model (the copy then holds exactly the tuned model's files). A worker that finds no run
directory on its node (a retry placed elsewhere) copies it back first and resumes from its last checkpoint, or
records a tuned model that was already complete; a server asked for a tuned model it does not have copies it
back too (``local_copy``). ``TUNERY_ARTIFACTS`` without ``://`` is a path every node
reaches, written directly, with no copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from tunery import settings
from tunery.errors import ConfigError

POINTER = "checkpoints/latest"
MARKERS = ("run.json", "tunery.json")  # a run directory worth copying back: a recorded run or a tuned model
_PULLING = threading.Lock()


def artifacts_url() -> str | None:
    """``TUNERY_ARTIFACTS`` when it is a URL (``scheme://...``), else None (a path, or unset)."""
    value = settings.artifacts() or ""
    return value.rstrip("/") if "://" in value else None


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError:  # pragma: no cover - a dependency of tunery
        raise ConfigError("TUNERY_ARTIFACTS is a URL: fsspec is needed (pip install fsspec)") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"TUNERY_ARTIFACTS {url!r}: {exc}") from None


class Mirror:
    """A run directory and its copy at ``url``."""

    def __init__(self, run_dir: str | Path, url: str) -> None:
        self.run_dir, self.url = Path(run_dir), url.rstrip("/")
        self.fs, self.root = _filesystem(self.url)
        self.root = self.root.rstrip("/")
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) already copied
        self._pointer: str | None = None  # the checkpoint the copy's pointer names

    # -- reading back ------------------------------------------------------------------------------

    def remote_files(self) -> list[str]:
        """The copy's files, relative to its root."""
        if not self.fs.exists(self.root):
            return []
        return sorted(
            path[len(self.root) + 1 :]
            for path in (p.rstrip("/") for p in self.fs.find(self.root))
            if path.startswith(self.root + "/")
        )

    def pull(self) -> bool:
        """Copy the run back when this node has none of it (no ``run.json``, no ``tunery.json``) and the copy has
        one; into a staging folder renamed into place, so a pull cut short leaves nothing half-read. Whether it
        copied."""
        with _PULLING:  # one copy at a time in this process (a server's requests for the same model)
            if any((self.run_dir / marker).is_file() for marker in MARKERS):
                return False
            files = self.remote_files()
            if not any(marker in files for marker in MARKERS):
                return False
            staging = self.run_dir.with_name(f".{self.run_dir.name}.pulling-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                for rel in files:
                    target = staging / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.fs.get_file(f"{self.root}/{rel}", str(target))
                if self.run_dir.exists():
                    shutil.rmtree(self.run_dir)  # what a killed first try left before it recorded the run
                self.run_dir.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(self.run_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        for path in self.run_dir.rglob("*"):
            if path.is_file():
                stat = path.stat()
                self._sent[str(path.relative_to(self.run_dir))] = (stat.st_size, stat.st_mtime_ns)
        pointer = self.run_dir / POINTER
        self._pointer = pointer.read_text().strip() if pointer.is_file() else None
        return True

    # -- writing -----------------------------------------------------------------------------------

    def push_checkpoint(self) -> bool:
        """Copy the run if its newest checkpoint is not copied yet (cheap when it is); whether it copied."""
        pointer = self.run_dir / POINTER
        try:
            latest = pointer.read_text().strip()
        except FileNotFoundError:
            return False
        if latest == self._pointer:
            return False
        self.push()
        return True

    def push(self) -> None:
        """Make the copy match the run directory: new and changed files, then the checkpoint pointer, then the
        copy's files the directory no longer has are removed."""
        local = self._local_files()
        pointer = local.pop(POINTER, None)
        for rel, (path, signature) in local.items():
            self._send(rel, path, signature)
        if pointer is not None:
            self._send(POINTER, *pointer)
            self._pointer = pointer[0].read_text().strip() if pointer[0].is_file() else None
        keep = set(local) | ({POINTER} if pointer else set())
        stale = [rel for rel in self.remote_files() if rel not in keep]
        for rel in stale:
            self.fs.rm_file(f"{self.root}/{rel}")
            self._sent.pop(rel, None)
        for rel in {str(Path(r).parent) for r in stale} - {"."}:  # emptied folders, where the filesystem has them
            remote = f"{self.root}/{rel}"
            if self.fs.exists(remote) and not self.fs.find(remote):
                with contextlib.suppress(OSError):
                    self.fs.rm(remote, recursive=True)

    def _local_files(self) -> dict[str, tuple[Path, tuple[int, int]]]:
        found = {}
        for path in sorted(self.run_dir.rglob("*")):
            rel = str(path.relative_to(self.run_dir))
            if any(part.startswith(".") for part in Path(rel).parts):  # a checkpoint or file being written
                continue
            try:
                if path.is_file():
                    stat = path.stat()
                    found[rel] = (path, (stat.st_size, stat.st_mtime_ns))
            except FileNotFoundError:  # removed while listed (an old checkpoint): not part of the run any more
                continue
        return found

    def _send(self, rel: str, path: Path, signature: tuple[int, int]) -> None:
        if self._sent.get(rel) == signature:
            return
        remote = f"{self.root}/{rel}"
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        try:
            self.fs.put_file(str(path), remote)
        except FileNotFoundError:
            print(f"tunery artifacts: {path} went away while it was copied", file=sys.stderr)
            return
        self._sent[rel] = signature


def for_job(job_id: str, run_dir: str | Path) -> Mirror | None:
    """The mirror of ``job_id``'s run directory at ``TUNERY_ARTIFACTS/<job id>``; None unless that is a URL."""
    url = artifacts_url()
    return Mirror(run_dir, f"{url}/{job_id}") if url else None


def local_copy(tuned_dir: str | Path, job_id: str) -> str:
    """``tuned_dir`` as this machine can read it: copied back from ``TUNERY_ARTIFACTS/<job id>`` first when it is not
    here (the job ran on another node) and ``TUNERY_ARTIFACTS`` is a URL; as it is otherwise."""
    path = Path(tuned_dir)
    mirror = None if (path / "tunery.json").is_file() else for_job(job_id, path)
    if mirror is not None:
        mirror.pull()
    return str(tuned_dir)
