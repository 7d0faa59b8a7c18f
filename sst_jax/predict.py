r"""Parse your own images: index PNGs, colour PNGs, overlays, probabilities.

    python -m sst_jax.predict --model=<workdir | export dir | schp.pth> \
        --input=<files or folders, comma-separated> --output=<dir> \
        [--domain=<name>|all] [--flip] [--scales=0.75,1,1.25] \
        [--average=probs|logits] [--batch_size=8] [--input_size=N] \
        [--save_probs] [--logits] [--layout=sst_jax|schp] \
        [--schp_domain=lip|atr|pascal_person_part] [--contact_sheet=PATH]

For every readable image and every selected domain it writes, into
``--output``:

* ``<stem>_<domain>_index.png``: paletted PNG whose pixel values are the
  class ids (``np.asarray(PIL.Image.open(f))`` gives them back);
* ``<stem>_<domain>_color.png``: the label map in the domain's palette;
* ``<stem>_<domain>_overlay.png``: the colours blended over the photo;
* ``<stem>_<domain>_probs.npy`` (``--save_probs``): float16 ``[H, W, C]``;
* ``<stem>_<domain>_logits.npy`` (``--logits``): float32 ``[H, W, C]``.

``--layout=schp`` writes what SCHP's ``simple_extractor.py`` writes for a
folder instead, for one domain: ``<stem>.png``, the label map as a paletted
PNG in SCHP's palette (``write_schp_outputs``), and with ``--logits``
``<stem>.npy``, the float32 ``[H, W, C]`` scores at the original size.
Pipelines that run SCHP's script on a folder switch by running this
command instead.

With ``--flip``/``--scales`` the views are combined by ``--average``: mean
probability (``probs``, the default for sst_jax models) or mean logit
(``logits``, SCHP's rule and the default for SCHP checkpoints). An SCHP
checkpoint (``--schp_domain``) runs SCHP's ``simple_extractor.py`` pipeline:
its label PNGs are SCHP's where SCHP's warp copies pixels (see
``docs/pretrained.md``).

Outputs have the image's original size (after EXIF orientation). Folders are
read non-recursively (files with an extension PIL knows). An image that
cannot be decoded is reported on stderr by name and skipped; the exit status
is then 1. A progress line with images/s and ETA goes to stderr.

``--contact_sheet=PATH`` also writes one PNG with a row per image (input and
each domain's overlay) and the domains' legends; the picture in
``docs/predict.md`` is made this way from ``skimage.data.astronaut()`` (the
model's training command is in that file)::

    python -c "import skimage.data, PIL.Image as I; I.fromarray(\
skimage.data.astronaut()).resize((256, 256), I.LANCZOS).save(\
'/tmp/astronaut.png')"
    python -m sst_jax.predict --model=/tmp/w_astro --input=/tmp/astronaut.png \
        --output=/tmp/astronaut_parsed --domain=all --flip \
        --contact_sheet=docs/astronaut_parsed.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

import numpy as np
from PIL import Image

from sst_jax import api
from sst_jax import domains as domains_lib
from sst_jax import visualize
from sst_jax import writers


LAYOUTS = ('sst_jax', 'schp')


def image_extensions() -> set[str]:
  return {ext.lower() for ext in Image.registered_extensions()}


def list_inputs(inputs: Sequence[str]) -> list[str]:
  """Expands files and folders (sorted, non-recursive) into image paths.

  Files named explicitly are kept whatever their extension; inside folders
  only files with an image extension are taken.

  Raises:
    FileNotFoundError: naming an input that does not exist.
  """
  exts = image_extensions()
  paths = []
  for entry in inputs:
    if os.path.isdir(entry):
      paths += [os.path.join(entry, n) for n in sorted(os.listdir(entry))
                if os.path.splitext(n)[1].lower() in exts and
                os.path.isfile(os.path.join(entry, n))]
    elif os.path.isfile(entry):
      paths.append(entry)
    else:
      raise FileNotFoundError(f'--input {entry}: no such file or folder')
  return paths


def output_stems(paths: Sequence[str]) -> list[str]:
  """File stems, made unique (``a``, ``a_2``) when folders share names."""
  seen, stems = {}, []
  for p in paths:
    stem = os.path.splitext(os.path.basename(p))[0]
    seen[stem] = seen.get(stem, 0) + 1
    stems.append(stem if seen[stem] == 1 else f'{stem}_{seen[stem]}')
  return stems


def write_outputs(output: str, stem: str, image: np.ndarray, scores: dict,
                  label_domains: dict, save_probs: bool,
                  save_logits: bool = False) -> dict:
  """Writes the files of one image; returns ``{domain: index map}``."""
  labels = {}
  for name, lg in scores.items():
    domain = label_domains[name]
    label = api.argmax(lg)
    base = os.path.join(output, f'{stem}_{name}')
    visualize.save_index_png(base + '_index.png', label, domain.palette)
    visualize.save_png(base + '_color.png',
                       visualize.colorize(label, domain.palette))
    visualize.save_png(base + '_overlay.png',
                       visualize.overlay(image, label, domain.palette))
    if save_probs:
      np.save(base + '_probs.npy', api.softmax(lg).astype(np.float16))
    if save_logits:
      np.save(base + '_logits.npy', np.asarray(lg, np.float32))
    labels[name] = label
  return labels


def schp_palette(num_classes: int) -> list[int]:
  """The palette SCHP's ``simple_extractor.py`` gives its label PNGs.

  SCHP's ``get_palette(num_classes)``: the PASCAL VOC colour map, as the
  flat ``[r0, g0, b0, r1, ...]`` list of ``num_classes`` colours that it
  hands to ``putpalette``. The domains' palettes are that colour map.
  """
  return [int(v) for v in domains_lib.voc_palette(num_classes).reshape(-1)]


def write_schp_outputs(output: str, stem: str, scores: np.ndarray,
                       save_logits: bool) -> np.ndarray:
  """Writes one image's outputs as SCHP's ``simple_extractor.py`` does.

  ``<stem>.png``: ``Image.fromarray(label)`` with ``putpalette(palette)``
  (a ``P`` image whose palette holds exactly the domain's colours, which
  PIL then saves at the smallest bit depth that fits them), and with
  ``save_logits`` ``<stem>.npy``, the float32 ``[H, W, C]`` scores.

  Returns:
    the uint8 ``[H, W]`` label map.
  """
  label = api.argmax(scores)
  image = Image.fromarray(np.asarray(label, dtype=np.uint8))
  image.putpalette(schp_palette(scores.shape[-1]))
  image.save(os.path.join(output, f'{stem}.png'))
  if save_logits:
    np.save(os.path.join(output, f'{stem}.npy'),
            np.asarray(scores, np.float32))
  return label


def check_layout(layout: str, domains: Sequence[str],
                 save_probs: bool) -> None:
  """Refuses outputs that ``layout`` has no file for.

  Raises:
    ValueError: for an unknown layout, or the SCHP layout with several
      domains (SCHP writes one label map per image) or ``save_probs``.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  if layout == 'schp' and len(domains) != 1:
    raise ValueError('--layout=schp writes one label map per image, as '
                     "SCHP's simple_extractor.py does: choose one --domain "
                     f'(got {", ".join(domains)})')
  if layout == 'schp' and save_probs:
    raise ValueError('--save_probs belongs to the sst_jax layout; with '
                     '--layout=schp, --logits writes <stem>.npy')


