"""Tests for course_lib.train: fit, checkpoints and exact resume, to_device, evaluate_detection.

Oracles: a hand-written training loop (fit must do exactly the same steps), a run of 3 epochs
versus 2 epochs + resume, gradient norms read by an optimizer hook, and metrics.coco_evaluate
on hand-built predictions (a fake detector that returns the targets gets AP 1.0).
"""

import collections
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from course_lib import train
from course_lib.device import seed_everything
from course_lib.metrics import coco_evaluate
from course_lib.train import (
    History,
    evaluate_detection,
    fit,
    load_checkpoint,
    save_checkpoint,
    to_device,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# ------------------------------------------------------------------ tiny problems


def regression_loader(n=64, batch_size=8, shuffle=True):
    """y = x . w + noise, x in R^4."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return DataLoader(TensorDataset(x, y[:, None]), batch_size=batch_size, shuffle=shuffle)


def mse_losses(model, batch):
    x, y = batch
    return {"mse": F.mse_loss(model(x), y)}


class TwoHeads(nn.Module):
    """Classification + regression heads on a shared body with dropout (which draws random
    numbers, so exact resume needs the RNG states)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2))
        self.cls = nn.Linear(16, 3)
        self.reg = nn.Linear(16, 1)

    def forward(self, x):
        h = self.body(x)
        return self.cls(h), self.reg(h)[:, 0]


class NoisyTwoHeadData(Dataset):
    """Class = argmax of x[:3], target = sum of x; each access adds Python and NumPy noise
    (an "augmentation" that uses the other two RNGs)."""

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] + 0.01 * float(np.random.randn()) + 0.01 * random.random()
        return x, self.x[i, :3].argmax(), self.x[i].sum()


def two_losses(model, batch):
    x, label, target = batch
    logits, pred = model(x)
    return {"cls": F.cross_entropy(logits, label), "reg": F.mse_loss(pred, target)}


def two_head_setup(init_seed=0, total_steps=None):
    torch.manual_seed(init_seed)
    model = TwoHeads()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = None
    if total_steps is not None:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-2,
                                                        total_steps=total_steps)
    return model, optimizer, scheduler


def same_history(a: History, b: History):
    """Equal in everything but the timings."""
    assert a.losses == b.losses
    assert a.lr == b.lr
    assert a.epoch_losses == b.epoch_losses
    assert a.evals == b.evals
    assert a.epochs_done == b.epochs_done
    assert a.stopped_early == b.stopped_early
    assert len(a.epoch_seconds) == len(b.epoch_seconds) == a.epochs_done


def same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].cpu(), sb[key].cpu()), key


# ------------------------------------------------------------------ fit


@pytest.mark.parametrize("device", DEVICES)
def test_fit_loss_decreases(device):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, regression_loader(), optimizer, mse_losses, epochs=3, device=device,
                  progress=False, seed=0)
    assert history.epoch_losses["mse"][-1] < 0.05 * history.epoch_losses["mse"][0]
    assert set(history.losses) == {"mse", "loss"}
    assert history.losses["loss"] == history.losses["mse"]  # one loss: the total is that loss
    assert len(history.losses["mse"]) == len(history.lr) == 3 * 8
    assert history.epochs_done == 3 and not history.stopped_early and history.evals == []
    assert len(history.epoch_seconds) == 3
    assert next(model.parameters()).device.type == device
    assert model.training


def test_fit_records_and_shows_every_named_loss(capsys):
    model, optimizer, _ = two_head_setup()
    loader = DataLoader(NoisyTwoHeadData(), batch_size=8, shuffle=True)
    history = fit(model, loader, optimizer, two_losses, epochs=4, device="cpu", seed=0)
    assert set(history.losses) == {"cls", "reg", "loss"}
    steps = len(history.lr)
    assert steps == 4 * 5
    for cls, reg, total in zip(*(history.losses[k] for k in ("cls", "reg", "loss")),
                               strict=True):
        assert total == pytest.approx(cls + reg, rel=1e-6)
    for name, values in history.losses.items():  # epoch means of the step values
        means = [np.mean(values[i : i + 5]) for i in range(0, steps, 5)]
        assert history.epoch_losses[name] == pytest.approx(means)
    assert history.epoch_losses["cls"][-1] < history.epoch_losses["cls"][0]
    assert history.epoch_losses["reg"][-1] < history.epoch_losses["reg"][0]
    bar = capsys.readouterr().err  # tqdm writes to stderr
    for text in ("epoch 1/4", "epoch 4/4", "cls=", "reg=", "loss=", "lr="):
        assert text in bar


