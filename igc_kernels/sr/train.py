"""Training IGC-VDSR / VDSR: the paper's recipe by default, every part configurable.

Recipe (paper, DESIGN.md section 5): L1 loss, Adam (0.9, 0.999, eps 1e-8), lr 1e-3 divided by 10
at epochs 30 and 45 of 50, batch 16, 36x36 patches of the Y channel, multi-scale x2/x3/x4,
flips and rotations.

Budgets are iterations. One "epoch" is ``epoch_iters`` iterations; by default one pass over the
patch grid of the training set (``ceil(len(dataset) / (batch * world))``; for T91 + BSD200 at
x2/x3/x4, 36x36 non-overlapping patches and batch 16 that is ~6.3k iterations). The total is
``iters`` or ``epochs * epoch_iters``; the learning-rate steps are fractions of the total (0.6 and
0.9 = the paper's epochs 30 and 45 of 50), so a shorter budget scales the schedule.

Run state: ``<out_dir>/checkpoint.ckpt`` (atomic, digest-checked, see ``checkpoint``) every
``ckpt_every`` iterations, at each epoch end and at the end; ``resume=True`` continues from it
with model, optimizer, scheduler, AMP scaler, step, RNG states and (implicitly, see ``sampling``)
the sampler position restored, so the resumed run draws the same batches as an uninterrupted one.
``<out_dir>/train_log.csv`` logs loss, lr and throughput, and validation PSNR beside bicubic PSNR
from step 0. The final weights go to ``<out_dir>/weights.safetensors`` with JSON metadata.

Multi-GPU / multi-node: launch the same command under ``torchrun``; rank 0 alone logs,
validates and writes files; each rank draws its own block of every global batch.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .sampling import PassIndexed, StepBatchSampler

CHECKPOINT_NAME = "checkpoint.ckpt"
LOG_NAME = "train_log.csv"
INFO_NAME = "run_info.json"
WEIGHTS_NAME = "weights.safetensors"
REPO_ROOT = Path(__file__).resolve().parents[2]
# The 291-image set of VDSR (T91 + BSD200), beside the repository (see the README's data section).
DEFAULT_TRAIN_FOLDERS = ("../shared/data/T91", "../shared/data/BSD200")
LOSSES = ("l1", "l2")
AMP_MODES = ("auto", "off", "bf16", "fp16")


class TrainError(ValueError):
    """A bad training configuration or missing input, with a message meant for the user."""


@dataclass
class TrainConfig:
    out_dir: str = "runs/igc_vdsr_s1"
    # model
    arch: str = "igc_vdsr_s1"
    backend: str = "auto"
    channels: int | None = None
    depth: int = 20
    primary_groups: int = 24
    # data
    train_folders: Sequence[str] | None = None  # None: DEFAULT_TRAIN_FOLDERS
    val_folder: str | None = None
    val_crop: int = 0  # centre-crop validation images to this side (0: whole images)
    scales: Sequence[int] = (2, 3, 4)
    patch_size: int = 36
    patch_stride: int | None = None  # grid step of patch corners (None: patch_size)
    batch_size: int = 16  # per process
    num_workers: int = 0
    # budget and schedule
    epochs: int = 50
    epoch_iters: int | None = None  # None: one pass over the patch grid
    iters: int | None = None  # total iterations; None: epochs * epoch_iters
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_milestones: Sequence[float] = (0.6, 0.9)  # fractions of the total iterations
    lr_gamma: float = 0.1
    loss: str = "l1"
    grad_clip: float | None = None  # max global grad norm; None: no clipping
    # execution
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 on a CUDA GPU that has it (else fp16), off on CPU
    threads: int | None = None  # torch intra-op threads (CPU)
    # bookkeeping
    ckpt_every: int = 500
    log_every: int = 50
    val_every: int | None = None  # None: every epoch
    resume: bool = False
    progress: bool = True
    tensorboard: bool = False
    weights_out: str | None = None  # None: <out_dir>/weights.safetensors
    init_weights: str | None = None  # start from these weights (a new schedule; not a resume)
    extra_metadata: dict[str, Any] = field(default_factory=dict)


def resolve_folder(path: str | os.PathLike) -> Path:
    """Relative paths are taken from the current directory if they exist there, else from the
    repository root (so the defaults work from anywhere)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return (REPO_ROOT / p).resolve()


