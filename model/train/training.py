"""The training loop: fit on train windows, keep the epoch that scores best on validation."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from model.config import ExperimentConfig, TrainConfig
from model.data.datasets import WindowSet
from model.net.checkpoint import load_checkpoint
from model.net.network import ResidualBiLSTM
from model.train import distributed
from model.train.metrics import summarise


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    val_accuracy: float
    val_f1: float
    seconds: float
    lr: float


@dataclass
class FitResult:
    model: ResidualBiLSTM  # with the weights of the best validation epoch
    best_epoch: int
    best_val: dict
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0


@torch.inference_mode()
def predict_proba(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (N, K) for windows (N, T, F), the model in eval mode."""
    was_training = model.training
    model.eval()
    x = torch.as_tensor(x, dtype=torch.float32)
    device = next(model.parameters()).device
    out = [
        torch.softmax(model(x[i : i + batch_size].to(device)), dim=-1).cpu()
        for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    if not out:
        return np.zeros((0, model.config.n_classes), np.float32)
    return torch.cat(out).numpy()


def evaluate(
    model: nn.Module, windows: WindowSet, classes: tuple[str, ...], null_class: int | None = None
) -> dict:
    predictions = predict_proba(model, windows.x).argmax(axis=1)
    return summarise(windows.y, predictions, classes, null_class)


def xyz_groups(features: tuple[str, ...]) -> list[list[int]]:
    """Indices of the (x, y, z) triples among the feature names: the vectors a rotation turns."""
    groups = []
    for i, name in enumerate(features):
        if name.endswith("_x") and i + 2 < len(features):
            stem = name[:-2]
            if features[i + 1] == stem + "_y" and features[i + 2] == stem + "_z":
                groups.append([i, i + 1, i + 2])
    return groups


def random_rotations(n: int, max_deg: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) rotations about random axes by angles uniform in ±max_deg."""
    axis = torch.randn(n, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_deg)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return torch.eye(3) + s * k + (1 - c) * (k @ k)  # Rodrigues


def augment(
    x: torch.Tensor, config: ExperimentConfig, groups: list[list[int]], generator: torch.Generator
) -> torch.Tensor:
    """Physically plausible variation: the device sits a little differently, gains differ."""
    t = config.train
    if t.augment_rotate_deg > 0 and groups:
        rotation = random_rotations(len(x), t.augment_rotate_deg, generator)
        x = x.clone()
        for g in groups:
            x[:, :, g] = torch.einsum("bij,btj->bti", rotation, x[:, :, g])
    if t.augment_scale > 0:
        gain = 1 + (torch.rand(len(x), 1, x.shape[2], generator=generator) * 2 - 1) * t.augment_scale
        x = x * gain
    return x


class RecipeError(ValueError):
    """A training setting that cannot work with these windows: one line, before any training."""


class NonFiniteError(ValueError):
    """Training met a NaN or an infinity (in its windows' normalisation, or in its loss): one line,
    and nothing is saved, since a NaN model would be refused by every live command anyway."""


def normalisation(x: torch.Tensor, features: tuple[str, ...],
                  feature_std: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Each feature's mean and spread (over ``feature_std``) across the training windows ``x``
    (N, T, F); :class:`NonFiniteError` naming the first feature where either is not finite."""
    flat = x.reshape(-1, x.shape[2]).double()
    mean, std = flat.mean(0).float(), flat.std(0).float() / feature_std
    finite = torch.isfinite(mean) & torch.isfinite(std)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        name = features[i] if i < len(features) else f"feature {i}"
        raise NonFiniteError(f"the training windows' {name} has mean {float(mean[i])} and spread "
                             f"{float(std[i])}: they hold non-finite values; nothing trained")  # fmt: skip
    return mean, std


class Teachers:
    """Trained networks whose averaged, softened predictions a network is distilled towards."""

    def __init__(self, config: ExperimentConfig, device: str) -> None:
        t = config.train
        self.networks = []
        for path in t.teachers:
            try:
                checkpoint = load_checkpoint(path)
            except (OSError, ValueError) as error:  # CheckpointError (a ValueError) names the file
                raise RecipeError(f"train.teachers: {error}") from None
            meta = checkpoint.meta
            if (meta.classes, meta.window, meta.preprocessing.features) != (
                config.classes, config.data.window, config.preprocessing.features
            ):
                raise RecipeError(f"teacher {path}: its classes, window or features are not this config's")
            self.networks.append(checkpoint.model.to(device).eval())
        self.temperature = t.distill_temperature

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_classes) probabilities at the distillation temperature, averaged over teachers."""
        return torch.stack([torch.softmax(n(x) / self.temperature, 1) for n in self.networks]).mean(0)


def distillation_loss(logits: torch.Tensor, taught: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teachers ‖ network) at temperature T (Hinton et al. 2015: T² keeps the gradients'
    scale independent of T)."""
    log_p = torch.log_softmax(logits / temperature, 1)
    return nn.functional.kl_div(log_p, taught, reduction="batchmean") * temperature**2


def check_recipe(t: TrainConfig, val: WindowSet) -> None:
    """The training settings that only fit() reads, checked before any work is done."""
    if t.optimizer not in ("adam", "adamw"):
        raise RecipeError(f"unknown optimizer {t.optimizer!r} (adam | adamw)")
    if t.schedule not in ("constant", "onecycle", "cosine"):
        raise RecipeError(f"unknown schedule {t.schedule!r} (constant | onecycle | cosine)")
    if t.keep not in ("best", "last"):
        raise RecipeError(f"unknown train.keep {t.keep!r} (best | last)")
    if t.teachers and not (0 <= t.distill_weight <= 1 and t.distill_temperature > 0):
        raise RecipeError("train.distill_weight must lie in [0, 1] and train.distill_temperature be > 0")
    if t.keep == "best" and not len(val):
        raise RecipeError(
            'no validation windows to pick an epoch with: name val subjects or set train.keep="last"'
        )


def make_optimizer(model: ResidualBiLSTM, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "adamw":  # decoupled decay on the weights only (the seed's L2 is the loss's: fit)
        decay = model.weight_parameters()
        ids = {id(p) for p in decay}
        no_decay = [p for p in model.parameters() if id(p) not in ids]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.l2}, {"params": no_decay, "weight_decay": 0.0}], lr=t.lr
        )
    return torch.optim.Adam(model.parameters(), lr=t.lr)


