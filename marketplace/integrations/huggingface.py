"""The Hugging Face Hub: the one module that imports ``huggingface_hub``.

Files are fetched with ``hf_hub_download`` into the hub cache (``HUB_CACHE_DIR``), laid out as the
Hub lays it out::

    models--<org>--<name>/refs/main                      the commit a branch or tag points to
    models--<org>--<name>/snapshots/<commit>/<filename>  a link to the blob (or the file itself)
    models--<org>--<name>/blobs/<sha256 or git sha>

Offline (``HUB_OFFLINE``, or no network) only that cache is read, which is what the tests use.
The library's errors become :class:`HubError` subclasses whose messages say what to fix:
:class:`HubRepoNotFound`, :class:`HubRevisionNotFound`, :class:`HubFileNotFound`,
:class:`HubFileTooLarge`, and :class:`HubUnavailable` (the Hub could not be reached; retry later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, scan_cache_dir
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from marketplace.errors import ApplicationError

__all__ = [
    "HubError",
    "HubFile",
    "HubFileNotFound",
    "HubFileTooLarge",
    "HubRepoNotFound",
    "HubRevisionNotFound",
    "HubUnavailable",
    "hub_file_fetch",
    "hub_file_list",
    "hub_filename_problem",
    "hub_repo_id_problem",
    "hub_revision_problem",
]

DEFAULT_REVISION = "main"
# "org/name" as the Hub accepts it: letters, digits, "-", "_", "."; no "--" or ".." (they break the cache layout).
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_FILES_SHOWN = 20


class HubError(ApplicationError):
    """The Hub (or its local cache) could not give the file; the message says why."""

    status = 502
    code = "hub_error"


class HubRepoNotFound(HubError):
    status = 404
    code = "hub_repo_not_found"


class HubRevisionNotFound(HubError):
    status = 404
    code = "hub_revision_not_found"


class HubFileNotFound(HubError):
    status = 404
    code = "hub_file_not_found"


class HubFileTooLarge(HubError):
    status = 413
    code = "hub_file_too_large"


class HubUnavailable(HubError):
    """The Hub could not be reached (or answered 5xx) and the local cache has nothing: retry later."""

    status = 503
    code = "hub_unavailable"


@dataclass(frozen=True)
class HubFile:
    path: Path  # inside the hub cache; read it, never move or delete it
    repo_id: str
    filename: str
    commit: str  # the commit the revision resolved to


# --- input checks (no network) -----------------------------------------------------------------


def hub_repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` is not a model repository id of the form ``org/name``, or None if it is."""
    parts = (repo_id or "").split("/")
    if len(parts) != 2 or not all(_REPO_PART_RE.match(p) for p in parts):
        return f"“{repo_id}” is not a Hugging Face repository id; use organization/name, e.g. acme/iris-classifier."
    if "--" in repo_id or ".." in repo_id or repo_id.endswith((".", "-")):
        return f"“{repo_id}” is not a valid repository id: “--” and “..” are not allowed, nor a trailing - or ."
    return None


def hub_filename_problem(filename: str) -> str | None:
    """Why ``filename`` is not a path to an .onnx file inside a repository, or None if it is."""
    parts = (filename or "").split("/")
    if not filename or filename.startswith("/") or "\\" in filename or any(p in ("", ".", "..") for p in parts):
        return f"“{filename}” is not a file path inside the repository, e.g. model.onnx or onnx/model.onnx."
    if not filename.lower().endswith(".onnx"):
        return f"“{filename}” is not an ONNX file; give the path of a .onnx file in the repository."
    return None


def hub_revision_problem(revision: str) -> str | None:
    """Why ``revision`` is not a branch, tag or commit name, or None if it is."""
    if not _REVISION_RE.match(revision or "") or ".." in revision or revision.endswith("/"):
        return f"“{revision}” is not a branch, tag or commit; e.g. main, v1.0 or a 40-character commit hash."
    return None


# --- fetching -------------------------------------------------------------------------------------


def _cached_revisions(*, repo_id: str, cache_dir: Path) -> dict[str, Any] | None:
    """The repository in the local cache as {commit: (refs, [files])}, or None if it is not there."""
    if not Path(cache_dir).is_dir():
        return None
    for repo in scan_cache_dir(cache_dir).repos:
        if repo.repo_type == "model" and repo.repo_id == repo_id:
            return {
                rev.commit_hash: (
                    sorted(rev.refs),
                    sorted(f.file_path.relative_to(rev.snapshot_path).as_posix() for f in rev.files),
                )
                for rev in repo.revisions
            }
    return None


def _files_text(files: list[str]) -> str:
    if not files:
        return "none"
    shown = ", ".join(files[:_FILES_SHOWN])
    return shown + (f" and {len(files) - _FILES_SHOWN} more" if len(files) > _FILES_SHOWN else "")