def test_fit_does_what_a_hand_written_loop_does():
    # SGD + momentum, per-step StepLR, gradient clipping, shuffled data: identical weights.
    def setup():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
        return model, optimizer, scheduler

    model, optimizer, scheduler = setup()
    history = fit(model, regression_loader(), optimizer, mse_losses, epochs=2, device="cpu",
                  scheduler=scheduler, grad_clip=0.5, progress=False, seed=0)

    ref, ref_optimizer, ref_scheduler = setup()
    seed_everything(0)
    lrs = []
    for _ in range(2):
        for x, y in regression_loader():
            loss = F.mse_loss(ref(x), y)
            lrs.append(ref_optimizer.param_groups[0]["lr"])
            ref_optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            ref_optimizer.step()
            ref_scheduler.step()
    same_weights(model, ref)
    assert history.lr == lrs


def test_scheduler_is_stepped_once_per_step():
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    loader = regression_loader(n=24, batch_size=8)  # 3 steps per epoch
    history = fit(model, loader, optimizer, mse_losses, epochs=2, scheduler=scheduler,
                  device="cpu", progress=False)
    assert history.lr == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_one_cycle_with_total_steps_runs_to_the_end():
    epochs, loader = 3, regression_loader()
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1,
                                                    total_steps=epochs * len(loader))
    history = fit(model, loader, optimizer, mse_losses, epochs=epochs, scheduler=scheduler,
                  device="cpu", progress=False)
    assert len(history.lr) == epochs * len(loader)
    assert max(history.lr) == pytest.approx(0.1, rel=1e-2)
    assert history.lr[-1] < 1e-3  # annealed down at the end


def test_eval_fn_called_after_each_epoch_in_eval_mode():
    calls = []

    def eval_fn(model):
        calls.append((model.training, torch.is_grad_enabled()))
        x, y = regression_loader().dataset.tensors
        return {"val_mse": F.mse_loss(model(x), y), "epoch_call": len(calls)}

    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, regression_loader(), optimizer, mse_losses, epochs=3,
                  eval_fn=eval_fn, device="cpu", progress=False)
    assert calls == [(False, False)] * 3
    assert [e["epoch_call"] for e in history.evals] == [1.0, 2.0, 3.0]
    assert all(type(e["val_mse"]) is float for e in history.evals)  # tensor -> float
    assert history.evals[-1]["val_mse"] < history.evals[0]["val_mse"]
    assert model.training  # back in train mode


# ------------------------------------------------------------------ checkpoints and resume


def test_resume_continues_exactly(tmp_path, capsys):
    # Dropout (torch RNG), shuffling (torch RNG at each epoch start), noise in the dataset
    # (NumPy and Python RNGs), Adam state, a per-step OneCycleLR and an eval_fn.
    def eval_fn(model):
        x = torch.randn(16, 4)  # draws from the global RNG too
        return {"val_cls": F.cross_entropy(model(x)[0], x[:, :3].argmax(1))}

    def run(epochs, path, resume=False, init_seed=0):
        model, optimizer, scheduler = two_head_setup(init_seed, total_steps=3 * 5)
        loader = DataLoader(NoisyTwoHeadData(), batch_size=8, shuffle=True, num_workers=0)
        history = fit(model, loader, optimizer, two_losses, epochs=epochs, scheduler=scheduler,
                      eval_fn=eval_fn, device="cpu", checkpoint=path, resume=resume,
                      progress=False, seed=0)
        return model, history

    full_model, full_history = run(3, tmp_path / "full.pt")
    two_model, two_history = run(2, tmp_path / "part.pt")
    seed_everything(123)  # whatever happened in between must not matter
    resumed_model, resumed_history = run(3, tmp_path / "part.pt", resume=True, init_seed=5)

    same_weights(resumed_model, full_model)
    same_history(resumed_history, full_history)
    assert resumed_history.epoch_seconds[:2] == two_history.epoch_seconds  # kept from file
    assert "Resumed from" in capsys.readouterr().out
    # the third epoch really ran (and differs from the second)
    assert not torch.equal(two_model.cls.weight, full_model.cls.weight)
    # both checkpoint files now hold the same final state
    full = load_checkpoint(tmp_path / "full.pt", TwoHeads())
    part = load_checkpoint(tmp_path / "part.pt", TwoHeads())
    assert full["epoch"] == part["epoch"] == 3
    same_history(full["history"], part["history"])


