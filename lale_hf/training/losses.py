"""Segmentation losses on logits upsampled to the label size: cross-entropy, Dice, focal, and their sums."""

import torch


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss over the pixels that are not ignored (the ARAS400k authors' loss)."""
    valid = labels != ignore_index
    probabilities = logits.float().softmax(dim=1) * valid[:, None]
    one_hot = torch.nn.functional.one_hot(labels.clamp(0, logits.shape[1] - 1) * valid, logits.shape[1])
    one_hot = one_hot.permute(0, 3, 1, 2).float() * valid[:, None]
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    cardinality = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * intersection + eps) / (cardinality + eps)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_type: str = "ce",
    class_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Cross-entropy (optionally class-weighted), Dice, or their sum, on logits upsampled to the label size."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if loss_type not in ("ce", "dice", "ce+dice"):
        raise ValueError(f"Unknown loss {loss_type!r}; expected 'ce', 'dice' or 'ce+dice'.")
    loss = logits.new_zeros((), dtype=torch.float32)
    if "ce" in loss_type.split("+"):
        weight = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
        loss = loss + torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index)
    if "dice" in loss_type.split("+"):
        loss = loss + dice_loss(logits, labels, ignore_index)
    return loss
