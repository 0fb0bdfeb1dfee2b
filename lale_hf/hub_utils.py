"""Publishing a local folder on the Hub: one helper for every push (datasets, models, checkpoints).

A push uploads only the files that match an explicit allow-list, so that whatever else lands in the folder (logs,
tracker files, scratch files) never reaches a repository that may be public.
"""

import fnmatch
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path


logger = logging.getLogger(__name__)


class HubPushError(ValueError):
    """A push that cannot be made as asked (no such folder, no allow-list, nothing that matches it)."""


def files_to_push(folder: str | os.PathLike, allow_patterns: Sequence[str]) -> list[str]:
    """The folder's files (relative POSIX paths, sorted) that match one of `allow_patterns` (fnmatch, as
    `HfApi.upload_folder` matches them: `*` also crosses `/`)."""
    folder = Path(folder)
    relative = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return [name for name in relative if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns)]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    repo_type: str,
    commit_message: str,
    token: str | None = None,
    private: bool = False,
    *,
    allow_patterns: Sequence[str],
    attempts: int = 3,
    backoff_seconds: float = 2.0,
) -> str:
    """Creates `repo_id` if needed and uploads the files of `folder` that match `allow_patterns`; returns the commit
    URL.

    `allow_patterns` is required and is the whole list of what goes up: there is no deny-list. `token=None` uses
    the standard sources (the HF_TOKEN environment variable, or the login cached by `hf auth login`). A failing
    upload is tried `attempts` times, waiting `backoff_seconds` and then twice as long each time; the last error
    is raised.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if isinstance(allow_patterns, str):
        allow_patterns = [allow_patterns]
    allow_patterns = list(allow_patterns)
    if not folder.is_dir():
        raise HubPushError(f"{folder} is not a folder; nothing to push to {repo_id}.")
    if not allow_patterns:
        raise HubPushError(f"Refusing to push {folder} to {repo_id} without an allow-list of files.")
    if not files_to_push(folder, allow_patterns):
        raise HubPushError(f"No file in {folder} matches {allow_patterns}; nothing to push to {repo_id}.")
    api = HfApi(token=token)
    for attempt in range(1, attempts + 1):
        try:
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                repo_type=repo_type,
                folder_path=folder,
                commit_message=commit_message,
                allow_patterns=allow_patterns,
            )
            return commit.commit_url
        except Exception as error:  # noqa: BLE001 (any client or network error is retried)
            if attempt == attempts:
                raise
            delay = backoff_seconds * 2 ** (attempt - 1)
            logger.warning(
                f"Push of {folder} to {repo_id} failed ({error}); attempt {attempt + 1} of {attempts} in {delay:g} s"
            )
            time.sleep(delay)
