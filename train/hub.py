"""Publishing an export folder: ``push_to_hub(export_dir, repo_id)``.

The upload is ``api.create_repo(repo_id, exist_ok=True)`` then ``api.upload_folder(...)``,
with ``api`` a ``huggingface_hub.HfApi`` (token from ``HF_TOKEN`` or ``huggingface-cli
login``; never from the command line). A target ``file:///some/folder`` uses
:class:`LocalFolderApi`, an ``HfApi`` stand-in with the same two methods that copies the
folder instead of sending it; everything up to the transport is the same code, which is
how the upload is tested here without network.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from faceveil.errors import InputError
from faceveil.models.backbones import EXPORT_MANIFEST

LOCAL_SCHEME = "file://"


class HubApi(Protocol):
    def create_repo(self, repo_id: str, *, repo_type: str | None = None, private: bool | None = None,
                    exist_ok: bool = False) -> Any: ...

    def upload_folder(self, *, repo_id: str, folder_path: str | os.PathLike[str], repo_type: str | None = None,
                      commit_message: str | None = None, **kwargs: Any) -> Any: ...


@dataclass
class LocalFolderApi:
    """``create_repo`` / ``upload_folder`` onto a local folder: ``root/<repo_id>/``."""

    root: Path

    def _repo(self, repo_id: str) -> Path:
        return self.root / repo_id if repo_id else self.root

    def create_repo(self, repo_id: str, *, repo_type: str | None = None, private: bool | None = None,  # noqa: ARG002
                    exist_ok: bool = False) -> str:
        repo = self._repo(repo_id)
        if repo.exists() and not exist_ok:
            raise InputError(f"{repo}: repository exists")
        repo.mkdir(parents=True, exist_ok=True)
        return repo.as_uri()

    def upload_folder(self, *, repo_id: str, folder_path: str | os.PathLike[str], repo_type: str | None = None,  # noqa: ARG002
                      commit_message: str | None = None, **kwargs: Any) -> str:  # noqa: ARG002
        repo = self._repo(repo_id)
        if not repo.is_dir():
            raise InputError(f"{repo}: repository does not exist (create_repo first)")
        shutil.copytree(folder_path, repo, dirs_exist_ok=True)
        return repo.as_uri()


def api_for(target: str, api: HubApi | None = None) -> tuple[HubApi, str]:
    """(api, repo_id) for a hub repo id, or a ``file:///folder`` target (repo_id "")."""
    if target.startswith(LOCAL_SCHEME):
        path = Path(unquote(urlparse(target).path))
        return (api or LocalFolderApi(path)), ""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    return api, target


def push_to_hub(export_dir: str | os.PathLike[str], target: str, api: HubApi | None = None, private: bool = False,
                commit_message: str | None = None) -> str:
    """Upload an export folder to the hub repo ``target`` (or a ``file://`` folder); returns what the API returned."""
    folder = Path(export_dir)
    if not (folder / EXPORT_MANIFEST).is_file():
        raise InputError(f"{folder}: not a faceveil export (no {EXPORT_MANIFEST}); run 'faceveil export' first")
    api, repo_id = api_for(target, api)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    result = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message or "faceveil export: LoRA adapter, settings and model card",
    )
    return str(result)
