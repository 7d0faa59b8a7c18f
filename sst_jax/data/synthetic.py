"""The embedded synthetic multi-domain human-parsing dataset.

Procedural people are rendered with numpy into an RGB image and two aligned
maps:

* a **body-part map** (:data:`PART_NAMES`): head (incl. neck), torso and the
  eight left/right upper/lower arm/leg parts. Left/right are the *person's*
  sides. Figures face the camera, so a person's left side appears on the
  image's right.
* an **appearance map** (:data:`APPEARANCE_NAMES`): skin, hair, face and the
  garments and accessories worn over the body.

Each synthetic label domain maps a pixel's (body part, appearance) pair to its
own class list through an explicit table (:data:`DOMAIN_TABLES`, built from
:data:`PASCAL_PART_CLASSES` and :data:`APPEARANCE_CLASSES`): the same pixel
thus carries different labels in different domains, as in the real
benchmarks. Each domain also draws its images from its own style
distribution (:data:`STYLES`): PASCAL-like crowds of 1-3 people in varied
scenes, ATR-like single full-body fashion shots, CIHP-like crowded scenes of
2-4 people, LIP-like single people in varied crops and poses.

Colour does not identify classes: every garment and accessory draws colour
and texture (solid, stripes, checker, noise) from one shared distribution,
skin tones and hair colours vary per person, and background distractor shapes
use the same colour distributions. Shape, position and context do.

Every example is a pure function of (seed, domain, split, index);
:class:`SyntheticSource` is a grain-compatible random-access data source.

Draw a contact sheet of every domain with::

  python -m sst_jax.data.synthetic --output=docs/synthetic_contact_sheet.png
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import math
import os
import subprocess
import sys
from typing import Any, Mapping

import numpy as np

from sst_jax import domains as domains_lib

SYNTHETIC_DOMAINS = ('synthetic_pascal', 'synthetic_atr', 'synthetic_cihp',
                     'synthetic_lip')
SPLITS = ('train', 'validation')
_SPLIT_ALIASES = {'val': 'validation'}

# Default split sizes: PASCAL-Person-Part stays the smallest domain, as in
# the real benchmarks.
TRAIN_SIZES = {'synthetic_pascal': 500, 'synthetic_atr': 1500,
               'synthetic_cihp': 2000, 'synthetic_lip': 2000}
VALIDATION_SIZES = {d: 100 for d in SYNTHETIC_DOMAINS}
SPLIT_SIZES = {'train': TRAIN_SIZES, 'validation': VALIDATION_SIZES}

# ---------------------------------------------------------------------------
# Label spaces of the renderer.
# ---------------------------------------------------------------------------

PART_NAMES = ('background', 'head', 'torso', 'left-upper-arm',
              'right-upper-arm', 'left-lower-arm', 'right-lower-arm',
              'left-upper-leg', 'right-upper-leg', 'left-lower-leg',
              'right-lower-leg')
# Part ids that swap under a horizontal flip.
PART_FLIP_PAIRS = ((3, 4), (5, 6), (7, 8), (9, 10))

APPEARANCE_NAMES = ('background', 'skin', 'hair', 'face', 'hat',
                    'sunglasses', 'upper-clothes', 'coat', 'dress',
                    'jumpsuit', 'skirt', 'pants', 'belt', 'scarf', 'glove',
                    'sock', 'shoe', 'bag')

(_BG, _HEAD, _TORSO, _L_UARM, _R_UARM, _L_LARM, _R_LARM, _L_ULEG, _R_ULEG,
 _L_LLEG, _R_LLEG) = range(len(PART_NAMES))
(_A_BG, _SKIN, _HAIR, _FACE, _HAT, _SUNGLASSES, _UPPER, _COAT, _DRESS,
 _JUMPSUIT, _SKIRT, _PANTS, _BELT, _SCARF, _GLOVE, _SOCK, _SHOE,
 _BAG) = range(len(APPEARANCE_NAMES))

# Body region and side of each part, used to resolve the mapping tables.
_PART_REGION = ('background', 'head', 'torso', 'arm', 'arm', 'arm', 'arm',
                'leg', 'leg', 'leg', 'leg')
_PART_SIDE = (None, None, None, 'left', 'right', 'left', 'right', 'left',
              'right', 'left', 'right')

# ---------------------------------------------------------------------------
# Mapping tables: (body part, appearance) -> class of each domain.
# ---------------------------------------------------------------------------

# synthetic_pascal labels body parts only; the appearance does not matter
# (a bag, the only non-background appearance on part 'background', stays
# background).
PASCAL_PART_CLASSES = {
    'background': 'background', 'head': 'head', 'torso': 'torso',
    'left-upper-arm': 'upper-arms', 'right-upper-arm': 'upper-arms',
    'left-lower-arm': 'lower-arms', 'right-lower-arm': 'lower-arms',
    'left-upper-leg': 'upper-legs', 'right-upper-leg': 'upper-legs',
    'left-lower-leg': 'lower-legs', 'right-lower-leg': 'lower-legs',
}

# The garment domains label the appearance. An entry is either one class
# name, or a dict from body region ('background', 'head', 'torso', 'arm',
# 'leg'; '*' = any other) to a class name, where '{side}' takes the
# person's side ('left'/'right') from the body-part map.
_SIDE_SKIN = {'head': 'face', 'arm': '{side}-arm', 'leg': '{side}-leg'}
APPEARANCE_CLASSES: dict[str, dict[str, Any]] = {
    'synthetic_atr': {
        'background': 'background',
        # ATR has no torso-skin class: a neckline/midriff counts as the top.
        'skin': {**_SIDE_SKIN, '*': 'upper-clothes'},
        'hair': 'hair', 'face': 'face', 'hat': 'hat',
        'sunglasses': 'sunglasses', 'upper-clothes': 'upper-clothes',
        'coat': 'upper-clothes',  # no coat class in ATR
        'dress': 'dress',
        'jumpsuit': {'leg': 'pants', '*': 'upper-clothes'},  # no jumpsuit
        'skirt': 'skirt', 'pants': 'pants', 'belt': 'belt', 'scarf': 'scarf',
        'glove': {'arm': '{side}-arm', '*': 'background'},  # no glove class
        'sock': {'leg': '{side}-leg', '*': 'background'},  # no sock class
        'shoe': {'leg': '{side}-shoe', '*': 'background'},
        'bag': 'bag',
    },
    'synthetic_cihp': {
        'background': 'background',
        'skin': {**_SIDE_SKIN, '*': 'torso-skin'},
        'hair': 'hair', 'face': 'face', 'hat': 'hat',
        'sunglasses': 'sunglasses', 'upper-clothes': 'upper-clothes',
        'coat': 'coat', 'dress': 'dress',
        'jumpsuit': {'leg': 'pants', '*': 'upper-clothes'},  # no jumpsuit
        'skirt': 'skirt', 'pants': 'pants',
        'belt': 'pants',  # no belt class: the waistband of the lower garment
        'scarf': 'scarf', 'glove': 'glove', 'sock': 'socks',
        'shoe': {'leg': '{side}-shoe', '*': 'background'},
        'bag': 'background',  # CIHP does not label bags
    },
    'synthetic_lip': {
        'background': 'background',
        # LIP has no torso-skin class: a neckline/midriff counts as the top.
        'skin': {**_SIDE_SKIN, '*': 'upper-clothes'},
        'hair': 'hair', 'face': 'face', 'hat': 'hat',
        'sunglasses': 'sunglasses', 'upper-clothes': 'upper-clothes',
        'coat': 'coat', 'dress': 'dress', 'jumpsuit': 'jumpsuits',
        'skirt': 'skirt', 'pants': 'pants',
        'belt': 'pants',  # no belt class: the waistband of the lower garment
        'scarf': 'scarf', 'glove': 'glove', 'sock': 'socks',
        'shoe': {'leg': '{side}-shoe', '*': 'background'},
        'bag': 'background',  # LIP does not label bags
    },
}


def _resolve(entry: Any, part: int, domain: domains_lib.Domain) -> int:
  """Class id of one (part, appearance-entry) pair."""
  region, side = _PART_REGION[part], _PART_SIDE[part]
  if isinstance(entry, str):
    name = entry
  elif region in entry:
    name = entry[region]
  else:
    name = entry['*']
  if '{side}' in name:
    if side is None:
      raise ValueError(f'{domain.name}: {name!r} needs a side but part '
                       f'{PART_NAMES[part]!r} has none')
    name = name.format(side=side)
  return domain.classes.index(name)


def _build_tables() -> dict[str, np.ndarray]:
  tables = {}
  pascal = domains_lib.get_domain('synthetic_pascal')
  table = np.zeros((len(PART_NAMES), len(APPEARANCE_NAMES)), np.uint8)
  for p, part in enumerate(PART_NAMES):
    table[p, :] = pascal.classes.index(PASCAL_PART_CLASSES[part])
  tables['synthetic_pascal'] = table
  for name, entries in APPEARANCE_CLASSES.items():
    domain = domains_lib.get_domain(name)
    table = np.zeros((len(PART_NAMES), len(APPEARANCE_NAMES)), np.uint8)
    for a, app in enumerate(APPEARANCE_NAMES):
      for p in range(len(PART_NAMES)):
        table[p, a] = _resolve(entries[app], p, domain)
    tables[name] = table
  return tables


# DOMAIN_TABLES[domain][part, appearance] -> class id of that domain.
DOMAIN_TABLES: dict[str, np.ndarray] = _build_tables()


def to_domain_label(parts: np.ndarray, appearance: np.ndarray,
                    domain: str) -> np.ndarray:
  """Maps aligned (body part, appearance) maps to a domain's class ids.

  Args:
    parts: integer ``[H, W]`` body-part ids (:data:`PART_NAMES`).
    appearance: integer ``[H, W]`` appearance ids (:data:`APPEARANCE_NAMES`).
    domain: one of :data:`SYNTHETIC_DOMAINS`.

  Returns:
    uint8 ``[H, W]`` class ids of ``domain``.
  """
  return _table(domain)[np.asarray(parts), np.asarray(appearance)]


def _table(domain: str) -> np.ndarray:
  try:
    return DOMAIN_TABLES[domain]
  except KeyError:
    raise ValueError(f'unknown synthetic domain {domain!r}; known: '
                     f'{", ".join(SYNTHETIC_DOMAINS)}') from None


# ---------------------------------------------------------------------------
# Domain styles.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Style:
  """How one domain composes its images (all lengths relative to height).

  Attributes:
    num_persons: possible person counts.
    num_persons_p: their probabilities.
    height: (lo, hi) person height / image height for a single person.
    crowd_height: the same when several persons share the image.
    crop_p: probability of a close-up crop (person taller than the image,
      legs cut off).
    crop_height: (lo, hi) person height / image height of a close-up.
    bottom_cut_p: probability that a person's feet may leave the image.
    arm_up_p: probability that an arm is raised (otherwise hangs down).
    arm_bend: (lo, hi) elbow bend in degrees (negative = inwards).
    leg_spread: (lo, hi) outward hip angle in degrees.
    distractors: (lo, hi) number of background distractor shapes.
    occluder_p: probability of a foreground occluder (labelled background).
    plain_background_p: probability of a light, low-contrast backdrop.
  """
  num_persons: tuple[int, ...]
  num_persons_p: tuple[float, ...]
  height: tuple[float, float]
  crowd_height: tuple[float, float]
  crop_p: float
  crop_height: tuple[float, float]
  bottom_cut_p: float
  arm_up_p: float
  arm_bend: tuple[float, float]
  leg_spread: tuple[float, float]
  distractors: tuple[int, int]
  occluder_p: float
  plain_background_p: float


STYLES: dict[str, Style] = {
    # PASCAL-Person-Part: 1-3 people, varied scenes and poses.
    'synthetic_pascal': Style(
        num_persons=(1, 2, 3), num_persons_p=(0.45, 0.35, 0.2),
        height=(0.75, 0.95), crowd_height=(0.6, 0.9), crop_p=0.15,
        crop_height=(1.15, 1.5), bottom_cut_p=0.3, arm_up_p=0.3,
        arm_bend=(-60, 80), leg_spread=(-3, 22), distractors=(3, 9),
        occluder_p=0.1, plain_background_p=0.1),
    # ATR: one standing person, full body, fashion-like backdrop.
    'synthetic_atr': Style(
        num_persons=(1,), num_persons_p=(1.0,), height=(0.86, 0.96),
        crowd_height=(0.86, 0.96), crop_p=0.0, crop_height=(1.0, 1.0),
        bottom_cut_p=0.0, arm_up_p=0.05, arm_bend=(-35, 25),
        leg_spread=(0, 10), distractors=(0, 3), occluder_p=0.0,
        plain_background_p=0.7),
    # CIHP: 2-4 people, crowded, overlapping.
    'synthetic_cihp': Style(
        num_persons=(2, 3, 4), num_persons_p=(0.4, 0.35, 0.25),
        height=(0.7, 0.95), crowd_height=(0.62, 0.92), crop_p=0.0,
        crop_height=(1.0, 1.0), bottom_cut_p=0.25, arm_up_p=0.2,
        arm_bend=(-50, 70), leg_spread=(-3, 18), distractors=(1, 6),
        occluder_p=0.05, plain_background_p=0.1),
    # LIP: one person, varied crops (partial bodies) and poses.
    'synthetic_lip': Style(
        num_persons=(1,), num_persons_p=(1.0,), height=(0.8, 0.95),
        crowd_height=(0.8, 0.95), crop_p=0.45, crop_height=(1.15, 1.7),
        bottom_cut_p=0.2, arm_up_p=0.35, arm_bend=(-80, 100),
        leg_spread=(-5, 28), distractors=(1, 6), occluder_p=0.0,
        plain_background_p=0.25),
}

# ---------------------------------------------------------------------------
# Colours and textures (shared by every garment class and the distractors).
# ---------------------------------------------------------------------------


def _garment_colour(rng: np.random.Generator) -> np.ndarray:
  """One colour from the distribution shared by every garment class."""
  hue, grey, sat, val = rng.random(4)
  sat = 0.12 * sat if grey < 0.2 else 0.2 + 0.7 * sat
  val = 0.12 + 0.83 * val
  return np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32) * 255


_SKIN_LIGHT = np.array([245, 215, 190], np.float32)
_SKIN_DARK = np.array([85, 55, 40], np.float32)
_HAIR_COLOURS = np.array([[20, 15, 12], [60, 40, 25], [110, 70, 35],
                          [200, 165, 100], [150, 60, 25], [170, 170, 170]],
                         np.float32)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
  t = rng.random()
  colour = (1 - t) * _SKIN_LIGHT + t * _SKIN_DARK
  return np.clip(colour + rng.normal(0, 10, 3), 0, 255).astype(np.float32)


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
  if rng.random() < 0.12:  # dyed
    return _garment_colour(rng)
  colour = _HAIR_COLOURS[_pick(rng, range(len(_HAIR_COLOURS)))]
  return np.clip(colour + rng.normal(0, 12, 3), 0, 255).astype(np.float32)


class _Texture:
  """Colour as a function of pixel coordinates: solid/stripes/checker/noise."""

  def __init__(self, kind: str, c1: np.ndarray, c2: np.ndarray,
               period: float, angle: float, phase: float,
               rng: np.random.Generator):
    self.kind, self.c1, self.c2 = kind, c1, c2
    self.period, self.phase, self.rng = max(period, 2.0), phase, rng
    self.cos, self.sin = math.cos(angle), math.sin(angle)

  def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    if self.kind == 'solid':
      return np.broadcast_to(self.c1, (y.size, 3))
    if self.kind == 'noise':
      w = self.rng.random(y.size, dtype=np.float32) * 0.6
      return self.c1 + w[:, None] * (self.c2 - self.c1)
    u = (x * self.cos + y * self.sin) / self.period + self.phase
    if self.kind == 'stripes':
      sel = (u % 1.0) < 0.5
    else:  # checker
      v = (y * self.cos - x * self.sin) / self.period
      sel = (np.floor(u) + np.floor(v)) % 2 < 1
    return np.where(sel[:, None], self.c1, self.c2)


def _solid(colour: np.ndarray, rng: np.random.Generator) -> _Texture:
  return _Texture('solid', colour, colour, 4.0, 0.0, 0.0, rng)


_TEXTURE_KINDS = ('solid', 'stripes', 'checker', 'noise')
_TEXTURE_CDF = np.cumsum((0.4, 0.25, 0.15, 0.2))


def _garment_texture(rng: np.random.Generator, scale: float) -> _Texture:
  """A texture from the one distribution every garment class shares."""
  r_kind, r_angle, r_period, phase, a = rng.random(5)
  kind = _TEXTURE_KINDS[min(int(np.searchsorted(_TEXTURE_CDF, r_kind)), 3)]
  if kind == 'solid':  # skip drawing unused parameters
    return _solid(_garment_colour(rng), rng)
  angle = (0.0, math.pi / 2, a * math.pi)[int(r_angle * 3)]
  return _Texture(kind, _garment_colour(rng), _garment_colour(rng),
                  (0.025 + 0.045 * r_period) * scale, angle, phase, rng)


def _distractor_texture(rng: np.random.Generator, scale: float) -> _Texture:
  """Distractors look like garments, skin or hair, but are background."""
  r = rng.random()
  if r < 0.6:
    return _garment_texture(rng, scale)
  colour = _skin_colour(rng) if r < 0.85 else _hair_colour(rng)
  return _solid(colour, rng)


# ---------------------------------------------------------------------------
# Rasterization: every shape is evaluated on its own bounding box only.
# ---------------------------------------------------------------------------

_Box = tuple[int, int, int, int]


class _Canvas:
  """Body-part, appearance and owner maps, painted back to front.

  Painting only writes ids; colours are resolved once at the end
  (:meth:`colour`): a pixel's colour is the texture its *owner* (a person,
  a distractor, ...) wears for the pixel's appearance class. This keeps the
  per-shape cost to a few masked writes.
  """

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width
    self.parts = np.zeros((height, width), np.uint8)
    self.app = np.zeros((height, width), np.uint8)
    self.owner = np.zeros((height, width), np.uint8)  # 0 = backdrop
    self.shade = np.ones((height, width), np.float32)
    self.owners: list[Mapping[int, _Texture]] = [{}]
    self.yc = np.arange(height, dtype=np.float32) + 0.5
    self.xc = np.arange(width, dtype=np.float32) + 0.5

  def add_owner(self, textures: Mapping[int, _Texture]) -> int:
    """Registers textures by appearance id; returns the owner id."""
    self.owners.append(textures)
    if len(self.owners) > 255:
      raise ValueError('too many shapes on one canvas')
    return len(self.owners) - 1

  def box(self, x0: float, y0: float, x1: float, y1: float) -> _Box | None:
    i0, i1 = max(int(y0), 0), min(int(math.ceil(y1)) + 1, self.height)
    j0, j1 = max(int(x0), 0), min(int(math.ceil(x1)) + 1, self.width)
    if i0 >= i1 or j0 >= j1:
      return None
    return i0, i1, j0, j1

  def grid(self, box: _Box, ox: float = 0.0, oy: float = 0.0):
    i0, i1, j0, j1 = box
    return self.xc[None, j0:j1] - ox, self.yc[i0:i1, None] - oy

  def capsule(self, p0, p1, r: float):
    """Pixels within ``r`` of segment p0-p1; also the position t in [0, 1]."""
    box = self.box(min(p0[0], p1[0]) - r, min(p0[1], p1[1]) - r,
                   max(p0[0], p1[0]) + r, max(p0[1], p1[1]) + r)
    if box is None:
      return None
    px, py = self.grid(box, p0[0], p0[1])
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = (px * dx + py * dy) * (1.0 / (dx * dx + dy * dy + 1e-6))
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    ex, ey = px - t * dx, py - t * dy
    d2 = ex * ex + ey * ey
    mask = d2 <= r * r
    if not mask.any():
      return None
    # Shading darkens the rim so that overlapping limbs stay visible.
    return box, mask, t, 1.0 - 0.3 * d2 / (r * r)

  def ellipse(self, c, rx: float, ry: float):
    """Pixels of an axis-aligned ellipse; also normalized coordinates."""
    box = self.box(c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)
    if box is None:
      return None
    px, py = self.grid(box, c[0], c[1])
    u, v = px / rx, py / ry
    r2 = u * u + v * v
    mask = r2 <= 1.0
    if not mask.any():
      return None
    return box, mask, u, v, r2

  def polygon(self, points):
    """Pixels inside a convex polygon (vertices in either orientation)."""
    xs, ys = [q[0] for q in points], [q[1] for q in points]
    box = self.box(min(xs), min(ys), max(xs), max(ys))
    if box is None:
      return None
    px, py = self.grid(box)
    n = len(points)
    pts = [(float(a), float(b)) for a, b in points]
    area = sum(pts[k][0] * pts[(k + 1) % n][1] - pts[(k + 1) % n][0] * pts[k][1]
               for k in range(n))
    sign = 1.0 if area >= 0 else -1.0
    mask = None
    for k in range(n):
      (ax, ay), (bx, by) = pts[k], pts[(k + 1) % n]
      inside = sign * ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) >= 0
      mask = inside if mask is None else mask & inside
    if not mask.any():
      return None
    return box, mask

  def paint(self, box: _Box, mask: np.ndarray, part, app, owner: int,
            shade: np.ndarray | None = None) -> None:
    """Writes part, appearance and owner ids where ``mask`` holds.

    ``part`` and ``app`` are scalars or arrays shaped like ``mask``.
    """
    i0, i1, j0, j1 = box
    self.parts[i0:i1, j0:j1][mask] = (
        part[mask] if isinstance(part, np.ndarray) else part)
    self.app[i0:i1, j0:j1][mask] = (
        app[mask] if isinstance(app, np.ndarray) else app)
    self.owner[i0:i1, j0:j1][mask] = owner
    # Reset the shade of anything painted over.
    self.shade[i0:i1, j0:j1][mask] = 1.0 if shade is None else shade[mask]

  def colour(self, backdrop: np.ndarray) -> np.ndarray:
    """Resolves pixel colours; ``backdrop`` shows where nothing was painted."""
    num_app = len(APPEARANCE_NAMES)
    key = self.owner.astype(np.int32) * num_app + self.app
    present = np.flatnonzero(np.bincount(key.ravel()))
    lut = np.zeros((present[-1] + 1, 3), np.float32)
    patterned = []
    for k in present:
      owner, app = divmod(int(k), num_app)
      if owner == 0:
        continue
      texture = self.owners[owner][app]
      if texture.kind == 'solid':
        lut[k] = texture.c1
      else:
        patterned.append((k, texture))
    image = np.take(lut, key, axis=0)  # much faster than lut[key]
    for k, texture in patterned:
      iy, ix = np.nonzero(key == k)
      image[iy, ix] = texture(self.yc[iy], self.xc[ix])
    # Unpainted pixels have a black LUT entry and shade 1: add the backdrop.
    image *= self.shade[..., None]
    image += backdrop * (self.owner == 0)[..., None]
    return image


# ---------------------------------------------------------------------------
# People.
# ---------------------------------------------------------------------------

# Body proportions as fractions of the person's height h (top of head to the
# soles). Limbs are thick and heads large so that parts stay learnable at
# 128x128.
_HEAD_RX, _HEAD_RY = 0.062, 0.078
_NECK_R = 0.03
_SHOULDER_Y = 2 * _HEAD_RY + 0.03
_SHOULDER_W, _WAIST_W, _HIP_W = 0.105, 0.08, 0.088
_HIP_Y = 0.53
_UARM_LEN, _LARM_LEN = 0.165, 0.15
_UARM_R, _LARM_R, _HAND_R = 0.034, 0.029, 0.034
_ULEG_LEN, _LLEG_LEN, _ULEG_R, _LLEG_R = 0.22, 0.21, 0.05, 0.04
_LEG_X = 0.05


def _direction(angle_deg: float, side: int) -> tuple[float, float]:
  """Unit vector at ``angle_deg`` from straight down, outwards on ``side``."""
  a = math.radians(angle_deg)
  return side * math.sin(a), math.cos(a)


@dataclasses.dataclass
class _Person:
  """A posed skeleton plus an outfit, in image pixel coordinates."""
  cx: float
  top: float
  h: float
  width_factor: float
  arm_angles: dict[int, tuple[float, float]]  # side -> (upper, lower)
  leg_angles: dict[int, tuple[float, float]]
  outfit: dict[str, Any]
  textures: Mapping[int, _Texture]

  def point(self, dx: float, dy: float) -> tuple[float, float]:
    return self.cx + dx * self.h, self.top + dy * self.h

  @property
  def hip_y(self) -> float:
    return self.top + _HIP_Y * self.h

  def arm(self, side: int):
    """Shoulder, elbow, wrist and hand centre of the arm on ``side``."""
    h, wf = self.h, self.width_factor
    shoulder = self.point(side * (_SHOULDER_W * wf - 0.028),
                          _SHOULDER_Y + 0.028)
    up, low = self.arm_angles[side]
    d1, d2 = _direction(up, side), _direction(low, side)
    elbow = (shoulder[0] + d1[0] * _UARM_LEN * h,
             shoulder[1] + d1[1] * _UARM_LEN * h)
    wrist = (elbow[0] + d2[0] * _LARM_LEN * h, elbow[1] + d2[1] * _LARM_LEN * h)
    hand = (wrist[0] + d2[0] * 0.028 * h, wrist[1] + d2[1] * 0.028 * h)
    return shoulder, elbow, wrist, hand

  def leg(self, side: int):
    """Hip joint, knee and ankle of the leg on ``side``."""
    h = self.h
    hip = self.point(side * _LEG_X * self.width_factor, _HIP_Y - 0.015)
    up, low = self.leg_angles[side]
    d1, d2 = _direction(up, side), _direction(low, side)
    knee = (hip[0] + d1[0] * _ULEG_LEN * h, hip[1] + d1[1] * _ULEG_LEN * h)
    ankle = (knee[0] + d2[0] * _LLEG_LEN * h, knee[1] + d2[1] * _LLEG_LEN * h)
    return hip, knee, ankle


def _uniform(rng: np.random.Generator, lo_hi) -> float:
  return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * rng.random()


def _pick(rng: np.random.Generator, options, p=None):
  """``rng.choice`` for short lists, without its per-call overhead."""
  r = rng.random()
  if p is None:
    return options[min(int(r * len(options)), len(options) - 1)]
  acc = 0.0
  for option, prob in zip(options, p):
    acc += prob
    if r < acc:
      return option
  return options[-1]


def _sample_pose(rng: np.random.Generator, style: Style):
  arms, legs = {}, {}
  for side in (1, -1):
    if rng.random() < style.arm_up_p:
      upper = rng.uniform(45, 160)
    else:
      upper = rng.uniform(4, 40)
    lower = upper + _uniform(rng, style.arm_bend)
    arms[side] = (float(upper), float(lower))
    up_leg = _uniform(rng, style.leg_spread)
    legs[side] = (up_leg, up_leg + float(rng.uniform(-10, 8)))
  return arms, legs


def _sample_outfit(rng: np.random.Generator, scale: float):
  """Garments, accessories and their textures for one person."""
  o: dict[str, Any] = {}
  r = rng.random()
  o['top'] = _UPPER if r < 0.6 else _DRESS if r < 0.82 else _JUMPSUIT
  o['bottom'] = None
  if o['top'] == _UPPER:
    o['bottom'] = _PANTS if rng.random() < 0.62 else _SKIRT
  # Sleeve length on the arm axis: 0 shoulder, 1 elbow, 2 wrist.
  o['sleeve'] = _uniform(rng, _pick(
      rng, ((-0.2, 0.05), (0.3, 0.7), (1.2, 1.6), (1.85, 2.0)),
      (0.2, 0.35, 0.15, 0.3)))
  o['coat'] = o['top'] != _JUMPSUIT and rng.random() < 0.25
  if o['coat']:
    o['coat_sleeve'] = float(rng.uniform(1.8, 2.0))
    o['coat_len'] = float(rng.uniform(0.04, 0.35))
    o['coat_open'] = float(rng.uniform(0.012, 0.045))
  # Legs on the leg axis: 0 hip, 1 knee, 2 ankle.
  if o['bottom'] == _PANTS or o['top'] == _JUMPSUIT:
    o['pants_len'] = _uniform(rng, _pick(
        rng, ((0.4, 0.9), (1.3, 1.6), (1.85, 2.0)), (0.3, 0.15, 0.55)))
  if o['bottom'] == _SKIRT or o['top'] == _DRESS:
    o['hem'] = float(rng.uniform(0.25, 1.0))  # fraction of hip->ankle
    o['flare'] = float(rng.uniform(0.1, 0.45))
  o['waist'] = float(rng.uniform(0.02, 0.06))
  o['neckline'] = (float(rng.uniform(0.025, 0.055)),
                   float(rng.uniform(0.005, 0.09)))
  o['crop'] = o['top'] == _UPPER and rng.random() < 0.12
  o['hair'] = _pick(rng, ('short', 'long', 'none'), (0.5, 0.44, 0.06))
  o['hat'] = rng.random() < 0.3
  o['brim'] = rng.random() < 0.5
  o['sunglasses'] = rng.random() < 0.3
  o['scarf'] = rng.random() < 0.25
  o['scarf_side'] = _pick(rng, (-1, 1))
  o['belt'] = rng.random() < 0.35
  o['glove'] = rng.random() < 0.25
  o['shoe'] = (float(rng.uniform(1.4, 1.7)) if rng.random() < 0.2 else
               float(rng.uniform(1.9, 2.0))) if rng.random() < 0.93 else None
  o['sock'] = float(rng.uniform(1.4, 1.75)) if rng.random() < 0.45 else None
  o['bag'] = rng.random() < 0.3
  o['bag_side'] = _pick(rng, (-1, 1))
  skin = _skin_colour(rng)
  textures = _GarmentTextures(rng, scale)
  textures[_SKIN] = textures[_FACE] = _solid(skin, rng)
  textures[_HAIR] = _solid(_hair_colour(rng), rng)
  return o, textures


class _GarmentTextures(dict):
  """Per-person textures; a garment's is drawn when it is first visible."""

  def __init__(self, rng: np.random.Generator, scale: float):
    super().__init__()
    self.rng, self.scale = rng, scale

  def __missing__(self, app: int) -> _Texture:
    self[app] = texture = _garment_texture(self.rng, self.scale)
    return texture


def _lower_part(person: _Person, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Body part under a garment hanging below the waist (skirt, coat tail)."""
  left = x > person.cx  # the person's left is the image's right
  knee_y = person.leg(1)[1][1]
  upper = np.where(left, _L_ULEG, _R_ULEG)
  lower = np.where(left, _L_LLEG, _R_LLEG)
  part = np.where(y < knee_y, upper, lower)
  return np.where(y < person.hip_y, _TORSO, part).astype(np.uint8)


def _draw_person(canvas: _Canvas, p: _Person) -> None:
  """Paints one person, back to front within the figure."""
  o, h = p.outfit, p.h
  tex = canvas.add_owner(p.textures)
  head_c = p.point(0.0, _HEAD_RY)
  rx, ry = _HEAD_RX * h, _HEAD_RY * h
  sy = p.top + _SHOULDER_Y * h
  hip_y = p.hip_y
  waist_y = hip_y - o['waist'] * h
  belt_h = 0.038 * h

  # Long hair hangs behind the neck and shoulders.
  if o['hair'] == 'long':
    shape = canvas.ellipse((head_c[0], head_c[1] + 0.75 * ry), 1.2 * rx,
                           1.55 * ry)
    if shape:
      canvas.paint(shape[0], shape[1], _HEAD, _HAIR, tex)

  # Legs: skin, trousers, socks and shoes along the leg axis.
  top_app = o['top']
  pants_app = _JUMPSUIT if top_app == _JUMPSUIT else _PANTS
  for side in (1, -1):
    hip, knee, ankle = p.leg(side)
    parts = ((_L_ULEG, _L_LLEG) if side == 1 else (_R_ULEG, _R_LLEG))
    foot = canvas.ellipse((ankle[0] + side * 0.018 * h, ankle[1] + 0.012 * h),
                          0.046 * h, 0.024 * h)
    if foot:
      app = _SHOE if o['shoe'] else _SOCK if o['sock'] else _SKIN
      canvas.paint(foot[0], foot[1], parts[1], app, tex)
    for k, (a, b, r) in enumerate(((knee, ankle, _LLEG_R * h),
                                   (hip, knee, _ULEG_R * h))):
      shape = canvas.capsule(a, b, r)
      if not shape:
        continue
      box, mask, t, shade = shape
      v = t + (1.0 - k)  # leg axis: lower leg is 1..2, upper leg 0..1
      app = np.full(mask.shape, _SKIN, np.uint8)
      if o['sock'] is not None:
        app[v >= o['sock']] = _SOCK
      if o['shoe'] is not None:
        app[v >= o['shoe']] = _SHOE
      if 'pants_len' in o:
        app[v < o['pants_len']] = pants_app
      canvas.paint(box, mask, parts[1 - k], app, tex, shade)

  # Neck (part of the head).
  neck = canvas.capsule((head_c[0], head_c[1] + 0.5 * ry),
                        (p.cx, sy + 0.02 * h), _NECK_R * h)
  if neck:
    canvas.paint(neck[0], neck[1], _HEAD, _SKIN, tex, neck[3])

  # Torso: two convex quads (shoulders->waist->hips).
  wf = p.width_factor
  sw, ww, hw = _SHOULDER_W * wf * h, _WAIST_W * wf * h, _HIP_W * wf * h
  mid_y = sy + 0.6 * (hip_y - sy)
  for quad in (((p.cx - sw, sy), (p.cx + sw, sy), (p.cx + ww, mid_y),
                (p.cx - ww, mid_y)),
               ((p.cx - ww, mid_y - 1), (p.cx + ww, mid_y - 1),
                (p.cx + hw, hip_y), (p.cx - hw, hip_y))):
    shape = canvas.polygon(quad)
    if not shape:
      continue
    box, mask = shape
    x, y = canvas.grid(box, p.cx, 0.0)
    x, y = np.broadcast_to(x, mask.shape), np.broadcast_to(y, mask.shape)
    app = np.full(mask.shape, top_app, np.uint8)
    nw, nd = o['neckline']
    app[(x / (nw * h)) ** 2 + ((y - sy) / (nd * h)) ** 2 < 1] = _SKIN
    if o['crop']:
      app[y > waist_y - 0.06 * h] = _SKIN
    if o['bottom'] is not None:
      app[y > waist_y] = o['bottom']
    if o['belt']:
      app[np.abs(y - waist_y) < belt_h / 2] = _BELT
    if o['coat']:
      app[np.abs(x) > o['coat_open'] * h] = _COAT
    canvas.paint(box, mask, _TORSO, app, tex)

  # Garments hanging below the waist: skirt or dress, then a coat tail.
  if 'hem' in o:
    ankle_y = p.leg(1)[2][1]
    top_y = waist_y + (belt_h / 2 if o['belt'] else 0.0)
    hem_y = hip_y + o['hem'] * (ankle_y - hip_y)
    top_w = _HIP_W * wf * h * 0.98
    bot_w = top_w + o['flare'] * (hem_y - top_y)
    shape = canvas.polygon(((p.cx - top_w, top_y), (p.cx + top_w, top_y),
                            (p.cx + bot_w, hem_y), (p.cx - bot_w, hem_y)))
    if shape:
      box, mask = shape
      x, y = canvas.grid(box)
      part = _lower_part(p, np.broadcast_to(y, mask.shape),
                         np.broadcast_to(x, mask.shape))
      app = _SKIRT if o['bottom'] == _SKIRT else _DRESS
      canvas.paint(box, mask, part, app, tex)
  if o['coat']:
    top_y, bot_y = hip_y - 0.04 * h, hip_y + o['coat_len'] * h
    top_w = _HIP_W * wf * h * 1.06
    bot_w = top_w + 0.2 * (bot_y - top_y)
    shape = canvas.polygon(((p.cx - top_w, top_y), (p.cx + top_w, top_y),
                            (p.cx + bot_w, bot_y), (p.cx - bot_w, bot_y)))
    if shape:
      box, mask = shape
      x, y = canvas.grid(box)
      mask = mask & (np.abs(x - p.cx) > o['coat_open'] * h)
      part = _lower_part(p, np.broadcast_to(y, mask.shape),
                         np.broadcast_to(x, mask.shape))
      canvas.paint(box, mask, part, _COAT, tex)

  # Scarf: a band around the neck line and a hanging end, over the torso.
  if o['scarf']:
    band = canvas.ellipse((p.cx, sy + 0.012 * h), 0.078 * h, 0.034 * h)
    if band:
      canvas.paint(band[0], band[1], _TORSO, _SCARF, tex)
    s = o['scarf_side']
    end = canvas.polygon(((p.cx + s * 0.015 * h, sy),
                          (p.cx + s * 0.055 * h, sy),
                          (p.cx + s * 0.06 * h, sy + 0.17 * h),
                          (p.cx + s * 0.02 * h, sy + 0.17 * h)))
    if end:
      canvas.paint(end[0], end[1], _TORSO, _SCARF, tex)

  # Arms: sleeve, skin and glove along the arm axis; the hand is part of
  # the lower arm.
  sleeve_app, sleeve = top_app, o['sleeve']
  if o['coat']:
    sleeve_app, sleeve = _COAT, o['coat_sleeve']
  for side in (1, -1):
    shoulder, elbow, wrist, hand = p.arm(side)
    parts = (_L_UARM, _L_LARM) if side == 1 else (_R_UARM, _R_LARM)
    for k, (a, b, r) in enumerate(((shoulder, elbow, _UARM_R * h),
                                   (elbow, wrist, _LARM_R * h),
                                   (hand, hand, _HAND_R * h))):
      shape = canvas.capsule(a, b, r)
      if not shape:
        continue
      box, mask, t, shade = shape
      u = t + k  # arm axis: upper arm 0..1, lower arm 1..2, hand 2
      app = np.full(mask.shape, _SKIN, np.uint8)
      app[u < sleeve] = sleeve_app
      if o['glove']:
        app[u >= 1.75] = _GLOVE
      canvas.paint(box, mask, parts[min(k, 1)], app, tex, shade)

  # Head: hair volume, then face with the hairline, eyes, sunglasses, hat.
  if o['hair'] != 'none':
    shape = canvas.ellipse((head_c[0], head_c[1] - 0.06 * ry), 1.08 * rx,
                           1.04 * ry)
    if shape:
      canvas.paint(shape[0], shape[1], _HEAD, _HAIR, tex)
  shape = canvas.ellipse(head_c, rx, ry)
  if shape:
    box, mask, u, v, r2 = shape
    app = np.full(mask.shape, _FACE, np.uint8)
    if o['hair'] != 'none':
      # A wavy fringe on top plus the sides.
      hair = (v < -0.38 + 0.12 * np.cos(3 * u)) | (
          (np.abs(u) > 0.8) & (v < 0.15))
      if o['hair'] == 'long':
        hair |= (np.abs(u) > 0.72) & (v < 0.7)
      app[hair] = _HAIR
    canvas.paint(box, mask, _HEAD, app, tex, 1.0 - 0.2 * r2)
  dark = canvas.add_owner({_FACE: _solid(np.array([30, 20, 20], np.float32),
                                          p.textures[_FACE].rng)})
  for s in (1, -1):
    eye = canvas.ellipse((head_c[0] + s * 0.38 * rx, head_c[1] - 0.05 * ry),
                         max(0.12 * rx, 0.5), max(0.1 * ry, 0.5))
    if eye:
      canvas.paint(eye[0], eye[1], _HEAD, _FACE, dark)
  if o['sunglasses']:
    for s in (1, -1):
      lens = canvas.ellipse((head_c[0] + s * 0.42 * rx, head_c[1] - 0.05 * ry),
                            0.44 * rx, 0.3 * ry)
      if lens:
        canvas.paint(lens[0], lens[1], _HEAD, _SUNGLASSES, tex)
    bridge = canvas.polygon(((head_c[0] - 0.2 * rx, head_c[1] - 0.12 * ry),
                             (head_c[0] + 0.2 * rx, head_c[1] - 0.12 * ry),
                             (head_c[0] + 0.2 * rx, head_c[1] - 0.02 * ry),
                             (head_c[0] - 0.2 * rx, head_c[1] - 0.02 * ry)))
    if bridge:
      canvas.paint(bridge[0], bridge[1], _HEAD, _SUNGLASSES, tex)
  if o['hat']:
    crown = canvas.ellipse((head_c[0], head_c[1] - 0.5 * ry), 1.08 * rx,
                           0.72 * ry)
    if crown:
      box, mask, u, v, _ = crown
      canvas.paint(box, mask & (v < 0.45), _HEAD, _HAT, tex)
    if o['brim']:
      brim = canvas.ellipse((head_c[0], head_c[1] - 0.25 * ry), 1.55 * rx,
                            0.2 * ry)
      if brim:
        canvas.paint(brim[0], brim[1], _HEAD, _HAT, tex)

  # A bag hangs from a lowered hand, else from the shoulder at the hip. It
  # occludes the body and is not a body part.
  if o['bag']:
    s = o['bag_side']
    _, elbow, wrist, _ = p.arm(s)
    if wrist[1] > elbow[1] and wrist[1] > sy + 0.2 * h:
      c = (wrist[0], wrist[1] + 0.08 * h)
    else:
      c = (p.cx + s * (_HIP_W * wf + 0.05) * h, hip_y)
    bw, bh = 0.055 * h, 0.05 * h
    bag = canvas.polygon(((c[0] - bw, c[1] - bh), (c[0] + bw, c[1] - bh),
                          (c[0] + bw * 1.1, c[1] + bh),
                          (c[0] - bw * 1.1, c[1] + bh)))
    if bag:
      canvas.paint(bag[0], bag[1], _BG, _BAG, tex)


# ---------------------------------------------------------------------------
# Scenes.
# ---------------------------------------------------------------------------


def _draw_background(canvas: _Canvas, rng: np.random.Generator,
                     style: Style) -> np.ndarray:
  """Paints distractors and returns the backdrop image (gradient, floor)."""
  height, width = canvas.height, canvas.width
  if rng.random() < style.plain_background_p:
    base = rng.uniform(170, 250)
    c1 = np.clip(base + rng.normal(0, 12, 3), 0, 255)
    c2 = np.clip(c1 + rng.normal(0, 15, 3), 0, 255)
  else:
    c1, c2 = _garment_colour(rng), _garment_colour(rng)
  angle = rng.uniform(0, 2 * math.pi)
  # A linear gradient c1 -> c2: w = 0.5 + (x cos + y sin) / sqrt(2) stays in
  # [0, 1], so it splits into a row term plus a column term (one broadcast).
  d = np.asarray(c2 - c1, np.float32)
  gx = (canvas.xc / width - 0.5) * (math.cos(angle) / math.sqrt(2))
  gy = (canvas.yc / height - 0.5) * (math.sin(angle) / math.sqrt(2))
  backdrop = ((c1 + 0.5 * d) + gx[None, :, None] * d) + gy[:, None, None] * d
  if rng.random() < 0.4:  # a floor
    floor_y = int(height * rng.uniform(0.6, 0.9))
    backdrop[floor_y:] = backdrop[floor_y:] * 0.6 + 0.4 * _garment_colour(rng)
  scale = min(height, width)
  lo, hi = style.distractors
  for _ in range(lo + min(int(rng.random() * (hi - lo + 1)), hi - lo)):
    _draw_distractor(canvas, rng, scale)
  return backdrop


def _draw_distractor(canvas: _Canvas, rng: np.random.Generator,
                     scale: float, y_range=(0.0, 1.0)) -> None:
  """A garment-, skin- or hair-coloured shape labelled background."""
  c = (rng.uniform(0, canvas.width),
       rng.uniform(*y_range) * canvas.height)
  size = rng.uniform(0.05, 0.3) * scale
  texture = _distractor_texture(rng, scale)
  kind = _pick(rng, (0, 1, 2, 3))
  if kind == 0:
    shape = canvas.ellipse(c, size, size * rng.uniform(0.3, 1.0))
  elif kind == 1:  # limb-like capsules make "capsule" no cue for a person
    a = rng.uniform(0, math.pi)
    d = (math.cos(a) * size, math.sin(a) * size)
    shape = canvas.capsule((c[0] - d[0], c[1] - d[1]),
                           (c[0] + d[0], c[1] + d[1]),
                           size * rng.uniform(0.1, 0.3))
  else:
    n = 4 if kind == 2 else 3
    a0 = rng.uniform(0, 2 * math.pi)
    pts = [(c[0] + size * math.cos(a0 + 2 * math.pi * k / n),
            c[1] + size * rng.uniform(0.4, 1.0) *
            math.sin(a0 + 2 * math.pi * k / n)) for k in range(n)]
    shape = canvas.polygon(pts)
  if shape:
    canvas.paint(shape[0], shape[1], _BG, _A_BG,
                 canvas.add_owner({_A_BG: texture}))


def _sample_people(rng: np.random.Generator, style: Style, height: int,
                   width: int) -> list[_Person]:
  n = _pick(rng, style.num_persons, style.num_persons_p)
  people = []
  for i in range(n):
    crop = rng.random() < style.crop_p
    if crop:
      h = _uniform(rng, style.crop_height) * height
      top = rng.uniform(0.01, 0.06) * height
    else:
      h = _uniform(rng, style.height if n == 1 else style.crowd_height) * height
      lowest = height - h  # feet inside the image
      if rng.random() < style.bottom_cut_p:
        lowest = height - 0.75 * h
      top = rng.uniform(min(0.01 * height, lowest), max(lowest, 0.01 * height))
    # Spread people over the width; their arms overlap in crowded scenes.
    slot = width / n
    cx = slot * (i + 0.5) + rng.uniform(-0.3, 0.3) * slot
    if n == 1:
      cx = width / 2 + rng.uniform(-0.12, 0.12) * width
    arms, legs = _sample_pose(rng, style)
    outfit, textures = _sample_outfit(rng, h)
    people.append(_Person(cx=float(cx), top=float(top), h=float(h),
                          width_factor=float(rng.uniform(0.9, 1.15)),
                          arm_angles=arms, leg_angles=legs, outfit=outfit,
                          textures=textures))
  # Depth order: people standing lower in the image are closer.
  people.sort(key=lambda q: q.top + q.h)
  return people


def _style(domain: str) -> Style:
  try:
    return STYLES[domain]
  except KeyError:
    raise ValueError(f'unknown synthetic domain {domain!r}; known: '
                     f'{", ".join(SYNTHETIC_DOMAINS)}') from None


def render_example(domain: str, rng: np.random.Generator,
                   size: tuple[int, int]) -> dict[str, np.ndarray]:
  """Renders one image of ``domain``'s style with its aligned maps.

  Args:
    domain: one of :data:`SYNTHETIC_DOMAINS`; selects the style and the
      label mapping.
    rng: the only source of randomness.
    size: ``(height, width)`` in pixels; shapes scale with it.

  Returns:
    dict with 'image' uint8 ``[H, W, 3]``, 'parts' uint8 ``[H, W]``,
    'appearance' uint8 ``[H, W]`` and 'label' uint8 ``[H, W]`` (``domain``'s
    class ids).
  """
  style = _style(domain)
  height, width = int(size[0]), int(size[1])
  if height < 1 or width < 1:
    raise ValueError(f'image size must be positive, got {size}')
  canvas = _Canvas(height, width)
  backdrop = _draw_background(canvas, rng, style)
  for person in _sample_people(rng, style, height, width):
    _draw_person(canvas, person)
  if rng.random() < style.occluder_p:
    _draw_distractor(canvas, rng, min(height, width), y_range=(0.75, 1.0))
  # Global lighting and sensor noise.
  image = canvas.colour(backdrop)
  image = image * rng.uniform(0.8, 1.15) + rng.uniform(-20, 20)
  # Uniform sensor noise (sd 2..8): random bytes cost far less to draw than
  # normal samples and look the same.
  noise = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
  image += (noise.astype(np.float32) - 127.5) * (_uniform(rng, (2, 8)) / 73.9)
  image = np.clip(image, 0, 255).astype(np.uint8)
  return {'image': image, 'parts': canvas.parts, 'appearance': canvas.app,
          'label': to_domain_label(canvas.parts, canvas.app, domain)}


# ---------------------------------------------------------------------------
# Data source.
# ---------------------------------------------------------------------------


def example_rng(seed: int, domain: str, split: str,
                index: int) -> np.random.Generator:
  """The generator of one example; train and validation streams differ."""
  entropy = (int(seed), SYNTHETIC_DOMAINS.index(domain), SPLITS.index(split),
             int(index))
  return np.random.default_rng(np.random.SeedSequence(entropy))


class SyntheticSource:
  """Random-access source of one synthetic domain and split.

  Implements grain's ``RandomAccessDataSource`` protocol (``__len__`` and
  ``__getitem__``). Example ``i`` is a pure function of (seed, domain,
  split, i).

  Attributes:
    domain: the label domain (:class:`sst_jax.domains.Domain`).
    split: 'train' or 'validation'.
    image_size: ``(height, width)``.
  """

  def __init__(self, domain: str, split: str = 'train', *,
               image_size: tuple[int, int] = (128, 128),
               num_examples: int | None = None, seed: int = 0):
    if domain not in SYNTHETIC_DOMAINS:
      raise ValueError(f'unknown synthetic domain {domain!r}; known: '
                       f'{", ".join(SYNTHETIC_DOMAINS)}')
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
      raise ValueError(f'unknown split {split!r}; known: {", ".join(SPLITS)}')
    if num_examples is None:
      num_examples = SPLIT_SIZES[split][domain]
    if num_examples < 0:
      raise ValueError(f'num_examples must be >= 0, got {num_examples}')
    self.domain = domains_lib.get_domain(domain)
    self.split = split
    self.image_size = (int(image_size[0]), int(image_size[1]))
    self._num_examples = int(num_examples)
    self._seed = int(seed)

  def __len__(self) -> int:
    return self._num_examples

  def __getitem__(self, index: int) -> dict[str, Any]:
    if isinstance(index, (bool, np.bool_)) or not isinstance(
        index, (int, np.integer)):
      raise TypeError(f'index must be an integer, got {type(index).__name__}')
    index = int(index)
    if index < 0:
      index += self._num_examples
    if not 0 <= index < self._num_examples:
      raise IndexError(f'index {index} out of range for {self!r}')
    rng = example_rng(self._seed, self.domain.name, self.split, index)
    ex = render_example(self.domain.name, rng, self.image_size)
    return {'image': ex['image'], 'label': ex['label'],
            'id': f'{self.domain.name}/{self.split}/{index:06d}'}

  def __repr__(self) -> str:
    return (f'SyntheticSource({self.domain.name!r}, {self.split!r}, '
            f'image_size={self.image_size}, num_examples={len(self)}, '
            f'seed={self._seed})')


def render_split(source: SyntheticSource,
                 in_subprocess: bool = False) -> list[dict[str, Any]]:
  """Every example of ``source``, in order (what ``source[i]`` returns).

  With ``in_subprocess`` the examples are rendered by a separate Python
  process (``start_render`` / ``finish_render``) and sent back as raw bytes:
  rendering is numpy code that holds the GIL between small array operations,
  so in a separate process it neither slows nor is slowed by the Python
  work of other threads (tracing and compiling the train step at startup),
  and several splits render on several cores. Same bytes either way: an
  example is a pure function of (seed, domain, split, index).
  """
  if not in_subprocess:
    return [source[i] for i in range(len(source))]
  return finish_render(source, start_render(source))


def start_render(source: SyntheticSource) -> subprocess.Popen:
  """Starts rendering ``source`` in a subprocess; see ``finish_render``."""
  h, w = source.image_size
  args = [source.domain.name, source.split, h, w, len(source), source._seed]  # pylint: disable=protected-access
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in sys.path if isinstance(p, str)))
  return subprocess.Popen(
      [sys.executable, '-c', 'import sys; from sst_jax.data import synthetic;'
       ' synthetic._write_split(*sys.argv[1:])'] + [str(a) for a in args],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def finish_render(source: SyntheticSource,
                  proc: subprocess.Popen) -> list[dict[str, Any]]:
  """Waits for ``start_render``'s process; its examples, as ``source[i]``."""
  stdout, stderr = proc.communicate()
  n = len(source)
  h, w = source.image_size
  size = n * h * w * 4
  if proc.returncode or len(stdout) != size:
    raise RuntimeError(
        f'rendering {source!r} in a subprocess failed (exit code '
        f'{proc.returncode}, {len(stdout)} of {size} bytes): '
        f'{stderr.decode(errors="replace")[-2000:]}')
  data = np.frombuffer(bytearray(stdout), np.uint8)
  images = data[:n * h * w * 3].reshape(n, h, w, 3)
  labels = data[n * h * w * 3:].reshape(n, h, w)
  return [{'image': images[i], 'label': labels[i],
           'id': f'{source.domain.name}/{source.split}/{i:06d}'}
          for i in range(n)]


