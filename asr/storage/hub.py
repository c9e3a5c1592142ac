"""Models on the Hugging Face Hub: ``hf://ORG/NAME[@revision]`` references resolved to a local folder (cache or download), and uploads."""

from __future__ import annotations

import os
from pathlib import Path

from asr.errors import AsrError
from asr.version import __version__

HUB_PREFIX = "hf://"


class HubError(AsrError):
    """The Hugging Face Hub cannot be reached, lacks the model, or huggingface_hub is missing."""


def is_hub_reference(model: str | Path) -> bool:
    return str(model).startswith(HUB_PREFIX)


def parse_hub_reference(reference: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME[@revision]`` -> (repo id, revision or None)."""
    repo_id, _, revision = reference[len(HUB_PREFIX):].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise HubError(f"{reference}: a Hub model is hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return repo_id, revision or None


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError as err:
        raise HubError("Hugging Face Hub models need the huggingface_hub package: pip install 'lstm-asr[hub]'") from err
    return huggingface_hub


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set: use the local cache only (read at every call, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_from_hub(reference: str) -> Path:
    """The local folder of ``hf://ORG/NAME[@revision]``, downloaded into the Hub cache if needed."""
    hub = _huggingface_hub()
    repo_id, revision = parse_hub_reference(reference)
    offline = hub_offline()
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, local_files_only=offline)
    except (hub.errors.HfHubHTTPError, hub.errors.LocalEntryNotFoundError, hub.errors.HFValidationError,
            OSError) as err:
        hint = " (HF_HUB_OFFLINE is set and the model is not in the local cache)" if offline else ""
        raise HubError(f"{reference}: cannot get the model from the Hugging Face Hub{hint}: {err}") from err
    return Path(folder)


def resolve_model(model: str | Path) -> Path:
    """A local checkpoint file or folder for ``model`` (downloading hf:// references)."""
    return download_from_hub(str(model)) if is_hub_reference(model) else Path(model)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a model folder to the Hugging Face Hub (creating the repository); returns its URL."""
    hub = _huggingface_hub()
    if hub_offline():
        raise HubError(f"cannot push {folder} to {repo_id}: HF_HUB_OFFLINE is set")
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"asr package ({__version__})")
    except (hub.errors.HfHubHTTPError, hub.errors.HFValidationError, OSError) as err:
        raise HubError(f"cannot push {folder} to the Hugging Face Hub as {repo_id}: {err}") from err
    return f"https://huggingface.co/{repo_id}"