def check_config(cfg: TrainConfig) -> None:
    def positive(name: str, v, allow_none: bool = False) -> None:
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TrainError(f"{name} must be a positive integer, got {v!r}")

    for name in ("patch_size", "batch_size", "epochs", "ckpt_every", "log_every", "depth", "primary_groups"):
        positive(name, getattr(cfg, name))
    for name in ("epoch_iters", "iters", "val_every", "patch_stride", "channels"):
        positive(name, getattr(cfg, name), allow_none=True)
    if cfg.num_workers < 0:
        raise TrainError(f"num_workers must be >= 0, got {cfg.num_workers}")
    if not cfg.scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 2 for s in cfg.scales):
        raise TrainError(f"scales must be integers >= 2, got {list(cfg.scales)!r}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise TrainError(f"lr must be a positive number, got {cfg.lr}")
    if any(not 0 < f < 1 for f in cfg.lr_milestones):
        raise TrainError(f"lr_milestones are fractions of the budget in (0, 1), got {list(cfg.lr_milestones)}")
    if not 0 < cfg.lr_gamma <= 1:
        raise TrainError(f"lr_gamma must be in (0, 1], got {cfg.lr_gamma}")
    if cfg.loss not in LOSSES:
        raise TrainError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    if cfg.amp not in AMP_MODES:
        raise TrainError(f"amp must be one of {AMP_MODES}, got {cfg.amp!r}")
    if cfg.grad_clip is not None and not cfg.grad_clip > 0:
        raise TrainError(f"grad_clip must be > 0 (or None), got {cfg.grad_clip}")
    if cfg.threads is not None and cfg.threads < 1:
        raise TrainError(f"threads must be >= 1, got {cfg.threads}")
    if cfg.val_crop < 0:
        raise TrainError(f"val_crop must be >= 0, got {cfg.val_crop}")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {name!r} requested but CUDA is not available")
    return dev


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def rng_state() -> dict[str, Any]:
    """Every RNG the process might draw from, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": list(random.getstate()[1]) + [random.getstate()[0], repr(random.getstate()[2])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py = state["python"]
    gauss = py[-1]
    random.setstate((py[-2], tuple(py[:-2]), None if gauss == "None" else float(gauss)))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CsvLog:
    """Append-only CSV with a fixed header; on resume, rows past the checkpoint's step are
    dropped (they were logged by the interrupted run after its last checkpoint and will be
    logged again)."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None) -> None:
        self.path, self.columns = path, columns
        if resume_step is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        else:
            rows = []
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
            f.flush()


class _StopFlag:
    """SIGINT / SIGTERM end a single-process run cleanly after the current step, with a checkpoint."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _available_backends(device: torch.device) -> list[str]:
    from ..ops import available_backends

    return list(available_backends(device.type))


def build_run_model(cfg: TrainConfig) -> nn.Module:
    from ..models import build_model

    try:
        return build_model(cfg.arch, backend=cfg.backend, channels=cfg.channels, depth=cfg.depth,
                           primary_groups=cfg.primary_groups)
    except ValueError as e:
        raise TrainError(str(e)) from e


def _load_init_weights(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """Copy a weights file of the same architecture into ``model`` (warm start)."""
    from .weights import WeightsError, load_weights

    try:
        src, meta = load_weights(resolve_folder(cfg.init_weights))
    except (FileNotFoundError, WeightsError) as e:
        raise TrainError(f"--init-weights: {e}") from e
    if meta["arch"] != cfg.arch:
        raise TrainError(f"--init-weights holds a {meta['arch']!r} model, but arch={cfg.arch!r}")
    try:
        model.load_state_dict(src.state_dict())
    except RuntimeError as e:
        raise TrainError(f"--init-weights does not fit the model built from the options: {e}") from e
    return meta


def _train_folders(cfg: TrainConfig) -> list[Path]:
    names = list(cfg.train_folders) if cfg.train_folders else list(DEFAULT_TRAIN_FOLDERS)
    folders = [resolve_folder(f) for f in names]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        hint = (" (the default is the 291-image set T91 + BSD200 in ../shared/data beside the repository;"
                " pass --train-folders to use other folders)") if not cfg.train_folders else ""
        raise TrainError(f"training data folder(s) not found: {', '.join(missing)}{hint}")
    return folders


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one training run; returns a summary dict (rank 0's view)."""
    check_config(cfg)
    device = pick_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    dist = D.init_distributed(device.type)
    try:
        return _train(cfg, device, dist)
    finally:
        D.shutdown(dist)


def _train(cfg: TrainConfig, device: torch.device, dist: D.DistInfo) -> dict[str, Any]:
    from .data import PatchDataset

    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    out = Path(cfg.out_dir)
    ckpt_path = out / CHECKPOINT_NAME
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists() and not cfg.resume:
            raise TrainError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out-dir")
        for stale in out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a kill -9 during a write
            stale.unlink()
    D.barrier(dist)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = build_run_model(cfg).to(device)
    init_meta = _load_init_weights(cfg, model) if cfg.init_weights else None

    folders = _train_folders(cfg)
    dataset = PatchDataset([str(f) for f in folders], scales=tuple(cfg.scales), patch_size=cfg.patch_size,
                           augment=True, seed=cfg.seed, stride=cfg.patch_stride)
    global_batch = cfg.batch_size * dist.world_size
    epoch_iters = cfg.epoch_iters or math.ceil(len(dataset) / global_batch)
    total = cfg.iters or cfg.epochs * epoch_iters
    milestones = sorted({max(1, round(f * total)) for f in cfg.lr_milestones})
    val_every = cfg.val_every or epoch_iters

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                           weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.lr_gamma)
    adt = amp_dtype(cfg.amp, device)  # igc_conv follows autocast itself (ops/functional.py)
    scaler = torch.amp.GradScaler(device.type, enabled=adt == torch.float16)

    start_step, wall_before, history = 0, 0.0, []
    if cfg.resume and ckpt_path.exists():
        try:
            state = load_checkpoint(ckpt_path, map_location="cpu")
        except CheckpointError as e:
            raise TrainError(str(e)) from e
        if state["arch"] != cfg.arch:
            raise TrainError(f"{ckpt_path} is a {state['arch']!r} run, but arch={cfg.arch!r}")
        step0 = int(state["step"])
        if state["total_iters"] != total:
            # A new budget is allowed while every iteration done so far had the same learning rate
            # under both schedules (typically: before the first step): then the runs are the same.
            old_ms = sorted(Counter(state["scheduler"]["milestones"]).elements())
            if [m for m in old_ms if m < step0] != [m for m in milestones if m < step0]:
                raise TrainError(
                    f"{ckpt_path} has a budget of {state['total_iters']} iterations, this configuration "
                    f"{total}; the budget can change on resume only while the learning-rate steps done so "
                    f"far agree (the checkpoint is at step {step0}, old steps {old_ms}, new {milestones})")
            if dist.is_main:
                print(f"train: budget changed from {state['total_iters']} to {total} iterations at step "
                      f"{step0}; learning-rate steps now at {milestones}", flush=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sched.milestones = Counter(milestones)
        # The lr for the next iteration under the (possibly new) schedule.
        decays = sum(m <= step0 for m in milestones)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * cfg.lr_gamma**decays
        set_rng_state(state["rng"])
        start_step, wall_before = int(state["step"]), float(state["wall_s"])
        history = list(state.get("val_history", []))

    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = StepBatchSampler(len(dataset), cfg.batch_size, seed=cfg.seed, start_step=start_step,
                               total_steps=total, rank=dist.rank, world_size=dist.world_size)
    loader = torch.utils.data.DataLoader(PassIndexed(dataset), batch_sampler=sampler,
                                         num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=False)

    scales = tuple(cfg.scales)
    log = writer = val_pairs = None
    info = {
        "config": dataclasses.asdict(cfg), "train_folders": [str(f) for f in folders],
        "train_images": len(dataset.paths), "dataset": dataset.describe(), "epoch_iters": epoch_iters,
        "total_iters": total, "lr_milestone_iters": milestones, "world_size": dist.world_size,
        "global_batch": global_batch, "device": str(device), "amp": str(adt), "torch": torch.__version__,
        "init_weights": (None if init_meta is None else
                         {"file": Path(cfg.init_weights).name, "steps": init_meta.get("steps"),
                          "total_steps": init_meta.get("total_steps", init_meta.get("steps"))}),
        "threads": torch.get_num_threads(), "igc_backends_available": _available_backends(device),
        "validation": (f"{cfg.val_folder} (held out from training; centre crop {cfg.val_crop or 'none'})"
                       if cfg.val_folder else "none"),
    }
    if dist.is_main:
        if cfg.val_folder:
            from .validation import load_val_pairs

            val_pairs = load_val_pairs(resolve_folder(cfg.val_folder), scales, cfg.val_crop)
        columns = ["step", "epoch", "lr", "loss", "iters_per_s", "patches_per_s", "wall_s"]
        columns += [f"{k}_x{s}" for s in scales for k in ("val_psnr", "bicubic_psnr")]
        log = CsvLog(out / LOG_NAME, columns, start_step if start_step > 0 else None)
        with open(out / INFO_NAME, "w") as f:
            json.dump(info, f, indent=2, default=str)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TrainError(f"--tensorboard needs the tensorboard package ({e})") from e
            writer = SummaryWriter(str(out / "tb"))
        print(f"train: {info['dataset']}", flush=True)
        print(f"train: {total} iterations = {total / epoch_iters:g} epochs of {epoch_iters} iterations "
              f"(global batch {global_batch}); lr {cfg.lr:g} x{cfg.lr_gamma:g} at iterations {milestones}; "
              f"device {device}, amp {adt}, {torch.get_num_threads()} threads, world {dist.world_size}; "
              f"validation: {info['validation']}; start at step {start_step}", flush=True)

    def validate_and_log(step: int) -> None:
        if val_pairs is None:
            return
        from .validation import validate

        res = validate(model, val_pairs, device)
        row = {"step": step, "epoch": step / epoch_iters, "lr": opt.param_groups[0]["lr"],
               "wall_s": wall_before + (time.time() - t0)}
        for s in scales:
            row[f"val_psnr_x{s}"], row[f"bicubic_psnr_x{s}"] = res[f"psnr_x{s}"], res[f"bicubic_x{s}"]
        log.write(row)
        history.append({"step": step, **res})
        msg = "  ".join(f"x{s} {res[f'psnr_x{s}']:.2f} (bicubic {res[f'bicubic_x{s}']:.2f})" for s in scales)
        print(f"\nval step {step}: PSNR {msg}", flush=True)
        if writer is not None:
            for k, v in res.items():
                writer.add_scalar(f"val/{k}", v, step)

    def save(step: int) -> None:
        if not dist.is_main:
            return
        save_checkpoint(ckpt_path, {
            "format": 1, "arch": cfg.arch, "step": step, "total_iters": total,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "wall_s": wall_before + (time.time() - t0),
            "val_history": history, "config": json.dumps(dataclasses.asdict(cfg), default=str),
        })

    t0 = time.time()
    if dist.is_main and start_step == 0:
        validate_and_log(0)

    stop = _StopFlag()
    if not dist.enabled:
        stop.install()
    loss_fn = nn.L1Loss() if cfg.loss == "l1" else nn.MSELoss()
    bar = None
    if dist.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_step, unit="it", dynamic_ncols=True,
                   mininterval=1.0 if os.isatty(2) else 30.0)
    train_model.train()
    run_loss = torch.zeros((), device=device)
    run_n, t_int, step = 0, time.time(), start_step
    try:
        for step, (inp, tgt) in enumerate(loader, start=start_step):
            inp = inp.to(device, non_blocking=True)
            tgt = tgt.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=adt or torch.float32, enabled=adt is not None):
                loss = loss_fn(train_model(inp).float(), tgt)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            run_loss += loss.detach()
            run_n += 1
            done = step + 1
            if bar is not None:
                bar.update(1)
            if done % cfg.log_every == 0 or done == total:
                mean_loss = float(run_loss) / run_n
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"training diverged at step {done}: loss {mean_loss}")
                dt = time.time() - t_int
                ips = run_n / dt
                if dist.is_main:
                    log.write({"step": done, "epoch": done / epoch_iters, "lr": opt.param_groups[0]["lr"],
                               "loss": mean_loss, "iters_per_s": ips, "patches_per_s": ips * global_batch,
                               "wall_s": wall_before + (time.time() - t0)})
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4g}", patches_s=f"{ips * global_batch:.0f}",
                                        lr=f"{opt.param_groups[0]['lr']:.0e}")
                    if writer is not None:
                        writer.add_scalar("train/loss", mean_loss, done)
                        writer.add_scalar("train/lr", opt.param_groups[0]["lr"], done)
                run_loss.zero_()
                run_n, t_int = 0, time.time()
            if done % val_every == 0 or done == total:
                if dist.is_main:
                    validate_and_log(done)
                D.barrier(dist)
            if done % cfg.ckpt_every == 0 or done % epoch_iters == 0 or done == total or stop.signal:
                save(done)
                D.barrier(dist)
            if stop.signal:
                if dist.is_main:
                    print(f"\ntrain: stopped by signal {stop.signal} at step {done}; checkpoint written, "
                          f"continue with --resume", flush=True)
                return {"step": done, "total_iters": total, "stopped": True, "checkpoint": str(ckpt_path)}
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    final_step = max(step + 1, start_step) if start_step < total else start_step
    summary = {"step": final_step, "total_iters": total, "stopped": False, "checkpoint": str(ckpt_path),
               "wall_s": wall_before + (time.time() - t0), "val": history[-1] if history else None}
    if dist.is_main:
        summary["weights"] = str(export_weights(cfg, model, info, history, final_step))
    D.barrier(dist)
    return summary


