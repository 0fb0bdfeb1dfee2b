"""Static counts (parameters, safetensors bytes, FLOPs) and peak tensor memory of a model."""

import tempfile
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count
from torch.utils.weak import WeakIdKeyDictionary


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def safetensors_bytes(model: nn.Module) -> int:
    """Size of the fp32 weights as `save_pretrained` writes them."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def _conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
) -> int:
    """Each requested gradient (input, weight) costs one forward convolution.

    torch's own formula ignores `groups`: it counts a depthwise convolution's backward C times over (65x for 64
    channels), which would make every model with depthwise convolutions look busier in training than it is.
    """
    return conv_flop_count(x_shape, w_shape, grad_out_shape, transposed) * (int(output_mask[0]) + int(output_mask[1]))


def _cpu_attention_flop(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, with a convolution backward that respects groups and CPU flash attention counted.

    torch counts the CUDA flash, efficient and cuDNN attention kernels but not `_scaled_dot_product_flash_attention_
    for_cpu`, which SDPA runs on the CPU: without it, a model on SDPA (LALE) would count no attention FLOPs while
    one with matmul attention (SegFormer) counts them all.
    """
    aten = torch.ops.aten
    custom_mapping = {
        aten.convolution_backward: _conv_backward_flop,
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flop,
    }
    return FlopCounterMode(display=False, custom_mapping=custom_mapping)


def count_flops(model: nn.Module, image_size: int, train: bool = False) -> float:
    """FLOPs per image from torch's FlopCounterMode (matmuls, convolutions, attention; elementwise ops are free).

    Inference is counted on one image, the usual convention (per-call work such as LALE's decoder weight product
    counts once). With `train`, a forward with labels plus the backward pass (the optimizer step is elementwise,
    hence uncounted), on two images, since batch norm cannot train on one (MobileViT's pooled ASPP branch).
    """
    device = next(model.parameters()).device
    batch_size = 2 if train else 1
    pixel_values = torch.randn(batch_size, 3, image_size, image_size, device=device)
    with flop_counter() as counter:
        if train:
            labels = torch.randint(0, model.config.num_labels, (2, image_size, image_size), device=device)
            model.train()
            model(pixel_values=pixel_values, labels=labels).loss.backward()
        else:
            with torch.no_grad():
                model(pixel_values=pixel_values)
    model.zero_grad(set_to_none=True)
    model.eval()
    return counter.get_total_flops() / batch_size


def model_figures(model: nn.Module, image_size: int = 256) -> dict:
    """The static columns of the benchmark: parameters, GMACs per image (MACs = FLOPs / 2), fp32 safetensors bytes."""
    return {
        "parameters": count_parameters(model),
        "gmacs": count_flops(model, image_size) / 2e9,
        "safetensors_bytes": safetensors_bytes(model),
        "image_size": image_size,
    }


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage: the `existing` tensors plus every storage an op creates while active.

    A CPU counterpart of `torch.cuda.max_memory_allocated` that counts tensors, not what malloc keeps, so it reads
    the same under every allocator. Scratch space inside libraries (oneDNN workspaces) is not seen.
    """

    def __init__(self, existing: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._sizes = WeakIdKeyDictionary()
        for tensor in existing:
            self._track(tensor.untyped_storage())

    def _track(self, storage):
        if storage in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, size)

    def _release(self, size: int):
        self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(output):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf.untyped_storage())
        return output


def peak_memory_bytes(step: Callable[[], object], existing: Iterable[torch.Tensor], device: torch.device) -> int:
    """Peak tensor memory of one call of `step`, the `existing` tensors (weights, inputs, optimizer state) included.

    On CUDA, the caching allocator's peak, less what other models held before the call.
    """
    if device.type != "cuda":
        with PeakTensorMemory(existing) as tracker:
            step()
        return tracker.peak
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in existing}
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before + sum(storages.values())
