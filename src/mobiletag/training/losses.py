"""Losses, per example, for reduction over the global batch.

Multi-label: every class is an independent sigmoid. The hard-label term is binary
cross-entropy (``bce``), the asymmetric loss (``asymmetric``; Ridnik et al., ICCV 2021), which
down-weights the many easy negatives of a multi-label batch (0-3 positives of 10 classes):
``-[y log p + (1-y) p_m^4 log(1-p_m)]`` with ``p_m = max(p - 0.05, 0)``, or cross-entropy with
per-class positive weights (``weighted_bce``): ``-[w_c y log p + (1-y) log(1-p)]`` with
``w_c = sqrt(negatives_c / positives_c)`` over the training split (:func:`positive_weights`), so a
class in 3% of the images weighs its positives 5.7x and one in 40% 1.2x. The distillation term is
the per-class binary cross-entropy between sigmoid(teacher/T) and sigmoid(student/T), scaled by
T^2 so its gradient keeps the same size whatever T (Hinton et al., 2015).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from mobiletag.config import HardLoss

# the paper's settings for multi-label classification (its Table 8: MS-COCO)
ASYMMETRIC_GAMMA_NEG = 4.0
ASYMMETRIC_GAMMA_POS = 0.0
ASYMMETRIC_CLIP = 0.05


def positive_weights(kind: HardLoss, positives: Sequence[int], num_images: int) -> list[float] | None:
    """Per-class weights of the positives for ``weighted_bce``: sqrt(negatives / positives) of the
    training split's counts (a class without positives, or in every image, weighs 1); None for the
    other losses."""
    if kind != "weighted_bce":
        return None
    return [math.sqrt((num_images - p) / p) if 0 < p < num_images else 1.0 for p in positives]


def hard_loss(
    labels: tf.Tensor, logits: tf.Tensor, kind: HardLoss = "bce", pos_weight: Sequence[float] | None = None
) -> tf.Tensor:
    """Per-example hard-label loss, averaged over classes: shape [B]. ``pos_weight``: per class,
    for ``weighted_bce`` only (:func:`positive_weights`)."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    if (kind == "weighted_bce") != (pos_weight is not None):
        raise ValueError(f"hard loss {kind!r}: positive weights are for weighted_bce, and it needs them")
    if kind == "bce":
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=-1)
    if kind == "weighted_bce":
        weights = tf.constant(pos_weight, tf.float32)
        return tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(labels, logits, weights), axis=-1)
    if kind != "asymmetric":
        raise ValueError(f"unknown hard loss {kind!r}; choose from the config key's: {HardLoss}")
    return tf.reduce_mean(asymmetric_loss(labels, logits), axis=-1)


def asymmetric_loss(
    labels: tf.Tensor,
    logits: tf.Tensor,
    gamma_neg: float = ASYMMETRIC_GAMMA_NEG,
    gamma_pos: float = ASYMMETRIC_GAMMA_POS,
    clip: float = ASYMMETRIC_CLIP,
) -> tf.Tensor:
    """Per-class asymmetric loss (float32 labels and logits): shape of ``logits``.

    With ``gamma_neg = gamma_pos = clip = 0`` it is binary cross-entropy."""
    p = tf.sigmoid(logits)
    positive = -tf.math.log_sigmoid(logits)  # -log p, stable for large |logits|
    if gamma_pos:
        positive *= tf.pow(1.0 - p, gamma_pos)
    shifted = tf.maximum(p - clip, 0.0) if clip else p
    # -log(1 - p_m): from the logits while p_m = p (no clip), else from the shifted probability
    negative = -tf.math.log_sigmoid(-logits) if not clip else -tf.math.log(tf.maximum(1.0 - shifted, 1e-8))
    if gamma_neg:
        negative *= tf.pow(shifted, gamma_neg)
    return labels * positive + (1.0 - labels) * negative


def soft_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float) -> tf.Tensor:
    """Per-example BCE(sigmoid(t/T), sigmoid(s/T)), averaged over classes: shape [B]."""
    targets = tf.sigmoid(tf.cast(teacher_logits, tf.float32) / temperature)
    logits = tf.cast(student_logits, tf.float32) / temperature
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)


def distillation_loss(
    labels: tf.Tensor,
    student_logits: tf.Tensor,
    teacher_logits: tf.Tensor | None,
    alpha: float,
    temperature: float,
    kind: HardLoss = "bce",
    pos_weight: Sequence[float] | None = None,
) -> tf.Tensor:
    """Per-example ``alpha*hard + (1-alpha)*T^2*soft``; plain hard loss without a teacher."""
    hard = hard_loss(labels, student_logits, kind, pos_weight)
    if teacher_logits is None or alpha >= 1.0:
        return hard
    soft = soft_loss(teacher_logits, student_logits, temperature)
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft
