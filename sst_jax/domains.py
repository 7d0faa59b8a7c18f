"""Label-domain registry: class names, palettes, left/right flip pairs.

A *label domain* is one label set: the classes a dataset annotates, in the
dataset's own id order. The same pixel carries different labels in different
domains (a sleeve is ``upper-arms`` in PASCAL-Person-Part and
``upper-clothes`` in ATR), which is what SST learns to relate.

Every domain uses 255 as the ignore id. Left/right pairs name classes that
swap when an image is flipped horizontally; flipped labels are always made
from these pairs, never from shipped mirrored annotations.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

IGNORE_ID = 255


def voc_palette(num_classes: int) -> np.ndarray:
  """The PASCAL VOC colour map (bit-interleaved), used by every benchmark here.

  Returns:
    uint8 array ``[num_classes, 3]``; class 0 is black.
  """
  palette = np.zeros((num_classes, 3), np.uint8)
  for c in range(num_classes):
    label, r, g, b = c, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= (label & 1) << shift
      g |= ((label >> 1) & 1) << shift
      b |= ((label >> 2) & 1) << shift
      label >>= 3
    palette[c] = (r, g, b)
  return palette


@dataclasses.dataclass(frozen=True)
class Domain:
  """One label domain.

  Attributes:
    name: registry key, e.g. ``'cihp'`` or ``'synthetic_pascal'``.
    classes: class names in the benchmark's own id order (id = position).
    flip_pairs: pairs of class ids that swap under a horizontal flip.

  Every domain's ignore id is ``IGNORE_ID``.
  """
  name: str
  classes: tuple[str, ...]
  flip_pairs: tuple[tuple[int, int], ...] = ()

  def __post_init__(self):
    seen = set()
    for a, b in self.flip_pairs:
      for c in (a, b):
        if not 0 <= c < len(self.classes) or c in seen:
          raise ValueError(f'domain {self.name!r}: bad flip pair ({a}, {b})')
        seen.add(c)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def palette(self) -> np.ndarray:
    return voc_palette(self.num_classes)

  @property
  def flip_permutation(self) -> np.ndarray:
    """``perm[c]`` is the class that ``c`` becomes after a horizontal flip."""
    perm = np.arange(self.num_classes)
    for a, b in self.flip_pairs:
      perm[a], perm[b] = b, a
    return perm

  def flip_label_lut(self) -> np.ndarray:
    """A 256-entry uint8 lookup table applying :attr:`flip_permutation`.

    Values outside the class range (the ignore id) map to themselves.
    """
    lut = np.arange(256, dtype=np.uint8)
    lut[:self.num_classes] = self.flip_permutation
    return lut

  def to_json(self) -> dict:
    return {'name': self.name, 'classes': list(self.classes),
            'flip_pairs': [list(p) for p in self.flip_pairs]}


PASCAL_PERSON_PART_CLASSES = (
    'background', 'head', 'torso', 'upper-arms', 'lower-arms', 'upper-legs',
    'lower-legs')

ATR_CLASSES = (
    'background', 'hat', 'hair', 'sunglasses', 'upper-clothes', 'skirt',
    'pants', 'dress', 'belt', 'left-shoe', 'right-shoe', 'face', 'left-leg',
    'right-leg', 'left-arm', 'right-arm', 'bag', 'scarf')
ATR_FLIP_PAIRS = ((9, 10), (12, 13), (14, 15))

CIHP_CLASSES = (
    'background', 'hat', 'hair', 'glove', 'sunglasses', 'upper-clothes',
    'dress', 'coat', 'socks', 'pants', 'torso-skin', 'scarf', 'skirt', 'face',
    'left-arm', 'right-arm', 'left-leg', 'right-leg', 'left-shoe',
    'right-shoe')
LIP_CLASSES = CIHP_CLASSES[:10] + ('jumpsuits',) + CIHP_CLASSES[11:]
CIHP_FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))


def _registry(domains: Iterable[Domain]) -> dict[str, Domain]:
  return {d.name: d for d in domains}


DOMAINS: dict[str, Domain] = _registry([
    Domain('pascal_person_part', PASCAL_PERSON_PART_CLASSES),
    Domain('atr', ATR_CLASSES, ATR_FLIP_PAIRS),
    Domain('cihp', CIHP_CLASSES, CIHP_FLIP_PAIRS),
    Domain('lip', LIP_CLASSES, CIHP_FLIP_PAIRS),
    # The embedded synthetic dataset labels the same procedural humans in the
    # four benchmarks' label sets (see sst_jax/data/synthetic.py).
    Domain('synthetic_pascal', PASCAL_PERSON_PART_CLASSES),
    Domain('synthetic_atr', ATR_CLASSES, ATR_FLIP_PAIRS),
    Domain('synthetic_cihp', CIHP_CLASSES, CIHP_FLIP_PAIRS),
    Domain('synthetic_lip', LIP_CLASSES, CIHP_FLIP_PAIRS),
])


def register(domain: Domain) -> Domain:
  """Adds a new label domain (e.g. a user's own dataset) to the registry."""
  if domain.name in DOMAINS and DOMAINS[domain.name] != domain:
    raise ValueError(f'domain {domain.name!r} is already registered with '
                     'different classes')
  DOMAINS[domain.name] = domain
  return domain


def get_domain(name: str) -> Domain:
  """Looks a domain up by name.

  Raises:
    KeyError: with the list of known names when ``name`` is unknown.
  """
  try:
    return DOMAINS[name]
  except KeyError:
    raise KeyError(f'unknown label domain {name!r}; known domains: '
                   f'{", ".join(sorted(DOMAINS))}') from None


def get_domains(names: Sequence[str]) -> tuple[Domain, ...]:
  if len(set(names)) != len(names):
    raise ValueError(f'duplicate domain in {list(names)}')
  return tuple(get_domain(n) for n in names)


def from_json(entry: dict) -> Domain:
  """The domain :meth:`Domain.to_json` wrote.

  Older checkpoints and exports also hold ``'ignore_id'`` (always
  ``IGNORE_ID``); it is ignored.
  """
  return Domain(entry['name'], tuple(entry['classes']),
                tuple(tuple(p) for p in entry['flip_pairs']))