def make_schedule(optimizer: torch.optim.Optimizer, t: TrainConfig, total_steps: int) -> LRScheduler:
    """The learning rate over ``total_steps`` optimiser steps (one per batch)."""
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.lr, total_steps=total_steps)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@dataclass
class Kept:
    """The epoch to keep (train.keep): the best validation score so far, or simply the latest."""

    keep: str
    select_on: str
    score: float = -math.inf
    epoch: int = 0
    val: dict = field(default_factory=dict)
    state: dict | None = None

    def offer(self, epoch: int, val: dict, model: nn.Module) -> None:
        score = epoch if self.keep == "last" else val[self.select_on]
        if score > self.score:  # strictly better: ties keep the earlier epoch
            self.score, self.epoch, self.val = score, epoch, val
            self.state = copy.deepcopy(model.state_dict())


def _per_rank(config: ExperimentConfig, train: WindowSet, classes: tuple[str, ...]) -> int:
    """The batch each rank steps through, once the windows are known to fit the config's network."""
    network = config.model  # its sizes are derived from the config's preprocessing and dataset
    if (train.x.shape[2], len(classes)) != (network.n_inputs, network.n_classes):
        raise RecipeError(f"windows of {train.x.shape[2]} features and {len(classes)} classes, but "
                         f"the config's network reads {network.n_inputs} and tells {network.n_classes}")
    batch, world_size = config.train.batch_size, distributed.world()[1]
    if batch // world_size < 1:
        raise RecipeError(f"train.batch_size {batch} is smaller than the {world_size} processes")
    return batch // world_size


