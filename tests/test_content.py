"""Content accuracy on shapes (evaluation.content): the parser on the generator's templates and on wrong captions."""

import random

import numpy as np
import pytest

from capcli.data import shapes
from capcli.evaluation import content

RED_CIRCLE = frozenset({("small", "red", "circle")})
TWO = frozenset({("large", "blue", "square"), ("small", "red", "circle")})


def _scene(index: int) -> list[shapes.Shape]:
    rng = np.random.default_rng([7, index])
    count = int(rng.choice([1, 2, 3]))
    placed = None
    while placed is None:
        placed = shapes._place(rng, count)
    return placed


def _drawn(placed: list[shapes.Shape]) -> content.Drawn:
    return frozenset((s.size, s.colour, s.shape) for s in placed)


@pytest.mark.parametrize("count", [1, 2])
def test_every_template_of_one_and_two_objects_is_right_on_colour_and_shape(count):
    seen = 0
    for index in range(400):
        placed = _scene(index)
        if len(placed) != count:
            continue
        rng = random.Random(index)
        pool = {1: shapes._one, 2: shapes._two}[count](*placed, rng)
        for caption in pool:
            assert content.judge(caption, _drawn(placed))[0], caption
        seen += 1
    assert seen > 50


def test_three_object_templates_that_leave_one_out_are_wrong_and_the_others_right():
    placed = _scene(next(i for i in range(100) if len(_scene(i)) == 3))
    a, b, c = placed
    pool = shapes._three(a, b, c, random.Random(0))
    verdicts = [content.judge(caption, _drawn(placed)) for caption in pool]
    # "three shapes A B and C", "A rel B and C", "the picture shows A B and C", "C rel B and A" name all three
    assert [v[0] for v in verdicts] == [True, True, False, True, False, True, False]
    assert [v[1] for v in verdicts] == [True, True, False, True, False, True, False]


def test_sizes_given_after_the_noun_and_colours_after_coloured_count():
    assert content.judge("a red circle that is small", RED_CIRCLE) == (True, True)
    assert content.judge("one small circle coloured red", RED_CIRCLE) == (True, True)
    assert content.judge("the image shows a single small red circle", RED_CIRCLE) == (True, True)
    m = content.mentions("a big blue square left of a small red circle")
    assert m == [content.Mention("square", "blue", "large"), content.Mention("circle", "red", "small")]


@pytest.mark.parametrize("caption, expected", [
    ("a small blue circle on a textured background", (False, False)),  # wrong colour
    ("a small red square on a textured background", (False, False)),  # wrong shape
    ("a large red circle on a textured background", (True, False)),  # wrong size
    ("a red circle on a textured background", (True, False)),  # no size
    ("a small circle on a textured background", (False, False)),  # no colour
    ("two shapes a small red circle and a small red star", (False, False)),  # an extra object
    ("a small red circle that is large", (True, False)),  # two sizes for one object
    ("", (False, False)),
])
def test_wrong_captions_of_one_object(caption, expected):
    assert content.judge(caption, RED_CIRCLE) == expected


def test_colours_bound_to_the_wrong_shapes_and_missing_objects_are_wrong():
    assert content.judge("a big blue square left of a small red circle", TWO) == (True, True)
    assert content.judge("a big red square left of a small blue circle", TWO) == (False, False)
    assert content.judge("a big blue square", TWO) == (False, False)
    # the same object named twice, once without its size, is still one object with one size
    assert content.judge("in the image the blue square is left of the red circle", TWO) == (True, False)
    assert content.judge("a big blue square left of a small red circle the blue square", TWO) == (True, True)


def test_scores_are_shares_of_images_overall_and_by_count():
    drawn = [RED_CIRCLE, TWO, TWO, RED_CIRCLE]
    captions = ["a small red circle", "a large blue square and a small red circle", "a blue square",
                "a red circle"]
    s = content.score(captions, drawn)
    assert (s.images, s.colour_shape, s.with_size) == (4, 0.75, 0.5)
    assert s.by_count == {1: 1.0, 2: 0.5} and s.counts == {1: 2, 2: 2}
    refs = content.score_many([["a small red circle", "a blue circle"], ["a blue square"]], drawn[:2])
    assert (refs.colour_shape, refs.with_size) == (0.25, 0.25)


def test_drawn_objects_read_from_the_generator_file(tmp_path):
    import json

    path = tmp_path / "dataset_shapes.json"
    path.write_text(json.dumps({"images": [{"filename": "shapes_000001.jpg", "objects": [
        {"colour": "red", "shape": "circle", "size": "small", "x": 1, "y": 2, "radius": 3}]}]}))
    assert content.drawn_objects(str(path)) == {"shapes_000001.jpg": RED_CIRCLE}
    path.write_text(json.dumps({"images": [{"filename": "a.jpg"}]}))
    with pytest.raises(content.DataError, match="image 0 has no objects"):
        content.drawn_objects(str(path))


def test_complete_rows_keep_only_captions_naming_every_object_with_its_size(data, tmp_path):
    import shutil

    from capcli.data.hdf5 import find_prepared
    from capcli.data.vocab import Detokenizer
    from capcli.errors import InputError
    from capcli.training.samples import image_names

    prepared = find_prepared(str(data), None)
    rows, lengths = prepared.captions("TRAIN")
    cpi = prepared.images_meta("TRAIN")[0]
    kept, kept_lengths = content.complete_rows(prepared, rows, lengths, cpi)
    words = Detokenizer(prepared.word_map())
    drawn = content.drawn_objects(str(data / "shapes" / "dataset_shapes.json"))
    names = image_names(prepared, "TRAIN", len(rows) // cpi)
    replaced = 0
    for i, name in enumerate(names):
        mine = range(i * cpi, (i + 1) * cpi)
        originals = {tuple(rows[r]) for r in mine}
        for r in mine:
            assert content.judge(words(kept[r]), drawn[name]) == (True, True)
            assert tuple(kept[r]) in originals and kept_lengths[r] == lengths[rows.index(kept[r])]
            replaced += kept[r] != rows[r]
    assert replaced > 0  # some templates leave an object or a size out
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "shapes" / "dataset_shapes.json").unlink()
    with pytest.raises(InputError, match="--complete-captions needs the shapes set's record"):
        content.complete_rows(find_prepared(str(copy), None), rows, lengths, cpi)
