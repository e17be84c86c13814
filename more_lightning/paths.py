"""Where more_lightning keeps things that are built once per machine (never inside the repository).

Everything lives under one cache root: ``$MORE_LIGHTNING_CACHE`` if set, else ``$XDG_CACHE_HOME/more_lightning``,
else ``~/.cache/more_lightning``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The folder that holds built binaries, tiny models and demo data for this machine."""
    explicit = os.environ.get("MORE_LIGHTNING_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "more_lightning"


def cache_dir(*parts: str) -> Path:
    """A sub-folder of :func:`cache_root`, created if missing."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
