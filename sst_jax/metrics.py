"""Segmentation metrics from a streaming confusion matrix.

The confusion matrix is accumulated on device (``confusion_matrix`` is a
pure jnp function); the scores are computed once at the end on the host.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sst_jax.domains import IGNORE_ID


def confusion_matrix(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int,
                     mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """``[C, C]`` int32 counts, rows = ground truth, columns = prediction.

  Pixels whose label is ``IGNORE_ID`` or out of range, or where ``mask`` is
  false, are not counted.
  """
  # uint8 labels would wrap around in ``label * num_classes``.
  label = label.astype(jnp.int32)
  pred = pred.astype(jnp.int32)
  valid = (label != IGNORE_ID) & (label >= 0) & (label < num_classes)
  if mask is not None:
    valid &= mask
  index = jnp.where(valid, label * num_classes + pred, 0).reshape(-1)
  counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(
      valid.reshape(-1).astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def scores(confusion: np.ndarray, class_names=None) -> dict:
  """mIoU and accuracies from a confusion matrix.

  Returns:
    dict with ``miou`` (mean over classes present in the ground truth),
    ``miou_all`` (mean over all classes; a class with no ground truth and no
    prediction scores 0), ``pixel_acc``, ``mean_acc`` (over present classes),
    ``mean_acc_all`` (over all classes, absent ones scoring 0), ``iou`` (per
    class, NaN where a class has neither ground truth nor prediction),
    ``acc`` (per class: the fraction of its ground-truth pixels predicted as
    it, NaN where it has no ground truth) and ``iou_by_class`` and
    ``acc_by_class`` (None for NaN) when ``class_names`` is given.
    ``miou_all``,
    ``pixel_acc`` and ``mean_acc_all`` are SCHP's "Mean IU", "Pixel
    accuracy" and "Mean accuracy" (its ``utils/miou.py``).
  """
  conf = np.asarray(confusion, np.float64)
  tp = np.diag(conf)
  gt = conf.sum(axis=1)
  pred = conf.sum(axis=0)
  union = gt + pred - tp
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.where(union > 0, tp / union, np.nan)
    acc = np.where(gt > 0, tp / gt, np.nan)
  present = gt > 0
  out = {
      'miou': float(np.mean(np.nan_to_num(iou[present]))) if present.any()
              else float('nan'),
      'miou_all': float(np.mean(np.nan_to_num(iou))),
      'pixel_acc': float(tp.sum() / max(conf.sum(), 1)),
      'mean_acc': float(np.mean(acc[present])) if present.any()
                  else float('nan'),
      'mean_acc_all': float(np.mean(np.nan_to_num(acc))),
      'iou': iou,
      'acc': acc,
  }
  if class_names is not None:
    out['iou_by_class'] = {n: (None if np.isnan(v) else float(v))
                           for n, v in zip(class_names, iou)}
    out['acc_by_class'] = {n: (None if np.isnan(v) else float(v))
                           for n, v in zip(class_names, acc)}
  return out
