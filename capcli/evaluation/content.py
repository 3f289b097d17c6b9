"""Content accuracy on the shapes dataset: does a caption name exactly the objects that were drawn?

BLEU and CIDEr reward the sentence templates; this asks whether the model sees. A caption is
parsed with the generator's own vocabulary (:mod:`capcli.data.shapes`: 6 colours, 4 shapes, the
size words ``small``, ``large`` and ``big``) into *mentions*, one per shape word:

- the colour and size words since the previous shape word belong to the next shape word
  ("a big blue square");
- a colour after ``coloured`` and a size after ``is`` belong to the shape word before them
  ("one small square coloured red", "a red circle that is small");
- every other word is ignored (counts, relations, "picture", "background").

Mentions of the same (colour, shape) are one object, whatever their sizes say. A caption is right
on **colour + shape** when its set of (colour, shape) pairs equals the drawn set: nothing missing,
nothing extra, no shape without a colour. It is right **with sizes** when, in addition, every object
is given exactly one size and that size is the drawn one. Scores are shares of images, overall and
by the number of objects drawn (1, 2, 3). The references' own figure (each reference caption of the
same images scored the same way, averaged) is the ceiling a model that copies their mix can reach.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from capcli.data import shapes
from capcli.data.jsonfiles import read_json
from capcli.errors import DataError

COLOURS = frozenset(shapes.COLOURS)
SHAPES = frozenset(shapes.SHAPES)
SIZES = {word: size for size, words in shapes.SIZE_WORDS.items() for word in words}

Drawn = frozenset[tuple[str, str, str]]  # (size, colour, shape) of each object in an image


@dataclass(frozen=True)
class Mention:
    shape: str
    colour: str | None = None
    size: str | None = None


def mentions(caption: str | Sequence[str]) -> list[Mention]:
    """The shapes a caption names, in order, each with the colour and size the caption gives it."""
    words = caption.split() if isinstance(caption, str) else list(caption)
    found: list[Mention] = []
    colour = size = None  # waiting for the next shape word
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        if word in SHAPES:
            found.append(Mention(word, colour, size))
            colour = size = None
        elif word in COLOURS and before == "coloured" and found:
            found[-1:] = _also(found[-1], colour=word)
        elif word in SIZES and before == "is" and found:
            found[-1:] = _also(found[-1], size=SIZES[word])
        elif word in COLOURS:
            colour = word
        elif word in SIZES:
            size = SIZES[word]
    return found


def _also(mention: Mention, colour: str | None = None, size: str | None = None) -> list[Mention]:
    """``mention`` given a colour or size after its shape word: filled in where it had none, otherwise
    a second mention of the same shape (so "a small red circle that is large" names two sizes)."""
    if (colour or mention.colour) == mention.colour and (size or mention.size) == mention.size:
        return [mention]
    if (colour and mention.colour) or (size and mention.size):
        return [mention, Mention(mention.shape, colour or mention.colour, size or mention.size)]
    return [Mention(mention.shape, colour or mention.colour, size or mention.size)]


def judge(caption: str | Sequence[str], drawn: Drawn) -> tuple[bool, bool]:
    """(right on colour + shape, right with sizes too) for one caption of an image with ``drawn`` objects."""
    named: dict[tuple[str | None, str], set[str | None]] = {}
    for m in mentions(caption):
        named.setdefault((m.colour, m.shape), set())
        if m.size is not None:
            named[(m.colour, m.shape)].add(m.size)
    truth = {(colour, shape): size for size, colour, shape in drawn}
    if set(named) != set(truth):
        return False, False
    return True, all(named[key] == {truth[key]} for key in truth)


@dataclass(frozen=True)
class ContentScore:
    """Shares of images whose caption is right, overall and by the number of objects drawn."""

    images: int
    colour_shape: float
    with_size: float
    by_count: dict[int, float] = field(default_factory=dict)  # objects drawn → colour + shape share
    counts: dict[int, int] = field(default_factory=dict)  # objects drawn → images

    def to_dict(self) -> dict:
        return {"images": self.images, "colour_shape": self.colour_shape, "with_size": self.with_size,
                "by_count": {str(k): v for k, v in self.by_count.items()},
                "counts": {str(k): v for k, v in self.counts.items()}}


def score(captions: Sequence[str | Sequence[str]], drawn: Sequence[Drawn]) -> ContentScore:
    """Content accuracy of one caption per image."""
    return score_many([[c] for c in captions], drawn)


def score_many(captions: Sequence[Sequence[str | Sequence[str]]], drawn: Sequence[Drawn]) -> ContentScore:
    """Content accuracy where each image has several captions (its references): each caption counts
    as a share of its image, so the figure is the mean over images of the share of right captions."""
    right = [0.0, 0.0]
    by_count: dict[int, list[float]] = {}
    for image_captions, objects in zip(captions, drawn, strict=True):
        if not image_captions:
            continue
        verdicts = [judge(c, objects) for c in image_captions]
        shape_share = sum(v[0] for v in verdicts) / len(verdicts)
        right[0] += shape_share
        right[1] += sum(v[1] for v in verdicts) / len(verdicts)
        by_count.setdefault(len(objects), []).append(shape_share)
    images = sum(len(v) for v in by_count.values())
    return ContentScore(images, right[0] / max(images, 1), right[1] / max(images, 1),
                        {k: sum(v) / len(v) for k, v in sorted(by_count.items())},
                        {k: len(v) for k, v in sorted(by_count.items())})


def drawn_objects(dataset_json: str) -> Mapping[str, Drawn]:
    """Image file name → the objects drawn in it, from the generator's ``dataset_shapes.json``.

    A training run and the demo ask several times (object pretraining, complete captions,
    validation, evaluation) and the file of 10,000 scenes takes half a second to parse: the last
    few files read are kept, read again once the file changes (its size or modification time).

    Raises:
        DataError: the file is not the generator's (no ``objects`` per image).
    """
    try:
        st = os.stat(dataset_json)
    except OSError:
        return _read_drawn(dataset_json)  # the reader says what is wrong, in one line
    return _drawn_cached(os.path.abspath(dataset_json), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _drawn_cached(path: str, size: int, mtime_ns: int) -> Mapping[str, Drawn]:
    return MappingProxyType(_read_drawn(path))  # shared between callers: read-only


def _read_drawn(dataset_json: str) -> dict[str, Drawn]:
    data = read_json(dataset_json, DataError)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{dataset_json}: no 'images' list; is this the shapes generator's file?")
    drawn = {}
    for k, image in enumerate(images):
        try:
            drawn[os.path.basename(image["filename"])] = frozenset(
                (o["size"], o["colour"], o["shape"]) for o in image["objects"])
        except (KeyError, TypeError) as e:
            raise DataError(f"{dataset_json}: image {k} has no objects ({e}); regenerate it with `capcli prep`") \
                from None
    return drawn


def content_for(image_ids: Sequence[str], drawn: Mapping[str, Drawn], captions: Sequence[str],
                references: Sequence[Sequence[str]]) -> tuple[ContentScore, ContentScore] | None:
    """(the captions' score, the references' score) on the images known to ``drawn``; None if none is."""
    keep = [i for i, image_id in enumerate(image_ids) if os.path.basename(image_id) in drawn]
    if not keep:
        return None
    objects = [drawn[os.path.basename(image_ids[i])] for i in keep]
    return (score([captions[i] for i in keep], objects),
            score_many([references[i] for i in keep], objects))


@dataclass(frozen=True)
class ContentReport:
    """Content accuracy of an evaluation: per beam size, and the references' own figure (the ceiling)."""

    beams: dict[int, ContentScore]
    references: ContentScore

    def to_dict(self) -> dict:
        return {"beams": {str(k): s.to_dict() for k, s in self.beams.items()},
                "references": self.references.to_dict()}