def _local_miss_explain(*, repo_id: str, filename: str, revision: str, cache_dir: Path, offline: bool) -> HubError:
    """The file is not in the local cache: say whether the repository, the revision or the file is missing."""
    where = "offline: only the local hub cache is read" if offline else "the Hub could not be reached"
    revisions = _cached_revisions(repo_id=repo_id, cache_dir=cache_dir)
    if revisions is None:
        if not offline:
            return HubUnavailable(
                f"The Hugging Face Hub could not be reached and {repo_id} is not in the local hub cache; "
                "try again later."
            )
        return HubRepoNotFound(f"The repository {repo_id} was not found on the Hugging Face Hub ({where}).")
    commit = revision if revision in revisions else None
    if commit is None:
        commit = next((c for c, (refs, _) in revisions.items() if revision in refs), None)
    if commit is None:
        known = sorted({ref for refs, _ in revisions.values() for ref in refs}) + sorted(
            c[:12] for c, (refs, _) in revisions.items() if not refs
        )
        return HubRevisionNotFound(
            f"The revision '{revision}' does not exist in {repo_id}; revisions there: {_files_text(known)} ({where})."
        )
    return HubFileNotFound(
        f"The file '{filename}' is not in revision {revision} of {repo_id}; "
        f"files there: {_files_text(revisions[commit][1])}."
    )


def hub_file_list(
    *, repo_id: str, revision: str | None = None, cache_dir: Path, offline: bool, token: str | None = None
) -> list[str]:
    """The files of a repository at a revision (from the local cache when offline); [] if unknown."""
    revision = revision or DEFAULT_REVISION
    if not offline:
        try:
            return sorted(HfApi(token=token).list_repo_files(repo_id, revision=revision))
        except Exception:  # only used to enrich an error message; the cache is the fallback
            pass
    revisions = _cached_revisions(repo_id=repo_id, cache_dir=cache_dir) or {}
    for commit, (refs, files) in revisions.items():
        if revision == commit or revision in refs:
            return files
    return []


def _size_check(*, repo_id: str, filename: str, revision: str, token: str | None, max_bytes: int) -> None:
    """Online only: refuse a file over ``max_bytes`` before downloading any of it."""
    try:
        metadata = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), token=token)
    except HfHubHTTPError:
        raise
    except Exception:  # unreachable: hf_hub_download falls back to the cache, or says it cannot
        return
    if metadata.size is not None and metadata.size > max_bytes:
        raise HubFileTooLarge(
            f"The file '{filename}' in {repo_id} is {metadata.size} bytes; the limit is {max_bytes} bytes."
        )


def hub_file_fetch(
    *,
    repo_id: str,
    filename: str,
    revision: str | None = None,
    cache_dir: Path,
    offline: bool,
    token: str | None = None,
    max_bytes: int | None = None,
) -> HubFile:
    """Fetch one file of a model repository into the hub cache and say where it is and at which commit.

    ``offline`` reads only the cache. Online, a file over ``max_bytes`` is refused before it is downloaded;
    a file that is already cached is not downloaded again.
    """
    revision = revision or DEFAULT_REVISION
    cache_dir = Path(cache_dir)
    try:
        if not offline and max_bytes is not None:
            _size_check(repo_id=repo_id, filename=filename, revision=revision, token=token, max_bytes=max_bytes)
        local = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            token=False if offline else token,
        )
    except LocalEntryNotFoundError as exc:  # not in the cache, and the Hub was not asked or not reachable
        raise _local_miss_explain(
            repo_id=repo_id, filename=filename, revision=revision, cache_dir=cache_dir, offline=offline
        ) from exc
    except GatedRepoError as exc:
        raise HubRepoNotFound(
            f"The repository {repo_id} is gated: accept its terms on the Hub with the account whose token "
            "the platform uses (HF_TOKEN)."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise HubRepoNotFound(
            f"The repository {repo_id} was not found on the Hugging Face Hub, or it is private "
            "and the platform's token (HF_TOKEN) cannot read it."
        ) from exc
    except RevisionNotFoundError as exc:
        raise HubRevisionNotFound(f"The revision '{revision}' does not exist in {repo_id}.") from exc
    except EntryNotFoundError as exc:
        files = hub_file_list(repo_id=repo_id, revision=revision, cache_dir=cache_dir, offline=offline, token=token)
        raise HubFileNotFound(
            f"The file '{filename}' is not in revision {revision} of {repo_id}; files there: {_files_text(files)}."
        ) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None) or 0
        if status >= 500 or status == 429:
            raise HubUnavailable(f"The Hugging Face Hub is unavailable ({status}); try again later.") from exc
        raise HubError(f"The Hugging Face Hub refused the download: {str(exc).splitlines()[0]}") from exc
    except HubError:
        raise
    except (OSError, ConnectionError) as exc:
        raise HubUnavailable(f"The Hugging Face Hub could not be reached: {exc}") from exc

    path = Path(local)
    # The library returns .../snapshots/<commit>/<filename>, the filename possibly in folders.
    commit = path.parents[len(filename.split("/")) - 1].name
    return HubFile(
        path=path, repo_id=repo_id, filename=filename, commit=commit if _COMMIT_RE.match(commit) else revision
    )