def export_weights(cfg: TrainConfig, model: nn.Module, info: dict, history: list, step: int) -> Path:
    """Write the trained weights (safetensors + JSON metadata) through the weights I/O module."""
    from .weights import save_weights

    path = Path(cfg.weights_out) if cfg.weights_out else Path(cfg.out_dir) / WEIGHTS_NAME
    last = history[-1] if history else {}
    meta = {
        "arch": cfg.arch,
        "scales": list(cfg.scales),
        "channels": getattr(model, "channels", cfg.channels),
        "depth": cfg.depth,
        "primary_groups": cfg.primary_groups,
        "training_data": [Path(f).name for f in info["train_folders"]],
        "training_images": info["train_images"],
        "steps": step,
        # Iterations including those of the weights this run started from (--init-weights).
        "total_steps": step + ((info.get("init_weights") or {}).get("total_steps") or 0),
        "init_weights": info.get("init_weights"),
        "global_batch": info["global_batch"],
        "patch_size": cfg.patch_size,
        "recipe": (f"{cfg.loss.upper()} loss, Adam{tuple(cfg.betas)} eps {cfg.eps:g}, lr {cfg.lr:g} "
                   f"x{cfg.lr_gamma:g} at iterations {info['lr_milestone_iters']}"),
        "validation": info["validation"],
        "psnr": {f"val_{k}": round(v, 3) for k, v in last.items() if k != "step"},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        **cfg.extra_metadata,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, meta)
    return path


def export_checkpoint(cfg: TrainConfig) -> Path:
    """Write weights from ``<out_dir>/checkpoint.ckpt`` (e.g. of a run stopped early, or to
    evaluate a run while it trains), with the same metadata as at the end of training."""
    check_config(cfg)
    ckpt_path = Path(cfg.out_dir) / CHECKPOINT_NAME
    try:
        state = load_checkpoint(ckpt_path)
    except CheckpointError as e:
        raise TrainError(str(e)) from e
    if state["arch"] != cfg.arch:
        raise TrainError(f"{ckpt_path} is a {state['arch']!r} run, but arch={cfg.arch!r}")
    model = build_run_model(cfg)
    model.load_state_dict(state["model"])
    info_path = Path(cfg.out_dir) / INFO_NAME
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrainError(f"cannot read the run description {info_path}: {e}") from e
    return export_weights(cfg, model, info, list(state.get("val_history", [])), int(state["step"]))