def test_resume_without_a_file_starts_fresh_and_with_all_epochs_done_does_nothing(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = fit(model, regression_loader(), optimizer, mse_losses, epochs=2, device="cpu",
                checkpoint=path, resume=True, progress=False)
    assert path.exists() and first.epochs_done == 2
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    again = fit(model, regression_loader(), optimizer, mse_losses, epochs=2, device="cpu",
                checkpoint=path, resume=True, progress=False)
    same_history(again, first)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    model, optimizer, scheduler = two_head_setup(total_steps=10)
    loss = sum(two_losses(model, (torch.randn(8, 4), torch.zeros(8, dtype=torch.long),
                                  torch.zeros(8))).values())
    loss.backward()
    optimizer.step()
    scheduler.step()
    history = History(losses={"loss": [1.0, 0.5]}, lr=[0.1, 0.1], epochs_done=1,
                      epoch_losses={"loss": [0.75]}, evals=[{"AP": 0.25}], epoch_seconds=[2.0])
    save_checkpoint(path, model, optimizer, scheduler, history, epoch=1)
    after_save = (torch.rand(3), np.random.rand(), random.random())

    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert raw["epoch"] == 1 and isinstance(raw["history"], dict)
    assert set(raw["rng"]) == {"python", "numpy", "torch", "cuda"}

    new_model, new_optimizer, new_scheduler = two_head_setup(init_seed=9, total_steps=10)
    state = load_checkpoint(path, new_model, new_optimizer, new_scheduler, restore_rng=True)
    assert state["epoch"] == 1 and state["history"] == history
    same_weights(new_model, model)
    assert new_scheduler.state_dict() == scheduler.state_dict()
    assert torch.equal(new_optimizer.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])
    again = (torch.rand(3), np.random.rand(), random.random())  # RNGs back to the saved point
    assert torch.equal(again[0], after_save[0]) and again[1:] == after_save[1:]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    model = nn.Linear(4, 1)
    save_checkpoint(path, model, history=History(epochs_done=1), epoch=1)

    def crash(state, file):  # writes half a file, then the disk "fills up"
        with open(file, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(train.torch, "save", crash)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, nn.Linear(4, 1), epoch=2)
    monkeypatch.undo()
    assert load_checkpoint(path, nn.Linear(4, 1))["epoch"] == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


# ------------------------------------------------------------------ time budget, clipping, AMP


def test_max_minutes_stops_early(tmp_path, capsys):
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, regression_loader(), optimizer, mse_losses, epochs=3,
                  eval_fn=lambda m: {"x": 1.0}, max_minutes=1e-9, device="cpu",
                  checkpoint=tmp_path / "c.pt", progress=False)
    assert history.stopped_early
    assert history.epochs_done == 1
    assert len(history.losses["loss"]) == len(history.lr) == 1  # stopped after the first step
    assert history.epoch_losses["loss"] == history.losses["loss"]  # the partial epoch's mean
    assert len(history.evals) == len(history.epoch_seconds) == 1
    assert capsys.readouterr().out.count("Stopped early") == 1
    assert load_checkpoint(tmp_path / "c.pt", nn.Linear(4, 1))["history"].stopped_early


def test_grad_clip_bounds_the_gradient_norm():
    def grad_norms(grad_clip):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        norms = []  # total gradient norm seen by each optimizer.step()
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: norms.append(float(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))))
        fit(model, regression_loader(), optimizer, mse_losses, epochs=1, grad_clip=grad_clip,
            device="cpu", progress=False)
        return norms

    unclipped, clipped = grad_norms(None), grad_norms(0.05)
    assert len(clipped) == 8
    assert min(unclipped) > 0.05  # so clipping has something to do
    assert max(clipped) <= 0.05 * (1 + 1e-5)


def test_amp_forced_on_cpu_is_a_clear_error():
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="amp=True needs a CUDA device"):
        fit(model, regression_loader(), optimizer, mse_losses, epochs=1, amp=True,
            device="cpu", progress=False)
    with pytest.raises(ValueError, match="amp must be"):
        fit(model, regression_loader(), optimizer, mse_losses, epochs=1, amp="on",
            device="cpu", progress=False)


