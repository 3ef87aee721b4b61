"""SSF: learnable per-channel scale and shift after chosen ViT operations (APER-SSF, RanPAC).

``y = γ ⊙ x + β`` at the output of the patch embedding, of every block's ``norm1``, ``attn.qkv``
(3·d channels), ``attn.proj``, ``norm2``, ``mlp.fc1`` (before the activation) and ``mlp.fc2``,
and of the final ``norm``: 205,824 parameters on ViT-B/16. γ ~ N(1, 0.02²), β ~ N(0, 0.02²)
as the reference initialises them, so a new SSF is *not* the identity (about 2 % off).

Every site follows a linear map or an affine LayerNorm, so :meth:`SSF.merged` folds γ and β
into that module's weight and bias for evaluation (exact restore on exit): inference then
costs a plain ViT forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from .base import SwitchableInjection

BLOCK_SITES = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


def _site_key(path: str) -> str:
    return path.removeprefix("vit.").replace(".", "_")


class SSF(SwitchableInjection):
    """Scale-and-shift after the patch embedding, six operations per block and the final norm."""

    def __init__(self, backbone: Backbone, init_std: float = 0.02):
        super().__init__(backbone)
        vit_paths = ["vit.patch_embed"] + [f"vit.blocks.{b}.{site}" for b in range(backbone.depth)
                                           for site in BLOCK_SITES] + ["vit.norm"]
        modules = {path: self.module_at(backbone, path) for path in vit_paths}
        ref = next(backbone.parameters())
        self.scales, self.shifts = nn.ParameterDict(), nn.ParameterDict()
        self._paths: dict[str, str] = {}
        self._folds: dict[str, nn.Module] = {}
        for path, module in modules.items():
            width = self._width(backbone, path, module)
            key = _site_key(path)
            self.scales[key] = nn.Parameter(1 + init_std * torch.randn(width, device=ref.device))
            self.shifts[key] = nn.Parameter(init_std * torch.randn(width, device=ref.device))
            self._paths[key] = path
            self._folds[key] = self._fold_target(module)
        self._saved: list[tuple[Tensor, Tensor, Tensor, Tensor]] | None = None
        for key, path in self._paths.items():
            self.hook(path, modules[path], self._apply(key))

    @staticmethod
    def _width(backbone: Backbone, path: str, module: nn.Module) -> int:
        if path == "vit.patch_embed":
            return backbone.embed_dim
        if isinstance(module, nn.Linear):
            return module.out_features
        return module.normalized_shape[0]

    @staticmethod
    def _fold_target(module: nn.Module) -> nn.Module | None:
        """The linear or affine LayerNorm whose output the site scales (None: not foldable)."""
        if hasattr(module, "proj") and isinstance(getattr(module, "norm", None), nn.Identity):
            module = module.proj  # patch embedding: a conv, then an identity norm
        elif hasattr(module, "proj"):
            module = module.norm
        ok = isinstance(module, (nn.Linear, nn.Conv2d)) or (isinstance(module, nn.LayerNorm)
                                                             and module.elementwise_affine)
        return module if ok and module.bias is not None else None

    def _apply(self, key: str) -> Callable:
        def apply(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            if not self.enabled or self._saved is not None:
                return None
            return out * self.scales[key].to(out.dtype) + self.shifts[key].to(out.dtype)

        return apply


    @property
    def mergeable(self) -> bool:
        return all(target is not None for target in self._folds.values())

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """γ and β folded into the preceding modules' weights and biases (hooks idle, exact
        restore on exit). A no-op when disabled, already merged, or a site cannot be folded."""
        if not self.enabled or self._saved is not None or not self.mergeable:
            yield
            return
        saved = []
        with torch.no_grad():
            for key, target in self._folds.items():
                weight, bias = target.weight, target.bias
                saved.append((weight, bias, weight.detach().clone(), bias.detach().clone()))
                scale, shift = self.scales[key].to(weight), self.shifts[key].to(weight)
                weight.mul_(scale.reshape(-1, *([1] * (weight.dim() - 1))))
                bias.mul_(scale).add_(shift)
        self._saved = saved
        try:
            yield
        finally:
            with torch.no_grad():
                for weight, bias, w0, b0 in self._saved:
                    weight.copy_(w0)
                    bias.copy_(b0)
            self._saved = None

    def _restore(self) -> None:
        if self._saved is not None:
            raise RuntimeError("cannot remove an SSF inside merged()")
