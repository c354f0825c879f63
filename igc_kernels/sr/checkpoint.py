"""Training checkpoints: written atomically, checked on load, never unpickled.

File layout: a 16-byte magic line, the 64-hex-digit SHA-256 of the payload and a newline, then
the payload, which is a ``torch.save`` archive of plain containers and tensors (model and
optimizer state dicts, scheduler state, step, RNG states). The digest turns a tampered or
truncated file into a clear ``CheckpointError`` instead of a confusing unpickling error or,
worse, silently wrong weights. The payload is loaded with ``torch.load(weights_only=True)``,
so a checkpoint cannot run code.

Writes go to a temporary file in the same directory, are flushed and fsynced, then renamed over
the target with ``os.replace`` (atomic on POSIX and Windows) and the directory is fsynced: a crash
or ``kill -9`` at any moment leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

MAGIC = b"IGCKPT-v1\n"  # file type and format version
_DIGEST_LEN = 64


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, tampered with or of another format."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers only ever see the old or the complete new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave no temp file behind on an ordinary error (a kill -9 can, harmlessly: it has a
        # dot-prefixed .tmp name that nothing reads).
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (plain containers, numbers, strings and tensors only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    atomic_write_bytes(path, MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``, verifying its digest first.

    Raises ``CheckpointError`` naming the file and the problem when it is missing, truncated,
    modified or not a checkpoint.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    header = len(MAGIC) + _DIGEST_LEN + 1
    if not raw.startswith(MAGIC):
        raise CheckpointError(
            f"{path} is not an igc_kernels training checkpoint (bad header; expected {MAGIC!r})"
        )
    if len(raw) < header:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(raw)} bytes, header alone is {header})")
    expected = raw[len(MAGIC) : len(MAGIC) + _DIGEST_LEN].decode("ascii", errors="replace")
    payload = raw[header:]
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or was modified: SHA-256 of its payload is "
            f"{actual[:16]}..., the header records {expected[:16]}...; refusing to load it"
        )
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # a well-formed digest over a payload torch cannot read
        raise CheckpointError(f"checkpoint {path} could not be read safely: {e}") from e
