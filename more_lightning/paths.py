"""Where more_lightning keeps things that are built once per machine (never inside the repository), and how they are
published there.

Everything lives under one cache root: ``$MORE_LIGHTNING_CACHE`` if set, else ``$XDG_CACHE_HOME/more_lightning``,
else ``~/.cache/more_lightning``.

Every cached build (tiny and packaged models, the demo data, the Weaviate binary) goes through :func:`build_once`, so a
cache folder is **complete or absent**: it is built in a staging folder next to it, verified there, given a manifest
of its files, and renamed into place in one step, under a file lock (two processes building at once: one builds, the
other waits and reuses). A folder found at the target without a valid manifest — left by a killed build or by an older
version — is verified and adopted if it has no manifest and passes, else removed and rebuilt.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from more_lightning.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = ".more_lightning-build.json"
"""The file, written last, that marks a cache folder complete: the size of every file the build wrote."""


class CacheBuildError(UserError, RuntimeError):
    """A cache build finished but its result failed verification; nothing was published."""


class CacheNotWritable(UserError, OSError):
    """The cache folder cannot be created or written (read-only, full, or a file in its path)."""


@contextmanager
def _writing_the_cache() -> Iterator[None]:
    try:
        yield
    except OSError as error:
        where = error.filename or cache_root()
        raise CacheNotWritable(
            f"the cache folder {cache_root()} cannot be written ({error.strerror or error}: {where}). Set "
            "MORE_LIGHTNING_CACHE to a writable folder (or free space there) and run again."
        ) from None


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
    with _writing_the_cache():
        path.mkdir(parents=True, exist_ok=True)
    return path


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` has a manifest and every file it lists, at the listed size."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _write_manifest(folder: Path) -> None:
    files = {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with _writing_the_cache():
        handle = lock_path.open("a")
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _passes(verify: Callable[[Path], None], folder: Path) -> bool:
    try:
        verify(folder)
    except Exception as error:  # noqa: BLE001 - any failure means "not a usable build"
        log.warning("%s failed verification (%s: %s)", folder, type(error).__name__, error)
        return False
    return True


def build_once(target: Path, build: Callable[[Path], object], verify: Callable[[Path], None]) -> Path:
    """Return ``target``, building it first if it is not complete (see the module docstring).

    Args:
        target: the cache folder to publish.
        build: writes the build into the (empty, existing) folder it is given.
        verify: raises if the folder it is given is not a usable build (e.g. loads the model from it).
    """
    if is_complete(target):
        return target
    with _writing_the_cache():
        target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if is_complete(target):  # another process published it while we waited
            return target
        if target.exists():
            # no manifest at all: possibly a complete build of an older version (adopt it if it verifies);
            # a manifest that does not match: damaged since it was published (rebuild)
            if not (target / MANIFEST).exists() and _passes(verify, target):
                _write_manifest(target)
                return target
            log.warning("Removing the incomplete cache folder %s and building it again", target)
            shutil.rmtree(target)
        with _writing_the_cache():
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; a cache folder is readable like any other
        try:
            build(staging)
            if not _passes(verify, staging):
                raise CacheBuildError(f"building {target.name} produced an unusable folder; nothing was published")
            _write_manifest(staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