def _write_split(domain: str, split: str, h: str, w: str, n: str,
                 seed: str) -> None:
  """``render_split``'s worker: images then labels as raw bytes on stdout."""
  source = SyntheticSource(domain, split, image_size=(int(h), int(w)),
                           num_examples=int(n), seed=int(seed))
  examples = [source[i] for i in range(len(source))]
  out = sys.stdout.buffer
  for key in ('image', 'label'):
    for ex in examples:
      out.write(np.ascontiguousarray(ex[key]).tobytes())
  out.flush()


# ---------------------------------------------------------------------------
# Contact sheet.
# ---------------------------------------------------------------------------


def contact_sheet(num_per_domain: int = 4, size: tuple[int, int] = (128, 128),
                  seed: int = 0) -> np.ndarray:
  """Validation images of every domain above their colour-coded labels.

  Args:
    num_per_domain: images per domain.
    size: ``(height, width)`` of each image.
    seed: dataset seed.

  Returns:
    uint8 RGB image: one block per domain (images, labels, legend).
  """
  from sst_jax import visualize  # pylint: disable=g-import-not-at-top

  blocks = []
  for name in SYNTHETIC_DOMAINS:
    source = SyntheticSource(name, 'validation', image_size=size, seed=seed,
                             num_examples=max(num_per_domain, 1))
    examples = [source[i] for i in range(num_per_domain)]
    palette = source.domain.palette
    images = [ex['image'] for ex in examples]
    labels = [visualize.colorize(ex['label'], palette) for ex in examples]
    key = visualize.legend(source.domain.classes, palette, width=240)
    block = visualize.image_grid([images + [key], labels], pad=2,
                                 row_titles=[name, 'label'])
    blocks.append([block])
  return visualize.image_grid(blocks, pad=4)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--output', default='docs/synthetic_contact_sheet.png')
  parser.add_argument('--num_per_domain', type=int, default=4)
  parser.add_argument('--size', type=int, nargs=2, default=(128, 128),
                      metavar=('HEIGHT', 'WIDTH'))
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  from sst_jax import visualize  # pylint: disable=g-import-not-at-top
  sheet = contact_sheet(args.num_per_domain, tuple(args.size), args.seed)
  visualize.save_png(args.output, sheet)
  print(f'wrote {args.output} ({sheet.shape[1]}x{sheet.shape[0]})')


if __name__ == '__main__':
  main()
