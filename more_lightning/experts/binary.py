"""The Weaviate server binary: where it is looked for, and how it is built from source with ``go install``.

The binary is built once per machine into the cache (never into the repository):
``go install github.com/weaviate/weaviate/cmd/weaviate-server@<WEAVIATE_TAG>`` with CGO off, as Weaviate's own release
build does. ``python -m more_lightning install-weaviate`` (run by ``make setup``) does it and is a no-op when done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from more_lightning.errors import UserError
from more_lightning.paths import build_once, cache_root, is_complete

WEAVIATE_TAG = "v1.39.0"
"""The Weaviate release the project builds and tests against."""

WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
BINARY_ENV = "MORE_LIGHTNING_WEAVIATE_BIN"
SETUP_HINT = "run `make setup` (or `python -m more_lightning install-weaviate`) to build it"


class WeaviateBinaryNotFound(UserError, FileNotFoundError):
    """No Weaviate server binary where the embedded mode looks for one."""


def default_binary_path(tag: str = WEAVIATE_TAG) -> Path:
    """Where ``install-weaviate`` puts the server binary for ``tag``."""
    return cache_root() / "weaviate" / tag / "weaviate-server"


def find_binary(explicit: str | os.PathLike | None = None) -> Path:
    """The server binary to run: ``explicit``, else ``$MORE_LIGHTNING_WEAVIATE_BIN``, else the built one.

    Raises :class:`WeaviateBinaryNotFound` with the command that fixes it.
    """
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get(BINARY_ENV):
        candidates.append(Path(os.environ[BINARY_ENV]))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    built = default_binary_path()
    if is_complete(built.parent):
        return built
    candidates.append(built)
    looked = ", ".join(str(p) for p in candidates)
    raise WeaviateBinaryNotFound(
        f"No Weaviate server binary found (looked at: {looked}). To fix: {SETUP_HINT}; it needs Go >= 1.26. "
        f"Or point ${BINARY_ENV} (or `weaviate.binary` in the config) at a weaviate-server you have. "
        "On a machine with internet access you can instead set `weaviate.mode: client_embedded`, which lets "
        "weaviate-client download a release binary from GitHub."
    )


def verify_binary(folder: Path) -> None:
    """Raise unless ``folder`` holds a ``weaviate-server`` that runs (``--help`` exits 0)."""
    subprocess.run([str(folder / "weaviate-server"), "--help"], check=True, capture_output=True, timeout=120)


def _go_install(tag: str, folder: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise WeaviateBinaryNotFound("Building the Weaviate server needs Go >= 1.26 on PATH (https://go.dev/dl/).")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOBIN": str(folder)}
    command = [go, "install", "-trimpath", "-ldflags=-s -w", f"{WEAVIATE_MODULE}@{tag}"]
    print(f"Building the Weaviate server {tag} with Go (once per machine; several minutes)...", file=sys.stderr)
    started = time.monotonic()
    subprocess.run(command, env=env, check=True)
    print(f"Built the Weaviate server in {time.monotonic() - started:.0f} s", file=sys.stderr)


def install_binary(tag: str = WEAVIATE_TAG, force: bool = False) -> Path:
    """Build the Weaviate server with ``go install`` into the cache; return its path. Fast when already built.

    The binary's folder is complete or absent (``paths.build_once``): built in staging, run once, then published.
    """
    target = default_binary_path(tag)
    if force:
        shutil.rmtree(target.parent, ignore_errors=True)
    build_once(target.parent, lambda staging: _go_install(tag, staging), verify_binary)
    return target


if __name__ == "__main__":  # `python -m more_lightning.experts.binary`: what setup runs (imports nothing heavy)
    given = os.environ.get(BINARY_ENV)
    print(find_binary() if given else install_binary())  # a binary given by the environment is used, not rebuilt


def install_weaviate(force: bool = False) -> int:
    """Build the Weaviate server binary into the cache with `go install` (no-op when already built).

    Args:
        force: rebuild even if the binary exists.
    """

    print(install_binary(force=force))
    return 0
