"""The model as a tensor-to-tensor function, and the one measure of how far two logit tensors differ.

Shared by the ONNX export, its Runtime check and the benchmark's deployment paths, so every comparison of a compiled
or exported model with eager PyTorch uses the same wrapper and the same error.
"""

import torch


class LogitsOnly(torch.nn.Module):
    """A segmentation model whose output is its logits tensor: what the compiler, the exporter and a deployment see."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference between `output` and `reference`, over the largest |reference| value."""
    output, reference = output.detach().float().cpu(), reference.detach().float().cpu()
    if output.shape != reference.shape:
        raise ValueError(f"Cannot compare logits of shape {tuple(output.shape)} with {tuple(reference.shape)}.")
    return float((output - reference).abs().max() / reference.abs().max().clamp_min(1e-12))


__all__ = ["LogitsOnly", "relative_error"]
