"""Write an output directory or file so that it appears whole or not at all.

The work happens in a hidden temporary path beside the target, on the same filesystem, and a
rename publishes it once the work succeeds. A failure or Ctrl-C removes the temporary path, so
an interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from qwen_edge.errors import QwenEdgeError

logger = logging.getLogger("qwen_edge.convert")


@contextmanager
def atomic_output_dir(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `out` and rename it to `out` when the block succeeds.

    With `force`, an existing `out` is replaced, but only after the new directory is complete.
    Missing parent directories of `out` are created.
    """
    out = Path(out)
    _reject_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)

    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _apply_umask(partial, 0o777)
        yield partial
        _publish(partial, out, force)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


@contextmanager
def atomic_output_file(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside `out` and move it to `out` when the block succeeds."""
    out = Path(out)
    _reject_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)

    handle, name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    os.close(handle)
    partial = Path(name)
    try:
        _apply_umask(partial, 0o666)
        yield partial
        _reject_existing(out, force)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _reject_existing(out: Path, force: bool) -> None:
    if (out.exists() or out.is_symlink()) and not force:
        raise QwenEdgeError(
            f"Output path {out} already exists. Pass --force to replace it, or choose another path."
        )


def _apply_umask(path: Path, mode: int) -> None:
    # mkdtemp and mkstemp create private (0700/0600) paths. Give the result the permissions
    # that a plain mkdir or open would have given it.
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def _publish(partial: Path, out: Path, force: bool) -> None:
    _reject_existing(out, force)
    if not (out.exists() or out.is_symlink()):
        os.rename(partial, out)
        return

    # Move the old output aside first, so that it is deleted only once the new one is in place.
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(partial, out)
    except BaseException:
        os.rename(old, out)
        raise
    _remove(old)
    logger.info("replaced existing %s", out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
