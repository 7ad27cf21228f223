"""The one small training engine every model lesson uses: ``fit``, checkpoints, evaluation.

A lesson writes two things and hands them to :func:`fit`:

* ``compute_losses(model, batch) -> {"name": scalar Tensor, ...}``: the named losses of one
  batch (already on the device). Their sum is minimised; every named loss and the total
  (``"loss"``) are shown in the progress bar and recorded in the :class:`History`.
* optionally ``eval_fn(model) -> {"metric": float, ...}``, called after each epoch with the
  model in eval mode under ``torch.no_grad()``.

One optimisation step, as in every PyTorch tutorial::

    losses = compute_losses(model, batch); total = sum(losses.values())
    optimizer.zero_grad(); total.backward()
    clip_grad_norm_(model.parameters(), grad_clip)     # only if grad_clip is given
    optimizer.step(); scheduler.step()                 # only if a scheduler is given

Scheduler convention: ``scheduler.step()`` is called once per OPTIMISATION STEP (batch), never
per epoch. Give schedulers their length in steps::

    steps = epochs * len(train_loader)
    OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    CosineAnnealingLR(optimizer, T_max=steps)
    StepLR(optimizer, step_size=10 * len(train_loader))   # "divide the lr every 10 epochs"

Mixed precision (``amp``) runs only on CUDA: ``torch.autocast("cuda")`` for the forward pass
and a ``torch.amp.GradScaler`` for the backward pass.

Checkpoints are written at the end of every epoch and hold everything needed to continue
exactly where training stopped: weights, optimizer, scheduler and scaler states, the history
and the random number generator (RNG) states. A run of 3 epochs and a run of 2 epochs resumed
for a third give the same weights and the same history (the timings aside).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from course_lib.device import get_device, seed_everything
from course_lib.metrics import coco_evaluate

__all__ = ["History", "evaluate_detection", "fit", "get_device", "load_checkpoint",
           "save_checkpoint", "seed_everything", "to_device"]


@dataclass
class History:
    """What :func:`fit` records (``viz.plot_history`` draws it).

    Attributes:
        losses: per optimisation step, each named loss and ``"loss"`` (their sum).
        lr: per step, the learning rate of the first parameter group used for that step.
        epoch_losses: per epoch, the mean of each entry of ``losses`` over the epoch.
        evals: per epoch, the dict returned by ``eval_fn`` (empty without ``eval_fn``).
        epoch_seconds: per epoch, wall time including evaluation.
        epochs_done: epochs finished, counting an epoch cut short by ``max_minutes``.
        stopped_early: True when ``max_minutes`` ran out before the last epoch ended.
    """

    losses: dict[str, list[float]] = field(default_factory=dict)
    lr: list[float] = field(default_factory=list)
    epoch_losses: dict[str, list[float]] = field(default_factory=dict)
    evals: list[dict[str, float]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    epochs_done: int = 0
    stopped_early: bool = False


def to_device(obj, device):
    """Move every tensor inside nested dicts, lists and tuples to ``device``.

    Args:
        obj: a tensor, or a dict/list/tuple of them (nested to any depth); anything else
            (ints, strings, ...) is returned as it is.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.

    Returns:
        The same structure with the tensors on ``device`` (dicts come back as plain dicts;
        lists, tuples and namedtuples keep their type).
    """
    device = get_device(device)
    if isinstance(obj, torch.Tensor):
        # non_blocking overlaps host-to-GPU copies with compute; never for copies to the CPU
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(to_device(value, device) for value in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def fit(model, train_loader, optimizer, compute_losses, *, epochs, scheduler=None, eval_fn=None,
        device="auto", grad_clip=None, amp="auto", max_minutes=None, checkpoint=None,
        resume=False, progress=True, seed=None) -> History:
    """Train ``model`` for ``epochs`` epochs over ``train_loader``; see the module docstring.

    Args:
        model (nn.Module): moved to ``device``; left in train mode.
        train_loader: an iterable of batches (usually a ``DataLoader``).
        optimizer: a ``torch.optim`` optimizer over the model's parameters.
        compute_losses: ``(model, batch) -> dict[str, Tensor]`` of scalar losses.
        epochs (int): total number of epochs (counting those done before a resume).
        scheduler: an lr scheduler, stepped once per optimisation step (not per epoch).
        eval_fn: ``(model) -> dict[str, float]``, called after each epoch in eval mode.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` ...
        grad_clip (float): clip the gradient norm (all parameters together) to this value.
        amp: mixed precision: ``"auto"`` (on for CUDA, off for CPU), True or False.
        max_minutes (float): stop after the step that exceeds this time budget.
        checkpoint (str or Path): file written at the end of every epoch.
        resume (bool): continue from ``checkpoint`` if the file exists (else start fresh)
            with the epoch after the saved one; the history goes on from the saved one. An
            epoch cut short by ``max_minutes`` counts as done (it is not run again).
        progress (bool): show a progress bar per epoch.
        seed (int): if given, ``seed_everything(seed)`` first (data order, dropout...). Seed
            before building the model to make its initial weights repeatable too.

    Returns:
        History: losses per step and per epoch, learning rates, evaluations, timings.

    Raises:
        ValueError: bad arguments, an empty loader, losses that are not a dict of scalar
            tensors; RuntimeError: a NaN/inf loss (the message names the loss and the step).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if _num_batches(train_loader) == 0:
        raise ValueError("train_loader is empty: it has no batches to train on")
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError("fit steps the scheduler once per step without a metric, which "
                         "ReduceLROnPlateau needs: call its step(metric) inside your eval_fn")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be > 0 (or None), got {max_minutes!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 (or None), got {grad_clip!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path to resume from")
    if seed is not None:
        seed_everything(seed)
    device = get_device(device)
    use_amp = _use_amp(amp, device)
    model.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)  # disabled: a no-op pass-through

    history, first_epoch = History(), 1
    if resume and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler=scaler,
                                restore_rng=True)
        history, first_epoch = state["history"], state["epoch"] + 1
        history.stopped_early = False
        print(f"Resumed from {checkpoint}: {state['epoch']} epoch(s) done out of {epochs}.")

    start = time.perf_counter()
    step = len(history.lr)  # optimisation steps done so far (1-based in messages)
    smooth = {}  # exponential moving average of each loss, for the progress bar
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        epoch_values = {}  # name -> this epoch's values
        bar = tqdm(total=_num_batches(train_loader), desc=f"epoch {epoch}/{epochs}",
                   disable=not progress)
        for batch in train_loader:
            step += 1
            batch = to_device(batch, device)
            with torch.autocast(device.type, enabled=use_amp):
                losses = compute_losses(model, batch)
            total, values = _check_losses(losses, step, epoch, history)  # Tensor, name -> float
            lr = optimizer.param_groups[0]["lr"]

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scale = scaler.get_scale()
            scaler.step(optimizer)  # optimizer.step(), skipped by AMP if a gradient is inf/NaN
            scaler.update()  # ... in which case the scale goes down
            if scheduler is not None and scaler.get_scale() >= scale:
                scheduler.step()

            for name, value in values.items():
                history.losses.setdefault(name, []).append(value)
                epoch_values.setdefault(name, []).append(value)
                smooth[name] = value if name not in smooth else 0.9 * smooth[name] + 0.1 * value
            history.lr.append(lr)
            bar.set_postfix(_format(smooth) | {"lr": f"{lr:.2e}"}, refresh=False)
            bar.update()
            if max_minutes is not None and time.perf_counter() - start > 60 * max_minutes:
                history.stopped_early = True
                break
        if not epoch_values:
            raise ValueError(f"train_loader yielded no batches in epoch {epoch}")

        for name, seen in epoch_values.items():
            history.epoch_losses.setdefault(name, []).append(sum(seen) / len(seen))
        if eval_fn is not None:
            history.evals.append(_run_eval(model, eval_fn, epoch))
            bar.set_postfix(_format(smooth) | _format(history.evals[-1]), refresh=False)
        bar.close()
        history.epoch_seconds.append(time.perf_counter() - epoch_start)
        history.epochs_done = epoch
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, history, epoch, scaler=scaler)
        if history.stopped_early:
            print(f"Stopped early: max_minutes={max_minutes} ran out in epoch {epoch}/{epochs} "
                  f"after {len(epoch_values['loss'])} of its steps (recorded in the history).")
            break
    return history


def _num_batches(loader) -> int | None:
    """``len(loader)``, or None for an iterable without a length."""
    try:
        return len(loader)
    except TypeError:
        return None


def _use_amp(amp, device: torch.device) -> bool:
    """Resolve ``amp="auto"|True|False`` for ``device``."""
    if amp == "auto":
        return device.type == "cuda"
    if amp is True and device.type != "cuda":
        raise ValueError(f"amp=True needs a CUDA device, but this run is on {device}: "
                         "use amp='auto' (mixed precision on CUDA only) or amp=False")
    if amp not in (True, False):
        raise ValueError(f"amp must be 'auto', True or False, got {amp!r}")
    return amp


def _check_losses(losses, step: int, epoch: int, history: History):
    """Check what ``compute_losses`` returned.

    Returns:
        total (Tensor): the sum of the losses, to minimise; values (dict[str, float]): each
        loss and ``"loss"`` (the total) as floats.
    """
    where = f"at step {step} (epoch {epoch})"
    if not isinstance(losses, dict) or not losses:
        raise ValueError(f"compute_losses must return a non-empty dict of named losses, got "
                         f"{type(losses).__name__} {where}; e.g. return {{'loss': loss}}")
    if "loss" in losses and len(losses) > 1:
        raise ValueError(f"compute_losses returned {list(losses)} {where}: the name 'loss' is "
                         "kept for the total, give the other losses other names")
    for name, loss in losses.items():
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = (f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                   else type(loss).__name__)
            raise ValueError(f"loss {name!r} must be a scalar tensor, got {got} {where} "
                             "(forgot .mean()? or called .item()?)")
    total = sum(losses.values())
    values = {name: loss.item() for name, loss in losses.items()} | {"loss": total.item()}
    if history.losses and set(values) != set(history.losses):
        raise ValueError(f"compute_losses returned {list(losses)} {where}, other names than "
                         f"before ({list(history.losses)}): return the same names every step")
    for name, value in values.items():
        if not math.isfinite(value):
            raise RuntimeError(f"loss {name!r} is {value} {where}: training diverged (try a "
                               "lower learning rate or grad_clip) or the data has a bad sample")
    if not total.requires_grad:
        raise RuntimeError(f"the total loss {where} does not require grad: compute the losses "
                           "from the model's outputs, without .detach() or torch.no_grad()")
    return total, values


def _run_eval(model, eval_fn, epoch: int) -> dict[str, float]:
    """Call ``eval_fn(model)`` in eval mode under no_grad; check and return its dict."""
    model.eval()
    with torch.no_grad():
        results = eval_fn(model)
    model.train()
    if not isinstance(results, dict):
        raise ValueError(f"eval_fn must return a dict[str, float], got "
                         f"{type(results).__name__} after epoch {epoch}")
    return {str(name): float(value) for name, value in results.items()}


def _format(values: dict[str, float]) -> dict[str, str]:
    """Short strings for the progress bar: 4 significant digits."""
    return {name: f"{value:.4g}" for name, value in values.items()}


# ============================================================ checkpoints


def save_checkpoint(path, model, optimizer=None, scheduler=None, history=None, epoch=0, *,
                    scaler=None, save_rng=True) -> None:
    """Write a training checkpoint to ``path`` atomically (temp file, then ``os.replace``).

    A crash while writing leaves the previous checkpoint intact. The file holds only tensors
    and plain Python containers (the history as a dict), so :func:`load_checkpoint` can read
    it with ``torch.load(weights_only=True)``, which never runs code from the file.

    Args:
        path (str or Path): the checkpoint file (its folder is created if needed).
        model (nn.Module): its ``state_dict()`` is saved.
        optimizer: its ``state_dict()`` is saved when given (the same for the next two).
        scheduler: the lr scheduler.
        scaler: the AMP ``GradScaler``.
        history (History): saved as a dict.
        epoch (int): the number of epochs done.
        save_rng (bool): also save the Python, NumPy, torch and CUDA RNG states.
    """
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": asdict(history) if history is not None else None,
        "rng": _rng_state() if save_rng else None,
    }
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, model, optimizer=None, scheduler=None, *, scaler=None,
                    restore_rng=False, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into the given objects.

    Args:
        path (str or Path): the checkpoint file.
        model (nn.Module): receives the saved weights (move it to its device first).
        optimizer: receives its saved state when given (the same for the next two).
        scheduler: the lr scheduler.
        scaler: the AMP ``GradScaler``.
        restore_rng (bool): also restore the RNG states (``fit`` does, to resume exactly).
        map_location: where the tensors are loaded first (``load_state_dict`` then copies
            them to the model's device).

    Returns:
        dict: ``{"epoch": int, "history": History or None}``.
    """
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:  # {} from a disabled scaler (CPU run)
        scaler.load_state_dict(state["scaler"])
    if restore_rng and state["rng"] is not None:
        _set_rng_state(state["rng"])
    history = History(**state["history"]) if state["history"] is not None else None
    return {"epoch": state["epoch"], "history": history}


def _rng_state() -> dict:
    """Every RNG state that shuffling, augmentation and dropout draw from, in plain types."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(rng: dict) -> None:
    """Restore the states saved by :func:`_rng_state`."""
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])


# ============================================================ evaluation


def evaluate_detection(model, loader, device="auto", score_threshold=0.0, *,
                       progress=False) -> dict[str, float]:
    """The 12 COCO box numbers (AP, AP50, ..., ARl) of a detector over a whole loader.

    Works with any torchvision-style detector: in eval mode, ``model(list of Tensor[3, H, W])``
    returns one dict per image with ``"boxes"`` (Tensor[D, 4] xyxy), ``"scores"`` (Tensor[D])
    and ``"labels"`` (Tensor[D] int64).

    Args:
        model (nn.Module): the detector; moved to ``device``, run in eval mode under
            ``torch.no_grad()``, then put back in the mode it was in.
        loader: yields ``(images, targets)`` as ``detection_collate`` makes them: a list of
            Tensor[3, H, W] and a list of dicts with ``"boxes"`` (Tensor[G, 4]), ``"labels"``
            (Tensor[G]) and optionally ``"iscrowd"``, ``"area"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        score_threshold (float): detections with a lower score are dropped (>= is kept).
        progress (bool): show a progress bar.

    Returns:
        dict: ``metrics.coco_evaluate``'s 12 numbers (-1.0 where undefined).
    """
    device = get_device(device)
    model.to(device)
    was_training = model.training
    model.eval()
    targets, preds = [], []
    try:
        with torch.no_grad():
            for images, batch_targets in tqdm(loader, desc="evaluate", disable=not progress):
                outputs = model(to_device(list(images), device))
                if len(outputs) != len(batch_targets):
                    raise ValueError(f"the model returned {len(outputs)} predictions for a "
                                     f"batch of {len(batch_targets)} images")
                for output, target in zip(outputs, batch_targets, strict=True):
                    keep = output["scores"] >= score_threshold  # (D,) bool
                    preds.append({key: output[key][keep].cpu()
                                  for key in ("boxes", "scores", "labels")})
                    targets.append({key: value.cpu() for key, value in target.items()
                                    if key in ("boxes", "labels", "iscrowd", "area")})
    finally:
        model.train(was_training)
    if not targets:
        raise ValueError("loader is empty: there is nothing to evaluate")
    return coco_evaluate(targets, preds)
