"""Regenerates the documentation gallery: the four recipes on the embedded data, then pictures.

    python scripts/make_gallery.py                  # train what is missing, draw everything
    python scripts/make_gallery.py --retrain        # train every recipe again first
    python scripts/make_gallery.py --only vit,igpt  # some families

Each recipe runs with its defaults (the embedded shapes data, the `*_pico_*`
presets) into `runs/gallery/<recipe>/`, unless a finished run (`report.json`)
is already there. The trained presets are then loaded with attention outputs
switched on (`return_attention_scores=True`, weights kept) and the
`keras_vtx.analysis` tools draw their pictures into `docs/gallery/`, on images
the recipes did not train on. `docs/gallery.md` is rewritten with the
pictures and the figures of each run's report. Takes about 35 minutes on 2
CPU cores, most of it training; the backend is `KERAS_BACKEND`'s.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    "vit": "vit_classification",
    "clip": "clip_contrastive",
    "detr": "detr_detection",
    "igpt": "igpt_pretrain",
}
# Held-out pictures: a seed the recipes' data never uses.
DISPLAY_SEED = 2021


def train(name, runs, retrain):
    output = os.path.join(runs, RECIPES[name])
    if os.path.exists(os.path.join(output, "report.json")) and not retrain:
        print(f"{name}: using the finished run in {output}", flush=True)
        return output
    if os.path.exists(output):
        shutil.rmtree(output)
    command = [sys.executable, os.path.join(ROOT, "recipes", f"{RECIPES[name]}.py"),
               "--output", output, "--verbose", "2"]
    print(f"{name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"{name}: trained in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return output


def _report(output):
    with open(os.path.join(output, "report.json")) as f:
        return json.load(f)


def vit_pictures(output, folder):
    from keras_vtx.analysis import (
        attention_maps,
        mean_attention_distance,
        patch_embedding_components,
        plot_attention_maps,
        plot_mean_attention_distance,
        plot_patch_embedding_components,
        plot_position_embedding_similarity,
        position_embedding_similarity,
        uniform_attention_distance,
    )
    from keras_vtx.data.shapes import generate_shapes
    from keras_vtx.models import ViTClassifier

    model = ViTClassifier.from_preset(os.path.join(output, "preset"),
                                      return_attention_scores=True)
    size = model.backbone.image_size[0]
    shapes = generate_shapes(64, image_size=size, seed=DISPLAY_SEED)
    images = shapes["images"].astype("float32")  # the preset normalises raw pixels
    maps = attention_maps(model, images[:8])
    names = [shapes["class_names"][i] for i in shapes["labels"][:8]]
    files = {
        "vit_attention_maps.png": plot_attention_maps(
            shapes["images"][:8], maps, os.path.join(folder, "vit_attention_maps.png"),
            titles=names),
        "vit_mean_attention_distance.png": plot_mean_attention_distance(
            mean_attention_distance(model, images),
            os.path.join(folder, "vit_mean_attention_distance.png"),
            reference=uniform_attention_distance(
                tuple(model.backbone.grid_size),
                model.backbone.image_size[0] / model.backbone.grid_size[0])),
        "vit_patch_embedding_components.png": plot_patch_embedding_components(
            patch_embedding_components(model),
            os.path.join(folder, "vit_patch_embedding_components.png")),
        "vit_position_embedding_similarity.png": plot_position_embedding_similarity(
            position_embedding_similarity(model),
            os.path.join(folder, "vit_position_embedding_similarity.png")),
    }
    return files


def clip_pictures(output, folder):
    from keras_vtx.analysis import (
        attention_maps,
        embedding_set_similarity,
        plot_attention_maps,
        plot_embedding_set_similarity,
        plot_zero_shot_panel,
        zero_shot_top_k,
    )
    from keras_vtx.data.shapes import generate_shapes
    from keras_vtx.models import CLIP
    from keras_vtx.models.clip.zero_shot_classifier import ZeroShotClassifier

    model = CLIP.from_preset(os.path.join(output, "preset"),
                             image_encoder={"return_attention_scores": True})
    size = model.image_encoder.image_size[0]
    shapes = generate_shapes(120, image_size=size, seed=DISPLAY_SEED)
    images = shapes["images"].astype("float32")
    classifier = ZeroShotClassifier(model, shapes["class_names"], templates="shapes")
    top = zero_shot_top_k(classifier, images[:4], k=5)
    truth = [shapes["class_names"][i] for i in shapes["labels"][:4]]
    groups = {name: images[shapes["labels"] == i]
              for i, name in enumerate(shapes["class_names"])}
    return {
        "clip_zero_shot_panel.png": plot_zero_shot_panel(
            shapes["images"][:4], top, os.path.join(folder, "clip_zero_shot_panel.png"),
            true_labels=truth),
        "clip_attention_maps.png": plot_attention_maps(
            shapes["images"][:8], attention_maps(model, images[:8]),
            os.path.join(folder, "clip_attention_maps.png"),
            titles=[shapes["class_names"][i] for i in shapes["labels"][:8]]),
        "embedding_set_similarity.png": plot_embedding_set_similarity(
            embedding_set_similarity(groups, model=model),
            os.path.join(folder, "embedding_set_similarity.png")),
    }


def detr_pictures(output, folder):
    import numpy as np

    from keras_vtx.analysis import (
        detr_attention_maps,
        detr_encoder_attention,
        plot_detr_decoder_attention,
        plot_detr_encoder_attention,
    )
    from keras_vtx.data import load_detection_data
    from keras_vtx.models import DETR

    model = DETR.from_preset(os.path.join(output, "preset"), return_attention_scores=True)
    # The recipe's held-out split, as the recipe's evaluation sees it.
    _, validation, info = load_detection_data("shapes", batch_size=4, seed=0)
    inputs, targets = next(iter(validation.as_numpy_iterator()))
    images, mask = inputs["images"], inputs["pixel_mask"]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    display = np.clip(images * std + mean, 0, 1)
    result = detr_attention_maps(model, images[:1], pixel_mask=mask[:1], top_k=3)[0]
    # As the paper's figure 3: reference points on the objects (ground-truth centres).
    height, width = targets["size"][0]
    boxes = targets["boxes"][0][targets["labels"][0] >= 0][:3]
    points = np.array([(int(cy * height), int(cx * width)) for cx, cy, _, _ in boxes])
    encoder = detr_encoder_attention(model, images[:1], points, pixel_mask=mask[:1])[0]
    detections_path = os.path.join(folder, "detr_detections.png")
    _detr_detection_grid(model, validation, info.class_names, detections_path)
    return {
        "detr_detections.png": detections_path,
        "detr_decoder_attention.png": plot_detr_decoder_attention(
            display[0][:height, :width], result,
            os.path.join(folder, "detr_decoder_attention.png"),
            class_names=info.class_names),
        "detr_encoder_attention.png": plot_detr_encoder_attention(
            display[0][:height, :width], encoder, points,
            os.path.join(folder, "detr_encoder_attention.png")),
    }


def _detr_detection_grid(model, validation, class_names, path, count=8, columns=4, zoom=3):
    """The first `count` held-out images with the detections scoring >= 0.5, enlarged."""
    import numpy as np
    from PIL import Image

    from keras_vtx.analysis import draw_detections
    from keras_vtx.models.detr import post_process_detections

    tiles = []
    for x, y in validation.as_numpy_iterator():
        sizes = np.asarray(y["size"])
        found = post_process_detections(model(x, training=False), sizes, threshold=0.5)
        for image, (height, width), detections in zip(x["images"], sizes, found):
            pixels = np.repeat(np.repeat(image[:height, :width], zoom, 0), zoom, 1)
            tiles.append(draw_detections(
                pixels, np.asarray(detections["boxes"]) * zoom, detections["labels"],
                detections["scores"], class_names=class_names, denormalize=True))
        if len(tiles) >= count:
            break
    tiles = tiles[:count]
    gap = 4
    height = max(t.shape[0] for t in tiles)
    width = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255,
                     "uint8")
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
        canvas[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    Image.fromarray(canvas).save(path)
    return path


def igpt_pictures(output, folder):
    files = {}
    for name in ("completions.png", "samples.png", "probe_accuracy.png"):
        target = os.path.join(folder, f"igpt_{name}")
        shutil.copyfile(os.path.join(output, name), target)
        files[f"igpt_{name}"] = target
    return files


PICTURES = {"vit": vit_pictures, "clip": clip_pictures, "detr": detr_pictures,
            "igpt": igpt_pictures}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", default=",".join(RECIPES),
                        help="comma-separated families: vit, clip, detr, igpt")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "gallery"))
    parser.add_argument("--folder", default=os.path.join(ROOT, "docs", "gallery"))
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--train-only", action="store_true",
                        help="run the recipes that have no finished run, draw nothing")
    args = parser.parse_args(argv)
    families = args.only.split(",")
    for name in families:
        if name not in RECIPES:
            parser.error(f"--only: expected names from {tuple(RECIPES)}; received {name!r}")
    os.makedirs(args.folder, exist_ok=True)
    summary_path = os.path.join(args.folder, "gallery.json")
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    for name in families:
        output = train(name, args.runs, args.retrain)
        if args.train_only:
            continue
        import keras

        keras.utils.set_random_seed(0)
        files = PICTURES[name](output, args.folder)
        report = _report(output)
        summary[name] = {
            "recipe": RECIPES[name],
            "backend": report.get("backend"),
            "pictures": sorted(os.path.basename(p) for p in files.values()),
            # Figures only: not the run's file paths, which are this machine's.
            "report": {k: v for k, v in report.items()
                       if isinstance(v, (int, float, str)) and not os.path.isabs(str(v))},
        }
        print(f"{name}: {', '.join(summary[name]['pictures'])}", flush=True)
    if args.train_only:
        return summary
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary


if __name__ == "__main__":
    main()
