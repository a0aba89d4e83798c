"""Losses, per example, for reduction over the global batch.

Multi-label: every class is an independent sigmoid. The distillation term is the per-class
binary cross-entropy between sigmoid(teacher/T) and sigmoid(student/T), scaled by T^2 so its
gradient keeps the same size whatever T (Hinton et al., 2015).
"""

from __future__ import annotations

import tensorflow as tf


def hard_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-example sigmoid cross-entropy, averaged over classes: shape [B]."""
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=-1)


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
) -> tf.Tensor:
    """Per-example ``alpha*hard + (1-alpha)*T^2*soft``; plain hard loss without a teacher."""
    hard = hard_loss(labels, student_logits)
    if teacher_logits is None or alpha >= 1.0:
        return hard
    soft = soft_loss(teacher_logits, student_logits, temperature)
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft
