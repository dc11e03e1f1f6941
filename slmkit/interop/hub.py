"""`push`: an HF export uploaded to a Hugging Face Hub model repository with huggingface_hub.

The source is either a directory `export_hf` or `export_adapter_hf` wrote (uploaded as it is), or an
slmkit checkpoint, run or LoRA adapter, which is exported first into a temporary directory (a model
with a model card whose usage example names the repository; an adapter as a PEFT adapter). The token is checked first (`HfApi.whoami`), so that no long export runs for a push that
cannot happen; the repository is created when missing (`HfApi.create_repo(exist_ok=True)`), then the
folder is uploaded in one commit (`HfApi.upload_folder`). Whatever stops the push is one line: no
network or offline mode (push later from an online machine), no token (log in or pass one), a token
refused or without write access, or another answer of the Hub.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from slmkit.errors import SlmError
from slmkit.finetune.lora import is_adapter_dir, read_adapter_meta
from slmkit.interop.hf import DEFAULT_GENERATION_PRESET, EXPORT_MARKER, export_hf
from slmkit.interop.hf_adapter import ADAPTER_EXPORT_MARKER, export_adapter_hf
from slmkit.interop.model_card import DEFAULT_LICENSE
from slmkit.rundir import is_run_dir, resolve_checkpoint_dir

__all__ = ["push"]

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
LOGIN_HINT = "run `hf auth login` (older huggingface_hub: `huggingface-cli login`), set HF_TOKEN, or pass --token"


def push(source: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
         license: str = DEFAULT_LICENSE, generation_preset: str = DEFAULT_GENERATION_PRESET, audit: bool = True,
         endpoint: str | None = None, commit_message: str | None = None, base_model: str | None = None) -> str:
    """Upload `source` to the Hub model repository `repo_id` ("NAME" or "OWNER/NAME"); return its URL.

    source: an HF export directory or a PEFT adapter `export_adapter_hf` wrote (uploaded as it is, its
    export mark left out), an slmkit checkpoint or run directory (exported first with `export_hf(...,
    license, generation_preset, audit)` into a temporary directory, removed afterwards), or an slmkit
    LoRA adapter (exported first with `export_adapter_hf(..., base_model)`: name the base's Hub
    repository there, so that the adapter's config points at it). private: create the repository private (an
    existing one keeps its visibility). token: a Hub token with write access (default: HF_TOKEN,
    else the one `hf auth login` stored). endpoint: another Hub (default: huggingface.co, or HF_ENDPOINT).
    Raises SlmError, before uploading anything, for a bad repository id, a missing source, offline mode
    (HF_HUB_OFFLINE), no token, or no network; and for a refused token or another error the Hub answers.
    """
    if not isinstance(repo_id, str) or len(repo_id) > 96 or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise SlmError(f"repository id {repo_id!r} is not valid: write NAME or OWNER/NAME (letters, digits, "
                       f"'-', '_' and '.', at most 96 characters)")
    source = Path(source)
    export_dir = source if _is_hf_export(source) or _is_adapter_export(source) else None
    adapter = export_dir is None and is_adapter_dir(source)
    if base_model is not None and not adapter:
        raise SlmError(f"base_model names the base of an slmkit LoRA adapter exported on the way; {source} is not one "
                       f"(an export already names its base in adapter_config.json)")
    if adapter:
        read_adapter_meta(source)  # a damaged adapter is refused before any network
    elif export_dir is None:
        resolve_checkpoint_dir(source)  # a missing or wrong source is refused before any network
    hub = _huggingface_hub()
    host = urlparse(endpoint or hub.constants.ENDPOINT).netloc or str(endpoint)
    retry = f"push later from an online machine: slm push {source} {repo_id}"
    if getattr(hub.constants, "HF_HUB_OFFLINE", False) or _truthy(os.environ.get("HF_HUB_OFFLINE")):
        raise SlmError(f"cannot reach {host}: offline mode is on (HF_HUB_OFFLINE); {retry} (with HF_HUB_OFFLINE "
                       f"unset)")
    token = token or hub.get_token()
    if not token:
        raise SlmError(f"no Hugging Face token: {LOGIN_HINT}")
    scratch = None
    try:
        api = hub.HfApi(endpoint=endpoint, token=token)
        api.whoami()  # the network and the token, checked before a long export
        if export_dir is None:
            scratch = Path(tempfile.mkdtemp(prefix="slmkit-push-"))
            target = scratch / repo_id.rsplit("/", 1)[-1]
            export_dir = export_adapter_hf(source, target, base_model=base_model) if adapter else \
                export_hf(source, target, license=license, generation_preset=generation_preset, audit=audit,
                          model_id=repo_id)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(export_dir), repo_id=repo_id, repo_type="model",
                          commit_message=commit_message or f"Upload {source.name} (exported with slmkit)",
                          ignore_patterns=[EXPORT_MARKER, ADAPTER_EXPORT_MARKER])
    except hub.errors.HfHubHTTPError as error:
        raise SlmError(_http_message(error, repo_id)) from None
    except _network_errors(hub) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SlmError(f"cannot reach {host}: {reason}; {retry}") from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return str(url)


def _is_adapter_export(path: Path) -> bool:
    """Whether `path` is a PEFT adapter directory (adapter_config.json), not an slmkit adapter."""
    return (path / "adapter_config.json").is_file() and not is_adapter_dir(path)


def _is_hf_export(path: Path) -> bool:
    """Whether `path` is an HF model directory (config.json naming a model_type), not an slmkit one."""
    config = path / "config.json"
    if not config.is_file() or is_run_dir(path):
        return False
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and "model_type" in values and "format" not in values


def _huggingface_hub():
    """huggingface_hub with the submodules used here loaded (the package imports them lazily)."""
    try:
        for module in ("huggingface_hub.constants", "huggingface_hub.errors"):
            importlib.import_module(module)
        return importlib.import_module("huggingface_hub")
    except ImportError:
        raise SlmError("pushing needs huggingface_hub: pip install 'slmkit[hf]' (or huggingface_hub)") from None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _network_errors(hub) -> tuple[type[BaseException], ...]:
    """The exceptions that mean the Hub could not be reached: offline mode, refused or timed-out
    connections, from whichever HTTP library this huggingface_hub uses."""
    errors: list[type[BaseException]] = [hub.errors.OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            found = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(found, name) for name in names if isinstance(getattr(found, name, None), type)]
    return tuple(errors)


def _http_message(error, repo_id: str) -> str:
    """One line for an HTTP error the Hub answered."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    detail = getattr(error, "server_message", None) or str(error).splitlines()[0]
    if status == 401:
        return f"the Hub refused the token (401 Unauthorized: {detail}); {LOGIN_HINT} with a valid token"
    if status == 403:
        return (f"the token may not write to {repo_id} (403 Forbidden: {detail}); use a token with write access, "
                f"or a repository under your own name")
    return f"the Hub answered {status or 'an error'} to the push to {repo_id}: {detail}"
