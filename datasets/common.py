"""Shared code of the human-parsing dataset builders.

Each builder in ``datasets/<name>/`` declares its label domain and the raw
layouts it accepts; this module detects which layout a ``manual_dir`` holds,
reads and validates every (image, label) pair, and either stops the build at
the first bad example (config ``strict``, the default) or skips and reports
bad examples (config ``skip_bad``).

Nothing here needs TensorFlow: images are decoded with PIL only to validate
them, and their original bytes are written unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
from typing import Callable, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from sst_jax import domains

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
LABEL_SUFFIXES = ('.png',)
# The VOC "void" colour (palette entry 255), used on object borders.
VOID_COLOUR = (224, 224, 192)


class BadExampleError(ValueError):
  """One example (image or label file) cannot be used; names the file."""


class LayoutError(FileNotFoundError):
  """The raw data folder does not hold an accepted layout (or is incomplete)."""


# ----------------------------------------------------------------------------
# Raw layouts
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """Where one split's files live, relative to the layout's root.

  Attributes:
    images: folder of images (``<id>.jpg``).
    labels: folder of label maps (``<id>.png``).
    id_lists: candidate id-list files; the first that exists is used. Empty:
      the ids are the sorted stems of ``images``, filtered by ``select``.
    select: with no id list, keeps the stems for which it returns True.
    select_doc: how ``select`` chooses, for error messages and docs.
  """
  images: str
  labels: str
  id_lists: tuple[str, ...] = ()
  select: Callable[[str], bool] | None = None
  select_doc: str = ''


@dataclasses.dataclass(frozen=True)
class Layout:
  """One accepted arrangement of a dataset's raw files.

  Attributes:
    name: short name used in messages and docs, e.g. ``'official'``.
    splits: split name -> where its files live.
  """
  name: str
  splits: Mapping[str, SplitSpec]

  @property
  def markers(self) -> list[str]:
    """Top-level entries whose presence selects this layout."""
    tops = (path.split('/')[0] for spec in self.splits.values()
            for path in (spec.images, spec.labels))
    return list(dict.fromkeys(tops))

  def describe(self) -> str:
    parts = []
    for split, spec in self.splits.items():
      ids = (' or '.join(spec.id_lists) if spec.id_lists
             else f'no list ({spec.select_doc})')
      parts.append(f'{split}: images {spec.images}/, labels {spec.labels}/, '
                   f'ids {ids}')
    return f'layout {self.name!r} ({"; ".join(parts)})'


def detect_layout(root: epath.PathLike,
                  layouts: Sequence[Layout]) -> Layout:
  """Returns the first layout with any of its top-level folders in ``root``.

  A partly present layout is chosen all the same, so that the error then
  names the folder or list that is missing.

  Raises:
    LayoutError: naming ``root`` and every layout looked for.
  """
  root = epath.Path(root)
  for layout in layouts:
    if any((root / marker).exists() for marker in layout.markers):
      return layout
  looked_for = '\n  '.join(layout.describe() for layout in layouts)
  raise LayoutError(
      f'No accepted raw layout found in {root}. Looked for:\n  {looked_for}')


def hash_fraction(stem: str) -> float:
  """A stable number in [0, 1) from a file stem (md5, not Python's hash)."""
  return int(hashlib.md5(stem.encode('utf-8')).hexdigest()[:8], 16) / 2**32


def _read_id_list(path: epath.Path) -> list[str]:
  """Reads ids, one per line; tolerates ``folder/id.jpg [label]`` lines."""
  ids = []
  for line in path.read_text().splitlines():
    fields = line.split()
    if fields:
      ids.append(os.path.splitext(os.path.basename(fields[0]))[0])
  if not ids:
    raise LayoutError(f'{path}: the id list is empty')
  return ids


def _stems(folder: epath.Path, suffixes: Sequence[str]) -> dict[str, epath.Path]:
  """Maps file stem -> path for the files of ``folder`` with ``suffixes``."""
  found = {}
  # Sorted so that, for a stem present as both .jpg and .png, the choice is
  # the same on every run (suffix order decides below).
  for path in sorted(folder.iterdir()):
    suffix = path.suffix.lower()
    if suffix in suffixes:
      previous = found.get(path.stem)
      if (previous is None or suffixes.index(suffix)
          < suffixes.index(previous.suffix.lower())):
        found[path.stem] = path
  return found


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """The resolved files of one split."""
  ids: list[str]
  id_source: str  # the list file, or how ids were derived
  images: dict[str, epath.Path]
  labels: dict[str, epath.Path]
  image_dir: epath.Path
  label_dir: epath.Path


def resolve_split(root: epath.PathLike, spec: SplitSpec) -> SplitFiles:
  """Finds one split's folders and ids under ``root``.

  Raises:
    LayoutError: a folder or the id list is missing.
  """
  root = epath.Path(root)
  image_dir, label_dir = root / spec.images, root / spec.labels
  for folder in (image_dir, label_dir):
    if not folder.is_dir():
      raise LayoutError(f'{folder}: folder not found')
  images = _stems(image_dir, IMAGE_SUFFIXES)
  labels = _stems(label_dir, LABEL_SUFFIXES)
  if spec.id_lists:
    candidates = [root / name for name in spec.id_lists]
    existing = [path for path in candidates if path.exists()]
    if not existing:
      raise LayoutError(
          'id list not found; looked for ' +
          ' and '.join(os.fspath(path) for path in candidates))
    ids, id_source = _read_id_list(existing[0]), os.fspath(existing[0])
  else:
    ids = [stem for stem in sorted(images) if spec.select(stem)]
    id_source = f'{image_dir} ({spec.select_doc})'
  return SplitFiles(ids, id_source, images, labels, image_dir, label_dir)


# ----------------------------------------------------------------------------
# Reading and validating one example
# ----------------------------------------------------------------------------


def _describe(error: Exception) -> str:
  if isinstance(error, Image.UnidentifiedImageError):
    return 'not a recognised image format'
  return f'{type(error).__name__}: {error}'


def read_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
  """Reads an image, decoding it once to validate it.

  The original bytes are returned unchanged when they decode to RGB or
  greyscale (TFDS turns greyscale into 3 equal channels when reading).
  Anything else (CMYK, palette, alpha, 16-bit) is converted to RGB and
  re-encoded losslessly as PNG, since its raw bytes would not read back as
  ``[H, W, 3]``.

  Returns:
    (encoded bytes, (height, width)).

  Raises:
    BadExampleError: the file cannot be decoded.
  """
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      size = (image.height, image.width)
      if image.format in ('JPEG', 'PNG') and image.mode in ('RGB', 'L'):
        return data, size
      buffer = io.BytesIO()
      image.convert('RGB').save(buffer, format='PNG')
  except Exception as e:  # PIL raises many types for corrupt files.
    raise BadExampleError(
        f'{path}: image cannot be decoded ({_describe(e)})') from None
  logging.info('%s: %s %s image converted to RGB PNG', path, image.format,
               image.mode)
  return buffer.getvalue(), size


def _colours_to_ids(colours: np.ndarray, palette: np.ndarray,
                    path: epath.Path) -> np.ndarray:
  """Maps ``[..., 3]`` colours to class ids through ``palette``.

  The VOC void colour maps to the ignore id; any other colour not in the
  palette raises.
  """
  lut = {tuple(int(v) for v in colour): c for c, colour in enumerate(palette)}
  lut[VOID_COLOUR] = domains.IGNORE_ID
  flat = colours.reshape(-1, 3)
  unique, inverse = np.unique(flat, axis=0, return_inverse=True)
  ids = np.empty(len(unique), np.uint8)
  for i, colour in enumerate(unique):
    key = tuple(int(v) for v in colour)
    if key not in lut:
      raise BadExampleError(
          f'{path}: colour-coded label has colour {key}, which is not a class '
          f'colour of the VOC palette ({len(palette)} classes) nor the void '
          f'colour {VOID_COLOUR}')
    ids[i] = lut[key]
  return ids[inverse.reshape(-1)].reshape(colours.shape[:-1])


def _palette_is_index_map(image: Image.Image, used: np.ndarray) -> bool:
  """Whether a 'P' image's used palette entries encode their own index.

  An entry encodes its index when it is the VOC colour of that index or the
  grey (i, i, i); the index map and the colour reading then agree.
  """
  palette = np.asarray(image.getpalette('RGB') or [], np.uint8).reshape(-1, 3)
  voc = domains.voc_palette(256)
  for i in used:
    if i >= len(palette):
      return False
    entry = palette[i]
    if not (np.array_equal(entry, voc[i]) or np.all(entry == i)):
      return False
  return True


def read_label(path: epath.Path, num_classes: int,
               colour_coded_ok: bool) -> np.ndarray:
  """Reads a label map as uint8 class ids ``[H, W]`` and validates its values.

  Modes 'L', 'I', 'I;16' and '1' hold class ids. A 'P' image holds class ids
  unless ``colour_coded_ok`` and its used palette entries are not the VOC
  colours (or greys) of their own index; then, like 'RGB'/'RGBA' images
  (alpha ignored), its colours are mapped to ids through
  ``voc_palette(num_classes)``.

  Raises:
    BadExampleError: undecodable file, unsupported mode, colour-coded label
      where not accepted, unknown colour, or a value that is neither a class
      id nor 255.
  """
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as image:
      image.load()
      mode = image.mode
      if mode == 'P':
        ids = np.asarray(image)
        if colour_coded_ok and not _palette_is_index_map(image, np.unique(ids)):
          ids = _colours_to_ids(np.asarray(image.convert('RGB')),
                                domains.voc_palette(num_classes), path)
      elif mode in ('RGB', 'RGBA') and colour_coded_ok:
        ids = _colours_to_ids(np.asarray(image.convert('RGB')),
                              domains.voc_palette(num_classes), path)
      elif mode in ('L', 'I', 'I;16', '1'):
        ids = np.asarray(image)
      else:
        raise BadExampleError(
            f'{path}: label has PIL mode {mode!r}; expected an index map '
            '(mode L or P whose values are class ids)')
  except BadExampleError:
    raise
  except Exception as e:  # PIL raises many types for corrupt files.
    raise BadExampleError(
        f'{path}: label cannot be decoded ({_describe(e)})') from None
  ids = np.asarray(ids).astype(np.int64)
  bad = np.setdiff1d(np.unique(ids),
                     np.append(np.arange(num_classes), domains.IGNORE_ID))
  if bad.size:
    raise BadExampleError(
        f'{path}: label values {bad[:10].tolist()} are outside the '
        f'{num_classes} classes (0..{num_classes - 1}) and not the ignore id '
        f'{domains.IGNORE_ID}')
  return ids.astype(np.uint8)


def encode_label(ids: np.ndarray) -> bytes:
  """Encodes a uint8 ``[H, W]`` id map as a greyscale ('L') PNG."""
  buffer = io.BytesIO()
  Image.fromarray(ids, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


def read_example(example_id: str, files: SplitFiles, num_classes: int,
                 colour_coded_ok: bool) -> dict[str, object]:
  """Reads and validates one example.

  Raises:
    BadExampleError: naming the offending file and the problem.
  """
  image_path = files.images.get(example_id)
  if image_path is None:
    raise BadExampleError(
        f'{files.image_dir / example_id}.jpg: no image for id {example_id!r} '
        f'(listed in {files.id_source})')
  label_path = files.labels.get(example_id)
  if label_path is None:
    raise BadExampleError(
        f'{files.label_dir / example_id}.png: no label for id {example_id!r} '
        f'(listed in {files.id_source})')
  image, (height, width) = read_image(image_path)
  ids = read_label(label_path, num_classes, colour_coded_ok)
  if ids.shape != (height, width):
    raise BadExampleError(
        f'{label_path}: label is {ids.shape[1]}x{ids.shape[0]} (WxH) but its '
        f'image {image_path.name} is {width}x{height}')
  return {'image': image, 'label': encode_label(ids), 'id': example_id}


# ----------------------------------------------------------------------------
# The builder base class
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class ParsingConfig(tfds.core.BuilderConfig):
  """Builder config: what to do with bad examples.

  Attributes:
    skip_bad_examples: if True, bad examples are logged and skipped; if False
      the build stops at the first one.
  """
  skip_bad_examples: bool = False


STRICT = ParsingConfig(
    name='strict', skip_bad_examples=False,
    description='Stops the build at the first bad example (default).')
SKIP_BAD = ParsingConfig(
    name='skip_bad', skip_bad_examples=True,
    description='Skips bad examples, logging each file and the count.')


class HumanParsingBuilder(tfds.core.GeneratorBasedBuilder,
                          skip_registration=True):
  """Base of the four builders: subclasses set DOMAIN, LAYOUTS and docs.

  ``BUILDER_CONFIGS`` lists only ``strict`` so that a plain ``tfds build``
  (which builds every listed config) builds the dataset once;
  ``--config=skip_bad`` is still accepted by name (see
  :meth:`get_builder_config`).
  """

  DOMAIN: str = ''
  LAYOUTS: tuple[Layout, ...] = ()
  HOMEPAGE: str = ''
  COLOUR_CODED_LABELS_OK = False
  BUILDER_CONFIGS = [STRICT]
  DEFAULT_BUILDER_CONFIG_NAME = 'strict'

  @classmethod
  def get_builder_config(cls, name, version=None):
    """Also resolves the unlisted ``skip_bad`` config."""
    if name == SKIP_BAD.name:
      return SKIP_BAD
    return super().get_builder_config(name, version)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # The original encoded file, usually JPEG bytes.
            'image': tfds.features.Image(shape=(None, None, 3)),
            # Class ids in the domain's own order; 255 = ignore.
            'label': tfds.features.Image(shape=(None, None, 1),
                                         encoding_format='png'),
            'id': tfds.features.Text(),
        }),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(
            domain=self.DOMAIN,
            classes=list(domains.get_domain(self.DOMAIN).classes)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = dl_manager.manual_dir
    layout = detect_layout(root, self.LAYOUTS)
    logging.info('%s: found %s in %s', self.name, layout.describe(), root)
    # Resolve every split first so that a missing folder or list stops the
    # build before any example is written.
    files = {split: resolve_split(root, spec)
             for split, spec in layout.splits.items()}
    return {split: self._generate_examples(split, split_files)
            for split, split_files in files.items()}

  def _generate_examples(self, split: str, files: SplitFiles
                         ) -> Iterator[tuple[str, dict[str, object]]]:
    num_classes = domains.get_domain(self.DOMAIN).num_classes
    skip = self.builder_config.skip_bad_examples
    counts = collections.Counter(files.ids)
    seen, skipped = set(), []
    for example_id in files.ids:
      try:
        if example_id in seen:
          raise BadExampleError(
              f'{files.id_source}: id {example_id!r} is listed '
              f'{counts[example_id]} times')
        seen.add(example_id)
        example = read_example(example_id, files, num_classes,
                               self.COLOUR_CODED_LABELS_OK)
      except BadExampleError as e:
        if not skip:
          raise
        logging.warning('%s/%s: skipping bad example: %s', self.name, split, e)
        skipped.append(str(e))
        continue
      yield example_id, example
    if skip:
      logging.warning('%s/%s: skipped %d of %d examples', self.name, split,
                      len(skipped), len(files.ids))
      if len(skipped) == len(files.ids):
        raise BadExampleError(
            f'{files.id_source}: all {len(skipped)} examples of split '
            f'{split!r} are bad (each is logged above)')
