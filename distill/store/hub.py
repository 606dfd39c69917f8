"""Pushing a folder to the Hugging Face Hub (a model export, a published cache) with huggingface_hub's own calls
(create_repo, upload_folder); one line saying what to do when that cannot work."""
from __future__ import annotations

import logging
from pathlib import Path

from distill.errors import DataError

log = logging.getLogger("distill")


def hub_problem() -> str | None:
    """Why a push to the Hub cannot work from here (offline, not logged in), or None: checked before any work
    (preflight) and again before the push."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        return "offline (HF_HUB_OFFLINE=1), nothing pushed"
    if get_token() is None:
        return "not logged in to the Hugging Face Hub; run `hf auth login` (or set HF_TOKEN)"
    return None


def push(folder: Path, repo: str, setting: str, then: str, repo_type: str = "model") -> None:
    """Upload `folder` to the Hub repo `repo` (of `repo_type`), created if need be; a failure is one line naming
    `setting` (the key that asked for the push) and `then` (what to do once it is fixed)."""
    from huggingface_hub import HfApi

    problem = hub_problem()
    if problem:
        raise DataError(f"{setting}: {problem}; {then}")
    try:
        api = HfApi()
        api.create_repo(repo, repo_type=repo_type, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type=repo_type,
                          commit_message=f"distill {setting.split('.')[0]}")
    except Exception as e:  # noqa: BLE001 - network and permission errors come in many types
        raise DataError(f"{setting}: could not push to {repo} ({str(e).splitlines()[0]}); {then}") from None
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    log.info(f"{setting.split('.')[0]}: pushed {folder} to https://huggingface.co/{prefix}{repo}")