@dataclass
class _Trainer:
    """What a fit sets up once and every epoch steps with."""

    config: ExperimentConfig
    model: ResidualBiLSTM
    net: nn.Module  # DDP under torchrun, else the model itself
    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator  # the shuffled order: the same on every rank
    augment_generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    teachers: Teachers | None
    groups: list[list[int]]
    per_rank: int
    device: str

    @classmethod
    def build(cls, config: ExperimentConfig, train: WindowSet, features: tuple[str, ...], per_rank: int,
              device: str) -> _Trainer:  # fmt: skip
        t = config.train
        rank, world_size = distributed.world()
        # The order of what draws random numbers below is what makes a seed reproduce a run exactly.
        torch.manual_seed(t.seed)
        generator = torch.Generator().manual_seed(t.seed)
        # One process draws the order and the augmentation from one generator, as it always has;
        # ranks need the order in step but their own augmentation and dropout draws.
        augment_generator = generator
        if t.threads:
            torch.set_num_threads(t.threads)
        model = ResidualBiLSTM(config.model)
        x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
        model.set_normalisation(*normalisation(x, features, t.feature_std))
        model.to(device)
        net = distributed.wrap(model, device)
        if world_size > 1:
            torch.manual_seed(t.seed + 1_000_003 * rank)  # dropout: replicas start equal (DDP), draw apart
            augment_generator = torch.Generator().manual_seed(t.seed + 1_000_003 * (rank + 1))
        optimizer = make_optimizer(model, t)
        shard = distributed.shard(torch.arange(len(train)), rank, world_size)
        steps_per_epoch = math.ceil(len(shard) / per_rank)
        scheduler = make_schedule(optimizer, t, steps_per_epoch * t.epochs)
        teachers = Teachers(config, device) if t.teachers else None
        return cls(config, model, net, x, y, generator, augment_generator, optimizer, scheduler, teachers,
                   xyz_groups(features), per_rank, device)  # fmt: skip

    def epoch(self) -> tuple[float, int]:
        """One pass over this rank's shard of the shuffled windows: the summed loss, the windows seen."""
        t = self.config.train
        loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        weights = self.model.weight_parameters()
        rank, world_size = distributed.world()
        self.net.train()
        order = torch.randperm(len(self.y), generator=self.generator)  # the same on every rank
        mine = distributed.shard(order, rank, world_size)
        total_loss = 0.0
        for i in range(0, len(mine), self.per_rank):
            index = mine[i : i + self.per_rank]
            xb = augment(self.x[index], self.config, self.groups, self.augment_generator).to(self.device)
            yb = self.y[index].to(self.device)
            logits = self.net(xb)
            loss = loss_fn(logits, yb)
            if self.teachers is not None:
                w, taught = t.distill_weight, self.teachers(xb)
                loss = (1 - w) * loss + w * distillation_loss(logits, taught, t.distill_temperature)
            total_loss += loss.item() * len(index)
            if t.optimizer == "adam" and t.l2 > 0:  # the seed's L2 term: l2 * Σ w² / 2
                loss = loss + t.l2 * sum((w**2).sum() for w in weights) / 2
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks here
            nn.utils.clip_grad_norm_(self.model.parameters(), t.clip)
            self.optimizer.step()
            self.scheduler.step()
        return total_loss, len(mine)


def fit(
    config: ExperimentConfig,
    train: WindowSet,
    val: WindowSet,
    classes: tuple[str, ...],
    features: tuple[str, ...],
    on_epoch: Callable[[EpochRecord], None] | None = None,
    device: str = "cpu",
) -> FitResult:
    """Train; data-parallel when a process group is initialised (see model/train/distributed.py).

    Under DDP every rank runs this with the same arguments: the shuffled order comes from the
    shared seed, each rank steps through its shard in batches of ``batch_size // world_size``,
    validation runs on rank 0 and its scores are broadcast, so every rank keeps the same epoch.
    """
    t = config.train
    check_recipe(t, val)
    trainer = _Trainer.build(config, train, features, _per_rank(config, train, classes), device)
    model = trainer.model
    kept = Kept(t.keep, t.select_on)
    history: list[EpochRecord] = []
    started = time.perf_counter()
    for epoch in range(1, t.epochs + 1):
        epoch_start = time.perf_counter()
        total_loss, seen = trainer.epoch()
        val_metrics, mean_loss = epoch_scores(model, val, classes, t.select_on, total_loss, seen, len(train))
        lr = trainer.optimizer.param_groups[0]["lr"]
        record = EpochRecord(epoch, mean_loss, val_metrics["accuracy"], val_metrics["f1_weighted"],
                             time.perf_counter() - epoch_start, lr)  # fmt: skip
        history.append(record)
        if on_epoch:
            on_epoch(record)
        if not math.isfinite(mean_loss):  # the same on every rank: the loss is summed over them
            raise NonFiniteError(f"epoch {epoch}: the training loss is {mean_loss}, nothing saved: "
                                 "lower train.lr, or check the recordings for absurd values")  # fmt: skip
        kept.offer(epoch, val_metrics, model)
    assert kept.state is not None
    model.load_state_dict(kept.state)
    model.eval()
    return FitResult(model.cpu(), kept.epoch, kept.val, history, time.perf_counter() - started)


def epoch_scores(model: ResidualBiLSTM, val: WindowSet, classes: tuple[str, ...], select_on: str,
                 loss: float, seen: int, n_train: int) -> tuple[dict, float]:  # fmt: skip
    """An epoch's validation scores and mean training loss, the same on every rank: rank 0 scores
    validation and broadcasts the scores; the loss (summed over this rank's ``seen`` windows) is
    summed over the ranks."""
    rank, world_size = distributed.world()
    val_metrics = {"accuracy": 0.0, "f1_weighted": 0.0}
    if len(val) and rank == 0:
        val_metrics = evaluate(model, val, classes)
    if world_size == 1:
        return val_metrics, loss / n_train
    keys = ["accuracy", "f1_weighted", select_on]
    shared = distributed.broadcast_floats([val_metrics.get(k, 0.0) for k in keys])
    val_metrics |= dict(zip(keys, shared, strict=True))
    total_loss, total_seen = distributed.sum_floats([loss, seen])
    return val_metrics, total_loss / total_seen