@pytest.mark.cuda
def test_amp_on_cuda_trains_with_clipping():
    # 8 epochs of 8 steps with clipped gradients; fp32 on CPU ends at 0.1x its first epoch's
    # loss. Mixed precision skips its first steps (the scaler starts too high for fp16 and
    # halves its scale; the scheduler must not count those), then trains as well as fp32.
    def run(amp: bool, device: str) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=48, gamma=0.5)
        history = fit(model, regression_loader(), optimizer, mse_losses, epochs=8, amp=amp,
                      scheduler=scheduler, grad_clip=1.0, device=device, progress=False, seed=0)
        assert all(np.isfinite(history.losses["loss"]))
        return history.epoch_losses["mse"]

    mixed, full = run(True, "cuda"), run(False, "cuda")
    assert mixed[-1] < 0.3 * mixed[0]
    assert mixed[-1] < 2 * full[-1]


# ------------------------------------------------------------------ bad input


def test_bad_arguments_are_clear_errors():
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = regression_loader()

    def call(**kwargs):
        args = dict(epochs=1, device="cpu", progress=False) | kwargs
        fit(model, args.pop("loader", loader), optimizer, mse_losses, **args)

    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        call(epochs=0)
    with pytest.raises(ValueError, match="epochs must be"):
        call(epochs=2.0)
    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1)), batch_size=4)
    with pytest.raises(ValueError, match="train_loader is empty"):
        call(loader=empty)
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        call(scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        call(resume=True)
    with pytest.raises(ValueError, match="max_minutes must be > 0"):
        call(max_minutes=0)
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        call(grad_clip=0.0)


def nan_at_step_3():
    count = [0]

    def compute_losses(model, batch):
        count[0] += 1
        loss = mse_losses(model, batch)["mse"]
        return {"good": loss, "bad": loss * (float("nan") if count[0] == 3 else 1.0)}

    return compute_losses


def changing_names():
    count = [0]

    def compute_losses(model, batch):
        count[0] += 1
        return {"a" if count[0] < 2 else "b": mse_losses(model, batch)["mse"]}

    return compute_losses


def _x(batch):
    return batch[0]


BAD_LOSSES = {
    "tensor, not a dict": (lambda: lambda m, b: mse_losses(m, b)["mse"], ValueError,
                           r"must return a non-empty dict.*got Tensor at step 1 \(epoch 1\)"),
    "empty dict": (lambda: lambda m, b: {}, ValueError, "non-empty dict"),
    "not scalar": (lambda: lambda m, b: {"box": m(_x(b)).sum(1)}, ValueError,
                   r"loss 'box' must be a scalar tensor, got shape \(8,\) at step 1"),
    "float": (lambda: lambda m, b: {"box": 0.5}, ValueError,
              "loss 'box' must be a scalar tensor, got float"),
    "'loss' among others": (lambda: lambda m, b: {"loss": m(_x(b)).sum(), "b": m(_x(b)).sum()},
                            ValueError, "the name 'loss' is kept for the total"),
    "detached": (lambda: lambda m, b: {"box": m(_x(b)).sum().detach()}, RuntimeError,
                 "does not require grad"),
    "nan at step 3": (nan_at_step_3, RuntimeError, r"loss 'bad' is nan at step 3 \(epoch 1\)"),
    "names change": (changing_names, ValueError, r"\['b'\] at step 2.*same names every step"),
}


@pytest.mark.parametrize("case", BAD_LOSSES)
def test_bad_losses_are_clear_errors(case):
    make, error, message = BAD_LOSSES[case]
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=message):
        fit(model, regression_loader(), optimizer, make(), epochs=1, device="cpu",
            progress=False)


# ------------------------------------------------------------------ to_device

Pair = collections.namedtuple("Pair", ["image", "index"])