def contact_sheet(rows: list, domain_names: Sequence[str],
                  label_domains: dict) -> np.ndarray:
  """Grid: per image its input and overlays, then the legends."""
  grid_rows = [[image] + [visualize.overlay(image, labels[d],
                                            label_domains[d].palette)
                          for d in domain_names]
               for image, labels in rows]
  width = max(max(im.shape[1] for im in r) for r in grid_rows)
  legends = [np.full((1, 1, 3), 255, np.uint8)] + [
      visualize.legend(label_domains[d].classes, label_domains[d].palette,
                       max(width, 160)) for d in domain_names]
  return visualize.image_grid(grid_rows + [legends],
                              col_titles=['input'] + list(domain_names))


def predict_files(parser: api.Parser, paths: Sequence[str], output: str,
                  domains: Sequence[str], *, flip: bool = False,
                  scales: Sequence[float] = (1.0,), batch_size: int = 8,
                  save_probs: bool = False,
                  contact_sheet_path: str | None = None,
                  average: str | None = None, layout: str = 'sst_jax',
                  save_logits: bool = False) -> tuple[int, list[str]]:
  """Parses ``paths`` in batches and writes their outputs.

  Every batch is padded to ``batch_size`` so one compiled function serves
  the whole run (all images share the model's square input size).
  ``average`` combines test-time views (default: ``parser.average``).
  ``layout`` is ``'sst_jax'`` (``write_outputs``) or ``'schp'``
  (``write_schp_outputs``, one domain).

  Returns:
    ``(number parsed, failure messages)``.

  Raises:
    ValueError: from ``check_layout``.
  """
  check_layout(layout, domains, save_probs)
  os.makedirs(output, exist_ok=True)
  stems = output_stems(paths)
  progress = writers.Progress(len(paths))
  tty = sys.stderr.isatty()  # a terminal: one line, rewritten
  failures, done, sheet = [], 0, []
  for start in range(0, len(paths), batch_size):
    images, names = [], []
    for path, stem in zip(paths[start:start + batch_size],
                          stems[start:start + batch_size]):
      try:
        images.append(api.read_image(path))
        names.append(stem)
      except api.ImageReadError as e:
        failures.append(str(e))
        print(f'\nerror: {e}' if tty else f'error: {e}',
              file=sys.stderr, flush=True)
    if images:
      scores = parser.predict_batch(images, domains, flip=flip, scales=scales,
                                    batch_size=batch_size, average=average)
      for image, stem, sc in zip(images, names, scores):
        if layout == 'schp':
          labels = {domains[0]: write_schp_outputs(output, stem,
                                                   sc[domains[0]],
                                                   save_logits)}
        else:
          labels = write_outputs(output, stem, image, sc,
                                 parser.label_domains, save_probs,
                                 save_logits)
        if contact_sheet_path:
          sheet.append((image, labels))
    done = min(start + batch_size, len(paths))
    line = progress.count_line('parsed', done, progress.update(done))
    print(('\r' if tty else '') + line, file=sys.stderr, flush=True,
          end='' if tty and done < len(paths) else '\n')
  if contact_sheet_path and sheet:
    visualize.save_png(contact_sheet_path,
                       contact_sheet(sheet, domains, parser.label_domains))
  return len(paths) - len(failures), failures


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(s) for s in text.split(',') if s.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got '
                                     f'{text!r}') from None


