"""Efficiency, measured: inference FLOPs, learnable parameters, stored statistics, time, memory.

What a run record holds (``efficiency`` at the end of the stream, and per task in
``tasks[i].efficiency``; docs/record.md):

* **GFLOPs per image**: the method's evaluation forward (``predict`` under ``eval_context``,
  what the benchmark's evaluation runs) on one test image at the benchmark's input size,
  counted by :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs:
  ViT-B/16 at 224 px is 35.1 GFLOPs). Every matrix product, convolution and fused attention
  is counted, whichever method runs; element-wise operations are not.
* **Learnable parameters**: the distinct parameter tensors the engine optimised in a task,
  in the main training and every phase (from the parameter groups it was handed, so no
  method is special-cased). The stream's figure is the last task's, the convention of the
  SD-LoRA paper's Table 5 (its 0.37 M for SD-LoRA is one task's rank-10 adapter).
* **Stored features/statistics**: floating-point buffers of the method outside the
  pretrained backbone (``backbone.*``), i.e. state that is neither a weight of the backbone
  nor a parameter: prototypes, class means and covariances, memories and bases, Gram
  matrices. Integer buffers (indices, bookkeeping) are not features; a module may declare
  buffers that hold copies of adapter weights (e.g. merged LoRA factors kept to redo a
  merge) in its ``weight_buffers`` class attribute, and those are not counted either.
  Tensors inside ``get_extra_state`` count the same way.
* **Training time and memory per task**: the task's training wall-clock (everything before
  its evaluation: statistics passes, main training, phases), its training images per second
  (images of the main training, epochs × samples, over that time) and the peak memory: the
  CUDA allocator's peak during the task, or on CPU the process's peak resident set size so
  far (``getrusage``; it never decreases and includes the data held in memory).

Nothing here runs per step: the timers and memory counters are read once per task.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Fused attention kernels torch's counter has no formula for (CPU); the same count as CUDA's.
_EXTRA_FLOPS = {op: _sdpa_flops for op in (getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),)
                if op is not None}


def count_flops(fn: Any, *args: Any) -> int:
    """FLOPs of ``fn(*args)`` (2 per multiply-add), without autocast or gradients."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        fn(*args)
    return int(counter.get_total_flops())


def inference_flops(method: nn.Module, image: Tensor) -> int:
    """FLOPs of the method's evaluation forward on one image (C, H, W) or batch of one."""
    x = image[None] if image.dim() == 3 else image[:1]
    was_training = method.training
    method.eval()
    try:
        with method.eval_context():
            return count_flops(method.predict, x)
    finally:
        method.train(was_training)


def trained_parameters(groups: list[dict[str, Any]]) -> list[Tensor]:
    """The distinct parameter tensors of optimiser groups (a tensor in two groups counts once)."""
    seen: dict[int, Tensor] = {}
    for group in groups:
        for p in group["params"]:
            seen.setdefault(id(p), p)
    return list(seen.values())


def _tensors(value: Any) -> list[Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def stored_statistics(method: nn.Module) -> dict[str, Any]:
    """Stored features/statistics of ``method`` (the rule in the module docstring): number
    of values, bytes and the values per state-dict entry."""
    params = {name for name, _ in method.named_parameters(remove_duplicate=False)}
    entries: dict[str, int] = {}
    total_bytes = 0
    for name, value in method.state_dict(keep_vars=True).items():
        if name.startswith("backbone.") or name in params:
            continue
        module_name, _, attr = name.rpartition(".")
        module = method.get_submodule(module_name) if module_name else method
        if attr in getattr(module, "weight_buffers", ()):
            continue
        for t in _tensors(value):
            if t.is_floating_point() or t.is_complex():
                entries[name] = entries.get(name, 0) + t.numel()
                total_bytes += t.numel() * t.element_size()
    return {"values": sum(entries.values()), "bytes": total_bytes, "entries": entries}


def added_parameters(method: nn.Module) -> int:
    """Parameters of the method beyond the pretrained backbone (adapters, prompts, heads,
    trained or frozen)."""
    return sum(p.numel() for name, p in method.named_parameters() if not name.startswith("backbone."))


# ---------------------------------------------------------------------------- memory

def reset_peak_memory(device: torch.device) -> None:
    """Start a task's peak-memory window (CUDA; the CPU figure is the process's peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): the CUDA allocator's peak since :func:`reset_peak_memory`
    (``cuda-allocated``), else the process's peak resident set size (``cpu-rss``)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda-allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu-rss"  # Linux reports KiB


# ---------------------------------------------------------------------------- record fields

def task_efficiency(train_s: float, train_images: int, learnable: int, peak: tuple[int, str]) -> dict[str, Any]:
    """The ``efficiency`` entry of one task in the record."""
    return {"train_s": train_s, "train_images": int(train_images),
            "train_img_s": train_images / train_s if train_s > 0 and train_images else None,
            "learnable_params": int(learnable), "peak_memory_bytes": peak[0], "peak_memory": peak[1]}


def stream_efficiency(method: nn.Module, image: Tensor, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's ``efficiency`` at the end of the stream: FLOPs and storage of the final
    method, learnable parameters of the last task, time and memory over the tasks."""
    per_task = [t["efficiency"] for t in tasks if t.get("efficiency")]
    train_s = sum(e["train_s"] for e in per_task)
    images = sum(e["train_images"] for e in per_task)
    flops = inference_flops(method, image)
    stored = stored_statistics(method)
    return {
        "input_size": list(image.shape[-3:]),
        "inference_flops": flops, "inference_gflops": flops / 1e9,
        "learnable_params": per_task[-1]["learnable_params"] if per_task else 0,
        "learnable_params_max": max((e["learnable_params"] for e in per_task), default=0),
        "added_params": added_parameters(method),
        "stored_values": stored["values"], "stored_bytes": stored["bytes"], "stored_entries": stored["entries"],
        "train_s_per_task": train_s / len(per_task) if per_task else None,
        "train_img_s": images / train_s if train_s > 0 and images else None,
        "peak_memory_bytes": max((e["peak_memory_bytes"] for e in per_task), default=None),
        "peak_memory": per_task[-1]["peak_memory"] if per_task else None,
    }