def split_drawn(data_folder: str, name: str, image_names: Sequence[str]) -> list[Drawn] | None:
    """The objects drawn in each of ``image_names`` when ``name`` is the shapes set prepared in
    ``data_folder`` with its generator file beside it; None otherwise (or if an image is unknown)."""
    from capcli.config import is_shapes
    from capcli.paths import shapes_source

    source = shapes_source(data_folder)[0]
    if not is_shapes(name) or not os.path.isfile(source):
        return None
    drawn = drawn_objects(source)
    found = [drawn.get(os.path.basename(n)) for n in image_names]
    return None if any(d is None for d in found) else found


def complete_rows(prepared, rows: list, lengths: list, cpi: int) -> tuple[list, list]:
    """The training caption rows with each caption that does not name every drawn object with its
    size replaced by one of the same image's that does (in turn), so the decoder learns the complete
    templates: the shorter, size-less ones are the likelier sentences, and beam search would pick
    them. Images without such a caption keep their rows.

    Raises:
        InputError: ``prepared`` is not the shapes set with its generator file beside it.
    """
    from capcli.data.vocab import Detokenizer
    from capcli.errors import InputError
    from capcli.training.samples import image_names

    count = len(rows) // cpi
    drawn = split_drawn(prepared.folder, prepared.name, image_names(prepared, "TRAIN", count))
    if drawn is None:
        raise InputError(f"--complete-captions needs the shapes set's record of what it drew ({prepared.name} in "
                         f"{prepared.folder} has none); use --all-captions")
    words = Detokenizer(prepared.word_map())
    rows, lengths = list(rows), list(lengths)
    for i, objects in enumerate(drawn):
        mine = range(i * cpi, (i + 1) * cpi)
        good = [r for r in mine if judge(words(rows[r]), objects) == (True, True)]
        for n, r in enumerate(r for r in mine if good and r not in good):
            rows[r], lengths[r] = rows[good[n % len(good)]], lengths[good[n % len(good)]]
    return rows, lengths


def shapes_report(data_folder: str, name: str, image_ids: Sequence[str], captions: Mapping[int, Sequence[str]],
                  references: Sequence[Sequence[str]]) -> ContentReport | None:
    """The content accuracy of ``captions`` (beam size → one caption per image) when ``name`` is the
    shapes set prepared in ``data_folder`` with its generator file beside it; None otherwise."""
    from capcli.config import is_shapes
    from capcli.paths import shapes_source

    source = shapes_source(data_folder)[0]
    if not is_shapes(name) or not os.path.isfile(source):
        return None
    drawn = drawn_objects(source)
    scored = {k: content_for(image_ids, drawn, c, references) for k, c in captions.items()}
    if any(s is None for s in scored.values()) or not scored:
        return None
    return ContentReport({k: s[0] for k, s in scored.items()}, next(iter(scored.values()))[1])


def format_report(report: ContentReport) -> str:
    """The report as text: one row per beam size and one for the references."""
    counts = list(report.references.by_count)
    header = (f"{'content':>10}  {'colour+shape':>12}  {'+ size':>6}  "
              + "  ".join(f"{f'{n} obj':>5}" for n in counts))

    def row(label: str, s: ContentScore) -> str:
        return (f"{label:>10}  {s.colour_shape:>12.3f}  {s.with_size:>6.3f}  "
                + "  ".join(f"{s.by_count.get(n, 0.0):>5.2f}" for n in counts))

    lines = [header, "-" * len(header)]
    lines += [row(f"beam {k}", s) for k, s in report.beams.items()]
    lines.append(row("references", report.references))
    return "\n".join(lines)