def _arg_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
      prog='python -m sst_jax.predict',
      description='Parse images with a trained, exported or SCHP model.')
  ap.add_argument('--model', required=True,
                  help='training workdir, export directory or SCHP '
                  'checkpoint file')
  ap.add_argument('--input', required=True, action='append',
                  help='image files and/or folders, comma-separated '
                  '(repeatable)')
  ap.add_argument('--output', required=True, help='output folder')
  ap.add_argument('--domain', default=None,
                  help="head to use, comma-separated heads, or 'all' "
                  '(default: the target in dedicated mode, else the first)')
  ap.add_argument('--flip', action='store_true', help='flip TTA')
  ap.add_argument('--scales', type=_floats, default=(1.0,),
                  help='multi-scale TTA, e.g. 0.75,1,1.25')
  ap.add_argument('--average', choices=('probs', 'logits'), default=None,
                  help='how TTA views are combined: mean probability or '
                  "mean logit (default: the model's, logits for SCHP "
                  'checkpoints as in SCHP, probs otherwise)')
  ap.add_argument('--batch_size', type=int, default=8)
  ap.add_argument('--input_size', type=int, default=None,
                  help='network input side (default: the training '
                  "config's data.eval_input_size)")
  ap.add_argument('--save_probs', action='store_true',
                  help='also write <stem>_<domain>_probs.npy (float16)')
  ap.add_argument('--logits', action='store_true',
                  help='also write the float32 scores at the original size: '
                  '<stem>_<domain>_logits.npy, or <stem>.npy with '
                  '--layout=schp')
  ap.add_argument('--layout', choices=LAYOUTS, default='sst_jax',
                  help="output files: sst_jax's (index, colour and overlay "
                  "PNGs per domain) or SCHP simple_extractor.py's "
                  '(<stem>.png in its palette, one domain)')
  ap.add_argument('--schp_domain', default=None,
                  help='domain of an SCHP checkpoint: lip, atr or '
                  'pascal_person_part')
  ap.add_argument('--contact_sheet', default=None,
                  help='also write one PNG grid of all inputs and overlays')
  return ap


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status (0 ok, 1 some image failed, 2
  bad arguments)."""
  args = _arg_parser().parse_args(argv)
  if args.batch_size < 1:
    print('error: --batch_size must be >= 1', file=sys.stderr)
    return 2
  t0 = time.perf_counter()
  try:
    paths = list_inputs([p for entry in args.input for p in entry.split(',')
                         if p])
    parser = api.Parser.load(args.model, domain=args.schp_domain,
                             input_size=args.input_size)
    domains = parser.resolve_domains(
        None if args.domain is None else args.domain.split(','))
    check_layout(args.layout, domains, args.save_probs)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f'error: {e.args[0] if isinstance(e, KeyError) else e}',
          file=sys.stderr)
    return 2
  if not paths:
    print(f'error: no images found in {", ".join(args.input)}',
          file=sys.stderr)
    return 2
  num_ok, failures = predict_files(
      parser, paths, args.output, domains, flip=args.flip,
      scales=args.scales, batch_size=args.batch_size,
      save_probs=args.save_probs, contact_sheet_path=args.contact_sheet,
      average=args.average, layout=args.layout, save_logits=args.logits)
  elapsed = time.perf_counter() - t0
  print(f'parsed {num_ok} of {len(paths)} images ({len(failures)} failed) '
        f'for {", ".join(domains)} into {args.output} in {elapsed:.1f}s',
        file=sys.stderr)
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
