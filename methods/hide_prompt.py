"""``hide-prompt``: HiDe-Prompt (Wang et al., NeurIPS 2023; github.com/thu-ml/HiDe-Prompt).

Two stages on one frozen ViT:

* **Task-identity inference (TII)**: the frozen [CLS] feature (the query pass) goes through a
  residual MLP (D→hD→D, GELU, residual, LayerNorm) and a linear head over the seen classes;
  the predicted class names the task. It trains with cross-entropy over the current task's
  classes, and after each task it is aligned on features sampled from per-class statistics of
  the frozen features (k-means centroids with diagonal variances) of all seen classes.
* **Within-task and task-adaptive prediction (WTP/TAP)**: one E-prompt per task (key/value
  prefixes in ``layers``, 0–4), chosen by task id in training (mixed with the mean of the
  earlier prompts by ``prompt_momentum``) and by the TII prediction at test, per sample. Loss:
  masked cross-entropy plus ``reg`` × a contrastive term that treats the batch's prompted
  features and the stored prototypes of earlier classes as a similarity matrix (temperature
  0.8) with an identity target. After each task the head is retrained on features sampled from
  the per-class statistics of the prompted features of all seen classes.

Schedule (``tii_schedule``): ``stage`` (default, the official code): the TII MLP and head
train in their own phase before the task's prompt training, on the task's training images,
with their own optimiser, lr and epochs (thu-ml/HiDe-Prompt ``training_scripts/train_*_vit.sh``
first command, ``--train_inference_task_only``: Adam, lr 5e-4 × 24/256, 20 epochs, constant,
clip 1.0; ``engines/hide_tii_engine.py``); the prompt stage then trains the prompts and head
only, without a query pass per step. ``joint`` (clbench's earlier schedule, a variant marked
non-comparable): the TII loss is summed with the prompt loss in the main loop (its lr via
``tii_lr_scale``). The two alignments are engine-run phases after the task
(:class:`~clbench.methods.base.Phase`). ``task_log`` records the TII task accuracy of the
evaluation (``tii_task_acc``, per task in ``tii_task_acc_per_task``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clbench.adapters import KVPrefixes
from clbench.config import MethodConfig, option
from clbench.errors import ConfigError
from clbench.heads import IncrementalLinear
from clbench.prompting import SelectionLog, batch_vote, kv_prefixes, uniform_
from clbench.registry import register_method

from .base import Phase, StepOutput
from .prompt_base import PromptMethod


JOINT_REASON = ("hide-prompt: tii_schedule=joint trains task-identity inference inside the prompt stage's loop "
                "(clbench's earlier schedule), not in its own stage as the official code")


@dataclass
class HiDePromptConfig(MethodConfig):
    length: int = option(5, "E-prompt key tokens (and as many value tokens): 5 CIFAR, 20 ImageNet-R", ge=0)
    layers: tuple[int, ...] = option((0, 1, 2, 3, 4), "blocks that get the E-prompt prefixes", ge=0)
    prompt_momentum: float = option(0.01, "mix of the mean of earlier task prompts into the current one", ge=0, le=1)
    shared_pool: bool = option(True, "a new task's prompt starts as a copy of the previous one")
    reg: float = option(0.1, "weight of the prototype contrastive term: 0.1 CIFAR, 0.5 ImageNet-R", ge=0)
    temperature: float = option(0.8, "temperature of the contrastive term", gt=0)
    head_lr_scale: float = option(0.1, "head lr relative to train.lr (official --larger_prompt_lr)", gt=0)
    tii_hidden: int = option(2, "TII MLP hidden width, in multiples of D", ge=1)
    tii_schedule: Literal["stage", "joint"] = option(
        "stage", "TII training: its own stage before the prompt stage (official), or joint in its loop (variant)")
    tii_epochs: int = option(20, "epochs of the TII stage per task (official 20)", ge=0)
    tii_lr: float = option(4.6875e-5, "lr of the TII stage (official 5e-4 x 24/256)", gt=0)
    tii_optimizer: Literal["sgd", "adam", "adamw"] = option("adam", "optimiser of the TII stage (official adam)")
    tii_batch: int | None = option(None, "batch of the TII stage; None: train.batch_size (official 24, as the prompt "
                                         "stage)", ge=1)
    tii_lr_scale: float = option(1 / 60, "joint schedule only: TII lr relative to train.lr (5e-4 vs 0.03)", gt=0)
    n_centroids: int = option(10, "k-means centroids per class for the stored statistics", ge=1)
    align_epochs: int = option(30, "epochs of each post-task alignment (crct_epochs)", ge=0)
    tii_align_lr: float = option(4.6875e-4, "SGD lr of the TII alignment (0.005 x 24/256)", gt=0)
    tii_align_batch: int = option(24, "batch, and samples drawn per centroid, of the TII alignment", ge=1)
    tap_lr: float = option(0.005, "SGD lr of the head retraining", gt=0)
    tap_batch: int = option(120, "batch, and samples drawn per centroid, of the head retraining", ge=1)
    batchwise_prompt: bool = option(False, "compatibility: batch vote on TII task ids (non-comparable)")
    prefix_reshape_bug: bool = option(False, "compatibility: the ports' prefix reshape bug (non-comparable)")


class ResidualMLP(nn.Module):
    """HiDe's TII projection: LayerNorm(x + W2·GELU(W1·x)), timm-style init."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ratio * dim), nn.Linear(ratio * dim, dim)
        self.norm = nn.LayerNorm(dim)
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


