"""Model weights as safetensors + JSON metadata: saving, checked loading, and shipped weights.

File layout: a standard safetensors file whose header metadata holds one entry,
``"igc_kernels"``, a JSON object with at least ``arch`` (a key of ``igc_kernels.models.ARCHS``)
and ``model`` (the ``build_model`` keyword arguments: channels, depth, primary_groups), plus
what the trainer knows: ``scales``, ``training_data``, ``steps``, ``psnr``, ...

Loading never unpickles: the header is parsed as JSON and checked (sizes, offsets, truncation)
before safetensors reads the tensors, then keys, shapes, dtypes and finiteness are checked
against the architecture the metadata names. Anything off is a ``WeightsError`` that says what.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..models import ARCHS, build_model

META_KEY = "igc_kernels"
FORMAT_VERSION = 1
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
DEFAULT_SHIPPED = "igc_vdsr_s1_x234"
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_MODEL_KWARGS = ("channels", "depth", "primary_groups")
_MAX_HEADER = 16 * 1024 * 1024


class WeightsError(ValueError):
    """A weights file that is not a valid igc_kernels model file; the message says why."""


class ShippedWeightsMissing(FileNotFoundError):
    """The package does not contain the requested trained weights."""


def model_config(model: nn.Module) -> dict[str, int]:
    """``build_model`` keyword arguments that rebuild ``model``'s shapes."""
    cfg = {"channels": model.channels, "depth": model.depth}
    from ..nn import IGCConv2d

    groups = {m.primary_groups for m in model.modules() if isinstance(m, IGCConv2d)}
    if len(groups) > 1:
        raise ValueError(f"model mixes primary_groups {sorted(groups)}; cannot describe it by one value")
    if groups:
        cfg["primary_groups"] = groups.pop()
    return cfg


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write ``model``'s parameters (float32) and ``metadata`` to ``path`` atomically.

    metadata must contain ``arch``; ``model`` (the shape arguments) is filled in from the model.
    Any other JSON-serialisable entries (scales, training_data, steps, psnr, ...) are kept.
    """
    if not isinstance(metadata, dict) or metadata.get("arch") not in ARCHS:
        raise ValueError(f"metadata must be a dict with 'arch' in {sorted(ARCHS)}, got {metadata!r:.200}")
    meta = dict(metadata)
    meta["model"] = model_config(model)
    meta["format_version"] = FORMAT_VERSION
    try:
        text = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serialisable (finite numbers): {e}") from e
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={META_KEY: text})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_header(path: str) -> dict:
    """Parse and check the safetensors header without reading tensor data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise WeightsError(f"{path}: header length {n} exceeds the file ({size} bytes): truncated or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: header must be a JSON object")
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            dtype, shape = info["dtype"], info["shape"]
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: malformed header entry for {name!r}") from e
        if dtype not in _FLOAT_DTYPES:
            raise WeightsError(f"{path}: tensor {name!r} has dtype {dtype}, expected a float type ({sorted(_FLOAT_DTYPES)})")
        itemsize = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}[dtype]
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop) \
                or stop - start != itemsize * math.prod(shape):
            raise WeightsError(f"{path}: tensor {name!r} has inconsistent offsets {start}..{stop} for shape {shape}")
        end = max(end, stop)
    if end > data_len:
        raise WeightsError(f"{path}: truncated: tensors need {end} data bytes, the file holds {data_len}")
    return header


def _parse_metadata(path: str, header: dict) -> dict[str, Any]:
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    if raw is None:
        raise WeightsError(f"{path}: no {META_KEY!r} metadata (architecture unknown); save with save_weights()")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: {META_KEY!r} metadata is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: metadata must be a JSON object, got {type(meta).__name__}")
    if meta.get("arch") not in ARCHS:
        raise WeightsError(f"{path}: metadata 'arch' must be one of {sorted(ARCHS)}, got {meta.get('arch')!r}")
    cfg = meta.get("model", {})
    if not isinstance(cfg, dict) or set(cfg) - set(_MODEL_KWARGS) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in cfg.values()
    ):
        raise WeightsError(f"{path}: metadata 'model' must map {_MODEL_KWARGS} to positive ints, got {cfg!r}")
    scales = meta.get("scales")
    if scales is not None and not (
        isinstance(scales, list) and scales and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 16 for s in scales)
    ):
        raise WeightsError(f"{path}: metadata 'scales' must be a list of ints, got {scales!r}")
    return meta


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu", backend: str = "auto"):
    """Rebuild the model named by the file's metadata and load its weights.

    Returns ``(model, metadata)``; the model is in eval mode on ``device``. Raises
    ``FileNotFoundError`` or ``WeightsError`` (tampered, truncated or foreign files).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r}")
    header = _read_header(path)
    meta = _parse_metadata(path, header)
    try:
        model = build_model(meta["arch"], backend=backend, **meta.get("model", {}))
    except ValueError as e:
        raise WeightsError(f"{path}: metadata describes an impossible model: {e}") from e
    expected = model.state_dict()
    names = {k for k in header if k != "__metadata__"}
    missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path}: tensors do not match {meta['arch']}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    state = {}
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            for k in sorted(names):
                t = f.get_tensor(k)
                if tuple(t.shape) != tuple(expected[k].shape):
                    raise WeightsError(f"{path}: tensor {k!r} has shape {tuple(t.shape)}, {meta['arch']} needs {tuple(expected[k].shape)}")
                if not torch.isfinite(t).all():
                    raise WeightsError(f"{path}: tensor {k!r} contains NaN or inf")
                state[k] = t.to(torch.float32)
    except WeightsError:
        raise
    except Exception as e:  # safetensors' own checks (e.g. overlapping offsets)
        raise WeightsError(f"{path}: cannot read tensors: {e}") from e
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta


def shipped_path(name: str = DEFAULT_SHIPPED) -> str:
    return os.path.join(SHIPPED_DIR, f"{name}.safetensors")


def list_shipped() -> list[str]:
    """Names of the weights shipped in igc_kernels/weights/."""
    if not os.path.isdir(SHIPPED_DIR):
        return []
    return sorted(n[: -len(".safetensors")] for n in os.listdir(SHIPPED_DIR) if n.endswith(".safetensors"))


def load_shipped(name: str = DEFAULT_SHIPPED, device: str | torch.device = "cpu", backend: str = "auto"):
    """``load_weights`` on the package's own ``igc_kernels/weights/<name>.safetensors``."""
    path = shipped_path(name)
    if not os.path.isfile(path):
        have = list_shipped()
        raise ShippedWeightsMissing(
            f"no shipped weights {name!r} in the package (igc_kernels/weights/; available: {have or 'none yet'}); "
            "pass --weights FILE.safetensors (or --model bicubic)"
        )
    return load_weights(path, device=device, backend=backend)
