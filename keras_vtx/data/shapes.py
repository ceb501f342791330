"""The embedded "shapes" data set: small procedurally drawn images, offline and seeded.

Every image shows one or more filled shapes (circle, square, triangle, cross,
ring, diamond) of a named colour on a noisy dark background. Along with the
pixels come a classification label, tight bounding boxes with their classes and
a caption, so one generator serves classification (ViT), detection (DETR),
image-text (CLIP) and generative (Image GPT) recipes without any download.

The generator uses NumPy only; TensorFlow is not needed to draw the images.
"""

import functools

import numpy as np

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "diamond")

# Named colours kept bright and saturated, far from the dark background, so a
# drawn pixel is never confused with the background.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 100, 240),
    "yellow": (235, 220, 50),
    "magenta": (215, 60, 215),
    "cyan": (60, 215, 225),
    "orange": (245, 145, 30),
    "white": (240, 240, 240),
}
COLOR_NAMES = tuple(COLORS)
_COLOR_VALUES = np.array([COLORS[n] for n in COLOR_NAMES], "float32")

# Thresholds on the shape's extent as a fraction of the image side.
SIZE_WORDS = ((0.34, "small"), (0.55, "medium"), (np.inf, "large"))


def _size_word(extent):
    return next(word for limit, word in SIZE_WORDS if extent < limit)


def _position_words(cx, cy):
    """Where a shape sits, from its normalised centre, on a 3 x 3 grid."""
    column = 0 if cx < 1 / 3 else (2 if cx > 2 / 3 else 1)
    row = 0 if cy < 1 / 3 else (2 if cy > 2 / 3 else 1)
    vertical = ("top", "middle", "bottom")[row]
    horizontal = ("left", "center", "right")[column]
    if row == 1 and column == 1:
        return "in the center"
    if row == 1:
        return f"on the {horizontal}"
    if column == 1:
        return f"at the {vertical}"
    return f"in the {vertical} {horizontal}"


