"""Confusion-matrix metrics against a plain numpy reference."""

import numpy as np
import pytest

from sst_jax import metrics


def numpy_confusion(pred, label, c, ignore=255):
  conf = np.zeros((c, c), np.int64)
  for p, l in zip(pred.ravel(), label.ravel()):
    if l == ignore or l >= c:
      continue
    conf[l, p] += 1
  return conf


def test_confusion_matrix_matches_numpy_with_ignore():
  rng = np.random.default_rng(0)
  c = 7
  label = rng.integers(0, c, (3, 17, 19))
  label[rng.random(label.shape) < 0.2] = 255
  pred = rng.integers(0, c, label.shape)
  got = np.asarray(metrics.confusion_matrix(pred, label, c))
  np.testing.assert_array_equal(got, numpy_confusion(pred, label, c))
  assert got.sum() == np.sum(label != 255)


@pytest.mark.parametrize('pred_dtype', [np.uint8, np.int32])
def test_confusion_matrix_uint8_labels_with_many_classes(pred_dtype):
  # The pipeline delivers uint8 labels; with 20 classes ``label * C`` leaves
  # the uint8 range for every class >= 13.
  rng = np.random.default_rng(3)
  c = 20
  label = rng.integers(0, c, (2, 16, 16)).astype(np.uint8)
  label[0, :3] = 255
  pred = rng.integers(0, c, label.shape).astype(pred_dtype)
  got = np.asarray(metrics.confusion_matrix(pred, label, c))
  want = numpy_confusion(pred.astype(np.int64), label.astype(np.int64), c)
  np.testing.assert_array_equal(got, want)
  assert got[13:].sum() == np.sum((label >= 13) & (label < c))


def test_mask_excludes_samples():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 4, (2, 5, 5))
  pred = rng.integers(0, 4, (2, 5, 5))
  mask = np.array([True, False])[:, None, None]
  got = np.asarray(metrics.confusion_matrix(pred, label, 4, mask))
  np.testing.assert_array_equal(got, numpy_confusion(pred[:1], label[:1], 4))


def test_scores_match_reference():
  rng = np.random.default_rng(2)
  c = 5
  label = rng.integers(0, c - 1, (4, 16, 16))  # class 4 never in ground truth
  label[:, :2] = 255
  pred = np.where(rng.random(label.shape) < 0.7, label, rng.integers(0, c,
                                                                     label.shape))
  pred = np.where(label == 255, 0, pred)
  conf = numpy_confusion(pred, label, c)
  s = metrics.scores(conf, [f'c{i}' for i in range(c)])
  ious = []
  for k in range(c):
    tp = np.sum((pred == k) & (label == k))
    union = np.sum(((pred == k) | (label == k)) & (label != 255))
    ious.append(tp / union if union else np.nan)
  ious = np.array(ious)
  present = [k for k in range(c) if np.any(label == k)]
  assert s['miou'] == pytest.approx(np.mean(ious[present]))
  assert s['miou_all'] == pytest.approx(np.mean(np.nan_to_num(ious)))
  valid = label != 255
  assert s['pixel_acc'] == pytest.approx(np.mean(pred[valid] == label[valid]))
  accs = [np.mean(pred[label == k] == k) for k in present]
  assert s['mean_acc'] == pytest.approx(np.mean(accs))
  assert s['iou_by_class']['c0'] == pytest.approx(ious[0])
  for k in range(c):  # class 4 has no ground truth: no accuracy
    want = np.mean(pred[label == k] == k) if k in present else None
    assert s['acc_by_class'][f'c{k}'] == (None if want is None
                                          else pytest.approx(want))


def test_perfect_prediction_scores_one():
  label = np.array([[[0, 1], [2, 255]]])
  s = metrics.scores(np.asarray(metrics.confusion_matrix(
      np.where(label == 255, 0, label), label, 3)))
  assert s['miou'] == 1.0 and s['pixel_acc'] == 1.0
