"""Where a model named in a config comes from, checked before transformers is asked to load it.

A name that looks like a path (absolute, ``./``, ``../``, ``~``, more than one ``/``, or an existing file) must be a
folder with a ``config.json``; a name that looks like a hub id (``org/name``) must be in the local Hugging Face cache
when the hub is offline (``HF_HUB_OFFLINE``) or unreachable. Each failure is one line that says what to do, instead
of transformers' long traceback about hub repo ids (and, for a mistyped relative path, ~30 s of trying the hub).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from more_lightning.errors import UserError
from more_lightning.policy.packaged import PACKAGED_PREFIX, packaged_model_path
from more_lightning.policy.tiny import TINY_PREFIX, tiny_model_path


class ModelNotFound(UserError, FileNotFoundError):
    """A configured model (or adapter) is neither a usable local folder nor reachable on the hub."""


def looks_local(name: str) -> bool:
    """Whether ``name`` reads as a path rather than a hub id."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
        or Path(name).expanduser().exists()
    )


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_model_source(name: str, what: str = "policy.model", required_file: str = "config.json") -> None:
    """Raise :class:`ModelNotFound` (one line, with the fix) unless ``name`` can be loaded."""
    if looks_local(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelNotFound(f"{what} {name!r}: no such folder (a local model is a folder saved by save_pretrained)")
        if not (folder / required_file).is_file():
            raise ModelNotFound(f"{what} {name!r}: the folder has no {required_file}, so it is not a saved model")
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, required_file), str):
        return  # in the local cache: loads offline
    if not _hub_reachable():
        raise ModelNotFound(
            f"{what} {name!r} is not a local folder, not in the Hugging Face cache, and the hub is offline or "
            f"unreachable: download it where there is internet (`hf download {name}`) and copy the cache, or give a "
            "local folder"
        )


def _in_process_group() -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()


def resolve_model_name(name_or_path: str) -> str:
    """``tiny:<name>`` / ``packaged:<name>`` → the built folder; a path or a hub name is returned unchanged.

    Inside a torch process group, ``save_pretrained`` writes the weights on rank 0 only, so a build on another rank
    would be partial: there the folder is resolved (and built if needed) in a fresh process with no process group.
    """
    if not name_or_path.startswith((TINY_PREFIX, PACKAGED_PREFIX)):
        return name_or_path
    if _in_process_group():
        code = (
            "import sys; from more_lightning.policy.model_source import resolve_model_name as r; print(r(sys.argv[1]))"
        )
        result = subprocess.run([sys.executable, "-c", code, name_or_path], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building {name_or_path} failed:\n{result.stderr[-3000:]}")
        return result.stdout.strip().splitlines()[-1]
    if name_or_path.startswith(TINY_PREFIX):
        return str(tiny_model_path(name_or_path[len(TINY_PREFIX) :]))
    return str(packaged_model_path(name_or_path[len(PACKAGED_PREFIX) :]))
