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


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_t)^gamma, averaged over labelled pixels.

    With class weights the average is weighted as `F.cross_entropy(weight=...)` weights it.
    """
    log_probabilities = torch.nn.functional.log_softmax(logits.float(), dim=1)
    valid = labels != ignore_index
    targets = torch.where(valid, labels, torch.zeros_like(labels))
    log_pt = log_probabilities.gather(1, targets[:, None]).squeeze(1)
    pixel_weight = valid.float() if weight is None else weight.to(logits.device, torch.float32)[targets] * valid
    losses = -((1.0 - log_pt.exp()) ** gamma) * log_pt * pixel_weight
    return losses.sum() / pixel_weight.sum().clamp_min(1e-12)


LOSSES = ("ce", "dice", "focal", "ce+dice", "focal+dice")


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_type: str = "ce",
    class_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy or focal loss (optionally class-weighted), Dice, or their sum, on logits upsampled to the labels."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if loss_type not in LOSSES:
        raise ValueError(f"Unknown loss {loss_type!r}; expected one of {', '.join(LOSSES)}.")
    loss = logits.new_zeros((), dtype=torch.float32)
    weight = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
    if "ce" in loss_type.split("+"):
        loss = loss + torch.nn.functional.cross_entropy(
            logits.float(), labels, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing
        )
    if "focal" in loss_type.split("+"):
        loss = loss + focal_loss(logits, labels, weight=weight, ignore_index=ignore_index)
    if "dice" in loss_type.split("+"):
        loss = loss + dice_loss(logits, labels, ignore_index)
    return loss
