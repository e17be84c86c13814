"""Where a model named in a config comes from, checked before transformers is asked to load it.

A name that looks like a path (absolute, ``./``, ``../``, ``~``, more than one ``/``, or an existing file) must be a
folder with a ``config.json``; a name that looks like a hub id (``org/name``) must be in the local Hugging Face cache
when the hub is offline (``HF_HUB_OFFLINE``) or unreachable. Each failure is one line that says what to do, instead
of transformers' long traceback about hub repo ids (and, for a mistyped relative path, ~30 s of trying the hub).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


class ModelNotFound(FileNotFoundError):
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