def kmeans(x: Tensor, k: int, iters: int = 100) -> Tensor:
    """Cluster labels (n,) of Lloyd's k-means with k-means++ seeding (torch's RNG), k ≤ n."""
    n = x.shape[0]
    centres = x[torch.randint(n, (1,), device=x.device)]
    d2 = torch.cdist(x, centres).squeeze(1) ** 2
    for _ in range(1, k):
        pick = torch.multinomial(d2 / d2.sum(), 1) if d2.sum() > 0 else torch.randint(n, (1,), device=x.device)
        centres = torch.cat([centres, x[pick]])
        d2 = torch.minimum(d2, torch.cdist(x, x[pick]).squeeze(1) ** 2)
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        new = torch.cdist(x, centres).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def centroid_statistics(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Means (k, D), diagonal variances (k, D) and sizes (k,) of the k-means clusters of one
    class's features (fewer than ``k`` samples: one cluster each; missing clusters have size 0)."""
    d = x.shape[1]
    mean, var, count = x.new_zeros(k, d), x.new_zeros(k, d), x.new_zeros(k)
    labels = kmeans(x, min(k, x.shape[0]))
    count.index_add_(0, labels, torch.ones_like(labels, dtype=x.dtype))
    mean.index_add_(0, labels, x)
    mean = mean / count.clamp_min(1)[:, None]
    var.index_add_(0, labels, (x - mean[labels]) ** 2)
    return mean, var / count.clamp_min(1)[:, None], count


@register_method("hide-prompt")
class HiDePrompt(PromptMethod):
    """Task prompts chosen by a trained task-identity inference, with prototype alignment."""

    Config = HiDePromptConfig
    display_name = "HiDe-Prompt"
    defaults = {**PromptMethod.defaults, "train.lr": 0.0028125, "train.grad_clip": 1.0}

    def __init__(self, cfg: HiDePromptConfig, backbone, info):
        super().__init__(cfg, backbone, info)
        bad = [b for b in cfg.layers if not 0 <= b < backbone.depth]
        if bad:
            raise ConfigError(f"hide-prompt.layers has blocks {bad} outside 0..{backbone.depth - 1}.")
        if cfg.n_centroids < 1:
            raise ConfigError("hide-prompt.n_centroids must be at least 1.")
        d, k = backbone.embed_dim, cfg.n_centroids
        self.prompts = uniform_((len(cfg.layers), info.n_tasks, 2, cfg.length, d))  # one per task
        self.tii_mlp = ResidualMLP(d, cfg.tii_hidden)
        self.tii_head = IncrementalLinear(d)
        for space in ("raw", "prompted"):  # per-class centroid statistics of both feature spaces
            self.register_buffer(f"{space}_mean", torch.zeros(0, k, d))
            self.register_buffer(f"{space}_var", torch.zeros(0, k, d))
            self.register_buffer(f"{space}_count", torch.zeros(0, k))
        self.selection = SelectionLog(info.n_tasks, info.n_tasks)
        self.selection_name = "tii"
        self.prefix_hooks = KVPrefixes(backbone, blocks=cfg.layers)
        self.flag_noncomparable(cfg.batchwise_prompt, cfg.prefix_reshape_bug)
        self.joint_tii = cfg.tii_schedule == "joint"
        if self.joint_tii:
            self.noncomparable.append(JOINT_REASON)
        self._task = 0
        self._prototypes: Tensor | None = None

    # ---------------------------------------------------------------- task structure
    def before_task(self, ctx) -> None:
        super().before_task(ctx)
        self.tii_head.grow(ctx.hi)
        self._task = t = ctx.index
        if self.cfg.shared_pool and t > 0:
            with torch.no_grad():
                self.prompts[:, t] = self.prompts[:, t - 1]
        valid = self.prompted_count[: ctx.lo] > 0  # prototypes: stored centroids of earlier classes
        self._prototypes = self.prompted_mean[: ctx.lo][valid]

    def tii_parameters(self) -> list[nn.Parameter]:
        return list(self.tii_mlp.parameters()) + list(self.tii_head.parameters())

    def pre_training_phases(self, ctx) -> list[Phase]:
        """The official TII stage: the MLP and head on the task's images, own optimiser/lr/epochs."""
        cfg = self.cfg
        if self.joint_tii or cfg.tii_epochs <= 0:
            return []
        lo, hi = ctx.lo, ctx.hi
        train = {"optimizer": cfg.tii_optimizer, "lr": cfg.tii_lr, "schedule": "constant", "weight_decay": 0.0,
                 "grad_clip": 1.0}
        return [Phase("tii", [{"params": self.tii_parameters()}], cfg.tii_epochs,
                      lambda epoch: ctx.training_batches(epoch, cfg.tii_batch),
                      lambda x, y: self.tii_loss(self.query(x), y, lo, hi), train)]

    def parameter_groups(self) -> list[dict]:
        groups = [{"params": [self.prompts]},
                  {"params": list(self.head.parameters()), "lr_scale": self.cfg.head_lr_scale}]
        if self.joint_tii:
            groups.append({"params": self.tii_parameters(), "lr_scale": self.cfg.tii_lr_scale})
        return groups

    # ---------------------------------------------------------------- forward
    def tii_logits(self, q: Tensor) -> Tensor:
        return self.tii_head(self.tii_mlp(q))

    def tii_loss(self, q: Tensor, y: Tensor, lo: int, hi: int) -> Tensor:
        """Cross-entropy of the TII over the current task's classes ``lo..hi-1`` (new labels ``y``)."""
        return F.cross_entropy(self.tii_logits(q)[:, lo:hi].float(), y - lo)

    def training_prompt(self, t: int) -> Tensor:
        """Task t's prompt (layers, 2, L, D), mixed with the mean of the earlier ones."""
        m = self.cfg.prompt_momentum if t > 0 else 0.0
        if m == 0:
            return self.prompts[:, t]
        return (1 - m) * self.prompts[:, t] + m * self.prompts[:, :t].detach().mean(dim=1)

    def features(self, x: Tensor, pool: Tensor, idx: Tensor | int) -> Tensor:
        """Prompted [CLS] with entries ``idx`` of ``pool`` (layers, M, 2, L, D) as prefixes."""
        if self.cfg.prefix_reshape_bug and isinstance(idx, int):
            idx = torch.full((x.shape[0],), idx, device=x.device, dtype=torch.long)
        keys, values = kv_prefixes(pool, idx, self.cfg.prefix_reshape_bug)
        prefixes = {b: (keys[i], values[i]) for i, b in enumerate(self.cfg.layers)}
        with self.prefix_hooks.using(prefixes):
            return self.backbone(x)

    def contrastive(self, feats: Tensor) -> Tensor:
        """CE of the similarity matrix of [prototypes; features] / T against the identity."""
        with torch.autocast(feats.device.type, enabled=False):
            rows = torch.cat([self._prototypes.to(feats.device), feats.float()])
            sim = rows @ rows.t() / self.cfg.temperature
            return F.cross_entropy(sim, torch.arange(len(rows), device=rows.device))

    def training_step(self, x: Tensor, y: Tensor, ctx) -> StepOutput:
        pool = self.training_prompt(ctx.index).unsqueeze(1)  # (layers, 1, 2, L, D)
        feats = self.features(x, pool, 0)
        contrast = self.contrastive(feats)
        loss, logs = self.cfg.reg * contrast, {"contrast": contrast.detach()}
        if self.joint_tii:  # the earlier schedule: TII trained here, on the detached query
            tii_ce = self.tii_loss(self.query(x), y, ctx.lo, ctx.hi)
            loss, logs = tii_ce + loss, {"tii_ce": tii_ce.detach(), **logs}
        return StepOutput(self.head(feats), loss=loss, logs=logs)

    def predict_tasks(self, q: Tensor) -> Tensor:
        """Task id per sample from the TII's predicted class (batch vote if flagged)."""
        tasks = self.task_of_class[self.tii_logits(q).argmax(dim=1)]
        if self.cfg.batchwise_prompt:
            tasks = batch_vote(tasks.unsqueeze(1), 1, self.info.n_tasks)[:, 0]
        return tasks

    def predict(self, x: Tensor) -> Tensor:
        tasks = self.predict_tasks(self.query(x))
        self.selection.add(tasks)
        return self.head(self.features(x, self.prompts, tasks))

    # ---------------------------------------------------------------- after a task
    def after_task(self, ctx) -> None:
        t, m = ctx.index, self.cfg.prompt_momentum
        if t > 0 and m > 0:
            with torch.no_grad():
                self.prompts[:, t] = self.training_prompt(t)
        raw, prompted, labels = [], [], []
        with self.frozen_features(), ctx.autocast():
            for x, y in ctx.batches(augment=False, description="class statistics"):
                raw.append(self.query(x))
                prompted.append(self.features(x, self.prompts, t).float())
                labels.append(y)
        labels_t = torch.cat(labels)
        for space, feats in (("raw", torch.cat(raw)), ("prompted", torch.cat(prompted))):
            stats = [centroid_statistics(feats[labels_t == c], self.cfg.n_centroids) for c in range(ctx.lo, ctx.hi)]
            for name, values in zip(("mean", "var", "count"), zip(*stats)):
                old = getattr(self, f"{space}_{name}")
                setattr(self, f"{space}_{name}", torch.cat([old, torch.stack(values).to(old)]))

    def _sampler(self, space: str, hi: int, per_centroid: int, steps: int) -> Callable[[int], list]:
        """Per epoch: draw ``per_centroid`` Gaussian samples per stored centroid of the classes
        below ``hi``, shuffle, keep ``steps`` batches of ``per_centroid`` (the official scheme).
        Only the kept samples are drawn. Centroids of one sample (zero variance) are skipped
        unless a class has no other."""
        mean, var, count = (getattr(self, f"{space}_{n}")[:hi] for n in ("mean", "var", "count"))
        usable = (count > 0) & (var.mean(dim=-1) > 0)
        usable |= (count > 0) & ~usable.any(dim=1, keepdim=True)
        cls, slot = usable.nonzero(as_tuple=True)
        mu, sd = mean[cls, slot], (var[cls, slot] + 1e-4).sqrt()

        def batches(epoch: int) -> list[tuple[Tensor, Tensor]]:
            total = len(cls) * per_centroid
            pick = torch.randperm(total, device=mu.device)[: steps * per_centroid] // per_centroid
            x = mu[pick] + sd[pick] * torch.randn(len(pick), mu.shape[1], device=mu.device)
            return [(x[i:i + per_centroid], cls[pick][i:i + per_centroid]) for i in range(0, len(pick), per_centroid)]

        return batches

    def post_task_phases(self, ctx) -> list[Phase]:
        if ctx.index == 0 or self.cfg.align_epochs <= 0:
            return []
        hi, steps, cfg = ctx.hi, ctx.lo, self.cfg  # steps per epoch: classes of earlier tasks
        sgd = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "grad_clip": None}
        return [
            Phase("tii-align", [{"params": self.tii_parameters()}], cfg.align_epochs,
                  self._sampler("raw", hi, cfg.tii_align_batch, steps),
                  lambda f, y: F.cross_entropy(self.tii_logits(f)[:, :hi].float(), y),
                  {**sgd, "lr": cfg.tii_align_lr}),
            Phase("tap", [{"params": list(self.head.parameters())}], cfg.align_epochs,
                  self._sampler("prompted", hi, cfg.tap_batch, steps),
                  lambda f, y: F.cross_entropy(self.head(f)[:, :hi].float(), y),
                  {**sgd, "lr": cfg.tap_lr}),
        ]