def _shape_mask(shape, dx, dy, radius):
    """Boolean mask of `shape` on pixel-centre offsets `dx`, `dy` from its centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        side = radius * 0.85  # a square of the circle's width looks much bigger
        return (ax <= side) & (ay <= side)
    if shape == "triangle":
        # Pointing up: the half-width grows linearly from the apex to the base.
        return (dy >= -radius) & (dy <= radius) & (ax <= (dy + radius) * 0.5)
    if shape == "cross":
        arm = max(radius * 0.3, 0.75)
        return ((ax <= arm) & (ay <= radius)) | ((ay <= arm) & (ax <= radius))
    if shape == "ring":
        d2 = dx * dx + dy * dy
        inner = min(radius * 0.55, radius - 1.25)
        return (d2 <= radius * radius) & (d2 >= inner * inner)
    if shape == "diamond":
        return ax + ay <= radius
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPE_CLASSES}.")


BACKGROUNDS = ("dark", "color", "field")
# The colour field's octaves: random colours on grids of 4 x 4 and 8 x 8 cells, the finer
# one at half the amplitude, upsampled to the image and summed around a mid-dark grey.
FIELD_OCTAVES = ((4, 1.0), (8, 0.5))


@functools.lru_cache(maxsize=16)
def _bicubic_matrix(cells, size):
    """`(size, cells)` weights that upsample `cells` samples to `size` pixels.

    Keys' cubic kernel (a = -0.5) with half-pixel centres, the weights of taps
    outside the grid dropped and each row renormalised: `tf.image.resize(...,
    method="bicubic")` without TensorFlow (the same numbers when `size` is a
    multiple of `cells`; within 1e-3 otherwise).
    """
    position = (np.arange(size) + 0.5) * cells / size - 0.5
    d = np.abs(position[:, None] - np.arange(cells)[None, :])
    a = -0.5
    weights = np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                       np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0))
    return weights / weights.sum(axis=1, keepdims=True)


def _color_field(rng, size):
    """A smooth random colour image `(size, size, 3)`: neighbouring pixels alike,
    distant ones not (as in natural images, unlike a flat background)."""
    field = np.zeros((size, size, 3))
    for cells, amplitude in FIELD_OCTAVES:
        grid = rng.uniform(-1.0, 1.0, size=(cells, cells, 3))
        upsample = _bicubic_matrix(cells, size)
        # Rows then columns: two small products (a three-operand einsum loops in Python's
        # stead and took 1.5 ms an image).
        rows = np.tensordot(upsample, grid, axes=(1, 0))  # (size, cells, 3)
        field += amplitude * np.einsum("xj,yjc->yxc", upsample, rows)
    return np.clip(80.0 + 60.0 * field, 0.0, 255.0)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; received {value!r}.")
    return int(value)


def generate_shapes(
    num_images,
    image_size=32,
    seed=0,
    min_shapes=1,
    max_shapes=1,
    size_range=(0.3, 0.8),
    noise=10.0,
    classes=SHAPE_CLASSES,
    background="dark",
):
    """Draws `num_images` images of coloured shapes with labels, boxes and captions.

    Shapes never overlap (their bounding boxes are at least one pixel apart),
    so each box bounds exactly the pixels drawn for its shape. In an image with
    several shapes the first is the largest and gives the classification label.
    The same arguments always give the same images.

    Args:
        num_images: int >= 0, how many images to draw.
        image_size: int >= 8, the side of the square images.
        seed: int, the seed of NumPy's generator.
        min_shapes: int >= 1, the fewest shapes per image.
        max_shapes: int >= `min_shapes`, the most shapes per image.
        size_range: `(low, high)` extent of the largest shape as a fraction of
            `image_size`; further shapes are drawn smaller so that they fit.
        noise: float >= 0, standard deviation of the Gaussian pixel noise added
            to the whole image (0 gives flat backgrounds and flat shapes).
        classes: the shape names to draw from, a subset of `SHAPE_CLASSES`;
            labels index into this tuple.
        background: `"dark"` (a random dark grey-ish colour, far from every
            shape colour), `"color"` (one of the named colours, and the
            shapes in other named colours, so that which colour is the shape
            and which the background differs from image to image) or
            `"field"` (a smooth random colour field, two octaves of random
            colours on 4 x 4 and 8 x 8 grids upsampled bicubically: neighbouring
            patches alike and distant ones not, as in natural images; over it
            ViT's masked patch prediction learns local heads, docs/vit.md).

    Returns:
        A dict with
        - `"images"`: `(num_images, image_size, image_size, 3)` uint8 RGB;
        - `"labels"`: `(num_images,)` int32, the class of the first (largest) shape;
        - `"boxes"`: `(num_images, max_shapes, 4)` float32 normalised
          `(center_x, center_y, width, height)`, zeros for padding;
        - `"box_labels"`: `(num_images, max_shapes)` int32, -1 for padding;
        - `"captions"`: list of `num_images` strings such as
          `"a small red circle on the left"` (several shapes joined by "and");
        - `"class_names"`: the tuple `classes`.

    Example:
    >>> data = generate_shapes(4, image_size=32, seed=1)
    >>> data["images"].shape, data["images"].dtype.name, data["labels"].shape
    ((4, 32, 32, 3), 'uint8', (4,))
    >>> data["captions"][0].startswith("a ")
    True
    """
    num_images = _check_int("num_images", num_images, 0)
    image_size = _check_int("image_size", image_size, 8)
    min_shapes = _check_int("min_shapes", min_shapes, 1)
    max_shapes = _check_int("max_shapes", max_shapes, 1)
    if max_shapes < min_shapes:
        raise ValueError(
            f"`max_shapes` ({max_shapes}) must be >= `min_shapes` ({min_shapes})."
        )
    low, high = (float(v) for v in size_range)
    if not 0 < low <= high <= 1:
        raise ValueError(
            f"`size_range` must be (low, high) with 0 < low <= high <= 1; received {size_range!r}."
        )
    if noise < 0:
        raise ValueError(f"`noise` must be >= 0; received {noise!r}.")
    if background not in BACKGROUNDS:
        raise ValueError(
            f"`background` must be 'dark', 'color' or 'field'; received {background!r}."
        )
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if not classes or unknown:
        raise ValueError(
            f"`classes` must be a non-empty subset of {SHAPE_CLASSES}; received {classes!r}."
        )

    rng = np.random.default_rng(seed)
    n, s = num_images, image_size
    images = np.empty((n, s, s, 3), "float32")
    labels = np.zeros((n,), "int32")
    boxes = np.zeros((n, max_shapes, 4), "float32")
    box_labels = np.full((n, max_shapes), -1, "int32")
    captions = []
    centers = np.arange(s, dtype="float32") + 0.5
    min_extent = 4.0  # pixels: below this a ring or cross is no longer recognisable

    backgrounds = rng.uniform(0, 70, size=(n, 1, 1, 3)).astype("float32")
    images[:] = backgrounds
    for i in range(n):
        background_color = None
        if background == "color":
            background_color = int(rng.integers(len(COLOR_NAMES)))
            images[i] = _COLOR_VALUES[background_color]
        elif background == "field":
            images[i] = _color_field(rng, s)
        count = int(rng.integers(min_shapes, max_shapes + 1))
        taken = np.zeros((s, s), bool)  # previous boxes, grown by a 1-pixel margin
        phrases = []
        extent = rng.uniform(low, high) * s
        placed = 0
        while placed < count:
            shape_id = int(rng.integers(len(classes)))
            mask = None
            for _ in range(30):
                radius = extent / 2
                cx = rng.uniform(radius, s - radius)
                cy = rng.uniform(radius, s - radius)
                candidate = _shape_mask(
                    classes[shape_id], centers[None, :] - cx, centers[:, None] - cy, radius
                )
                if not candidate.any():
                    continue
                rows = np.flatnonzero(candidate.any(axis=1))
                cols = np.flatnonzero(candidate.any(axis=0))
                y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                if not taken[y0:y1, x0:x1].any():
                    mask = candidate
                    break
            if mask is None:
                if extent > min_extent:
                    extent = max(extent * 0.8, min_extent)
                    continue
                if placed >= min_shapes:
                    break
                raise ValueError(
                    f"Could not fit {count} shapes in a {s}x{s} image; lower `max_shapes` "
                    "or `size_range`, or raise `image_size`."
                )
            taken[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
            if background_color is None:
                color = int(rng.integers(len(COLOR_NAMES)))
            else:  # any named colour but the background's
                color = int(rng.integers(len(COLOR_NAMES) - 1))
                color += color >= background_color
            images[i][mask] = _COLOR_VALUES[color]
            box = ((x0 + x1) / 2 / s, (y0 + y1) / 2 / s, (x1 - x0) / s, (y1 - y0) / s)
            boxes[i, placed] = box
            box_labels[i, placed] = shape_id
            phrases.append(
                f"a {_size_word(max(box[2], box[3]))} {COLOR_NAMES[color]} "
                f"{classes[shape_id]} {_position_words(box[0], box[1])}"
            )
            placed += 1
            # At most 0.8 x the extent: even a square (the smallest box for its extent)
            # keeps a bigger box than any later shape, so the label is the largest.
            extent = max(min_extent, extent * rng.uniform(0.4, 0.8))
        labels[i] = box_labels[i, 0]
        captions.append(" and ".join(phrases))
    if noise:
        images += rng.normal(0.0, noise, size=images.shape).astype("float32")
    return {
        "images": np.clip(np.rint(images), 0, 255).astype("uint8"),
        "labels": labels,
        "boxes": boxes,
        "box_labels": box_labels,
        "captions": captions,
        "class_names": classes,
    }


def shapes_to_coco(data, file_names, first_image_id=1, first_annotation_id=1):
    """The COCO instances dict (images, annotations, categories) of `generate_shapes` output.

    Boxes become COCO's absolute `[x, y, width, height]` (pixel-aligned, so
    whole numbers), `area` is the box area, `iscrowd` 0; category ids are 1..K
    in the order of `data["class_names"]`.

    Args:
        data: the dict `generate_shapes` returns.
        file_names: one image file name per image.
        first_image_id: int, the id of the first image (the next ones follow).
        first_annotation_id: int, the id of the first annotation.

    Returns:
        A JSON-serialisable dict with `"images"`, `"annotations"` and `"categories"`.

    Example:
    >>> data = generate_shapes(2, image_size=16, max_shapes=2, seed=0)
    >>> coco = shapes_to_coco(data, ["a.png", "b.png"])
    >>> coco["images"][0], coco["categories"][0]
    ({'id': 1, 'file_name': 'a.png', 'height': 16, 'width': 16}, {'id': 1, 'name': 'circle'})
    """
    images = data["images"]
    if len(file_names) != len(images):
        raise ValueError(
            f"`file_names` must name each of the {len(images)} images; "
            f"received {len(file_names)} names."
        )
    height, width = images.shape[1:3]
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(data["class_names"])]}
    annotation_id = int(first_annotation_id)
    for i, name in enumerate(file_names):
        image_id = int(first_image_id) + i
        coco["images"].append({"id": image_id, "file_name": str(name),
                               "height": int(height), "width": int(width)})
        for box, label in zip(data["boxes"][i], data["box_labels"][i]):
            if label < 0:
                continue
            cx, cy, w, h = (float(v) for v in box)
            # The generator's boxes are whole pixels: rounding only removes float32 noise.
            x0, y0 = round((cx - w / 2) * width), round((cy - h / 2) * height)
            bw, bh = round(w * width), round(h * height)
            coco["annotations"].append({
                "id": annotation_id, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": 0,
            })
            annotation_id += 1
    return coco


def export_shapes_coco(directory, num_images, image_size=128, seed=0, min_shapes=1,
                       max_shapes=4, size_range=(0.25, 0.6), noise=8.0,
                       annotation_file="instances.json", image_folder="images"):
    """Writes a shapes detection set in COCO format: PNG images and an instances JSON.

    The embedded default detection data (no download): `num_images` images of
    one to `max_shapes` shapes with tight boxes, as `generate_shapes` draws
    them. Needs Pillow (a keras_vtx dependency) to write the PNGs.

    Args:
        directory: the folder to write to (created if missing).
        num_images: int >= 1.
        image_size: int, the side of the square images.
        seed: int, the generator's seed: the same arguments write the same files.
        min_shapes: see `generate_shapes`.
        max_shapes: see `generate_shapes`.
        size_range: see `generate_shapes`.
        noise: see `generate_shapes`.
        annotation_file: the JSON's file name inside `directory`.
        image_folder: the images' sub-folder of `directory`.

    Returns:
        `(annotation_path, image_dir)`, the paths written.

    Example:
    >>> import json, tempfile
    >>> path, image_dir = export_shapes_coco(tempfile.mkdtemp(), 3, image_size=32)
    >>> coco = json.load(open(path))
    >>> len(coco["images"]), len(coco["categories"]), sorted(coco["annotations"][0])
    (3, 6, ['area', 'bbox', 'category_id', 'id', 'image_id', 'iscrowd'])
    """
    import json
    import os

    from PIL import Image

    num_images = _check_int("num_images", num_images, 1)
    data = generate_shapes(num_images, image_size=image_size, seed=seed, min_shapes=min_shapes,
                           max_shapes=max_shapes, size_range=size_range, noise=noise)
    directory = os.fspath(directory)
    image_dir = os.path.join(directory, image_folder)
    os.makedirs(image_dir, exist_ok=True)
    file_names = [f"{i + 1:06d}.png" for i in range(num_images)]
    for name, image in zip(file_names, data["images"]):
        Image.fromarray(image).save(os.path.join(image_dir, name), compress_level=1)
    coco = shapes_to_coco(data, file_names)
    coco["info"] = {"description": f"keras_vtx shapes detection set (seed {seed})"}
    path = os.path.join(directory, annotation_file)
    with open(path, "w") as f:
        json.dump(coco, f)
    return path, image_dir