def test_to_device_moves_every_tensor_in_nested_structures():
    t = torch.ones(2)
    batch = {"images": [t, t], "targets": ({"boxes": t, "name": "a"}, Pair(t, 3)), "n": 7}
    moved = to_device(batch, torch.device("meta"))  # a device every machine has
    assert moved["images"][0].device.type == moved["images"][1].device.type == "meta"
    assert isinstance(moved["targets"], tuple) and isinstance(moved["images"], list)
    assert moved["targets"][0]["boxes"].device.type == "meta"
    assert moved["targets"][0]["name"] == "a" and moved["n"] == 7
    assert isinstance(moved["targets"][1], Pair) and moved["targets"][1].index == 3
    assert moved["targets"][1].image.device.type == "meta"
    assert batch["images"][0].device.type == "cpu"  # the input is left alone
    assert to_device(5, "cpu") == 5


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_on_device(device):
    out = to_device([torch.arange(3), (torch.zeros(1),)], device)
    assert out[0].device.type == out[1][0].device.type == device
    assert torch.equal(out[0].cpu(), torch.arange(3))


# ------------------------------------------------------------------ evaluate_detection


def detection_data(num_images=6):
    """Images whose first pixel is their index (so a fake model can look its targets up)."""
    data = []
    for i in range(num_images):
        image = torch.zeros(3, 64, 64)
        image[0, 0, 0] = i
        boxes = torch.tensor([[4.0, 4, 20, 30], [30, 10, 60, 60], [8, 40, 24, 56]])[: 1 + i % 3]
        labels = torch.tensor([1, 2, 1])[: len(boxes)]
        data.append((image, {"boxes": boxes + i, "labels": labels, "image_id": i}))
    return data


def collate(batch):
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class FakeDetector(nn.Module):
    """Returns given predictions for each image (looked up by the image's first pixel)."""

    def __init__(self, predictions):
        super().__init__()
        self.predictions = predictions
        self.dummy = nn.Parameter(torch.zeros(1))  # so that .to(device) has something to move
        self.calls = []

    def forward(self, images):
        self.calls.append((self.training, torch.is_grad_enabled()))
        out = []
        for image in images:
            pred = self.predictions[int(image[0, 0, 0])]
            out.append({k: v.to(image.device) for k, v in pred.items()})
        return out


def oracle_predictions(data, score=1.0):
    return [{"boxes": t["boxes"], "labels": t["labels"],
             "scores": torch.full((len(t["boxes"]),), float(score))} for _, t in data]


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_detection_oracle_gets_ap_one(device):
    data = detection_data()
    model = FakeDetector(oracle_predictions(data))
    stats = evaluate_detection(model, DataLoader(data, batch_size=4, collate_fn=collate),
                               device=device)
    assert len(stats) == 12
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert model.calls == [(False, False)] * 2  # eval mode, no_grad, 2 batches
    assert model.training  # put back in train mode


def test_evaluate_detection_nothing_detected_gets_zero():
    data = detection_data()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0)}
    model = FakeDetector([empty] * len(data)).eval()
    stats = evaluate_detection(model, DataLoader(data, batch_size=4, collate_fn=collate),
                               device="cpu")
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0
    assert not model.training  # was in eval mode, stays there


def test_evaluate_detection_score_threshold_equals_coco_evaluate_on_kept_boxes():
    data = detection_data()
    preds = oracle_predictions(data)
    for i, pred in enumerate(preds):  # every other image: low-score detections, one exactly 0.5
        if i % 2:
            pred["scores"] = torch.linspace(0.5, 0.1, len(pred["scores"]))
        pred["boxes"] = pred["boxes"] + torch.tensor([0.0, 0, 3, 0])  # not perfect boxes
    targets = [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in data]
    loader = DataLoader(data, batch_size=4, collate_fn=collate)
    model = FakeDetector(preds)

    assert evaluate_detection(model, loader, device="cpu") == coco_evaluate(targets, preds)
    kept = [{k: v[p["scores"] >= 0.5] for k, v in p.items()} for p in preds]
    assert sum(len(p["scores"]) for p in kept) < sum(len(p["scores"]) for p in preds)
    at_half = evaluate_detection(model, loader, device="cpu", score_threshold=0.5)
    assert at_half == coco_evaluate(targets, kept)
    assert at_half["AR100"] < 1.0


def test_evaluate_detection_bad_input():
    data = detection_data()
    loader = DataLoader(data, batch_size=4, collate_fn=collate)
    with pytest.raises(ValueError, match="returned 1 predictions for a batch of 4"):
        evaluate_detection(lambda_model(lambda images: [{}]), loader, device="cpu")
    with pytest.raises(ValueError, match="loader is empty"):
        evaluate_detection(FakeDetector([]), [], device="cpu")


def lambda_model(function):
    class Wrapped(nn.Module):
        def forward(self, images):
            return function(images)

    return Wrapped()
