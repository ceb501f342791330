"""Writes the example notebooks in examples/ from the Python source in this file.

    python scripts/make_notebooks.py            # rewrite examples/*.ipynb
    python scripts/make_notebooks.py --check    # exit 1 if a committed notebook differs

The notebooks are reviewed here, as Python, and committed as this script's output: clean
(no outputs, no execution counts) and with stable cell ids, so that rewriting them gives the
same bytes and tests/test_examples.py can check they are in sync. Every code cell is plain
Python (no `%` or `!` magics), so a notebook also runs as a script
(`jupyter nbconvert --to script`).

Each notebook's second cell is the same setup: install keras_vtx when it is missing
(`KERAS_VTX_SOURCE`), pick the backend (`KERAS_BACKEND`, JAX by default) before Keras is
imported, pick the distribution (`keras_vtx.distribute.get_distribution("auto")`) and read
`KERAS_VTX_TINY`: with `KERAS_VTX_TINY=1` the notebooks use tiny presets and a few steps so
that they run on a CPU in about a minute (CI executes them so); otherwise the paper-ish
presets, sized for a Colab or Kaggle GPU or TPU.
"""

import argparse
import os
import sys
import textwrap

import nbformat

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "examples")

SETUP_MARKDOWN = """\
## Running it

The next cell installs keras_vtx when it is not importable: `pip install` of
`KERAS_VTX_SOURCE`, the package's source path, wheel path or name (default
`keras-vtx`). It then picks the backend, JAX unless `KERAS_BACKEND` says otherwise
(`tensorflow` or `torch`; it must be set before Keras is imported), and the
distribution: `keras_vtx.distribute.get_distribution("auto")` gives data
parallelism over every local GPU or TPU core (one device on PyTorch); models are
built, compiled and trained inside its `scope()`.

`KERAS_VTX_TINY=1` switches to tiny presets and a few training steps, so that the
notebook runs top to bottom on a CPU in about a minute (the test suite runs it so).
The flag alone decides: without it the notebook uses the paper-ish preset even on
a CPU. Pictures are written as PNG files under `KERAS_VTX_OUTPUT` (default
`./outputs`) and shown inline."""


def setup_cell(name):
    """The setup code cell shared by every notebook; `name` is its output folder."""
    return textwrap.dedent(f'''\
        import importlib.util
        import os
        import subprocess
        import sys

        # KERAS_VTX_TINY=1: tiny presets and a few steps, about a minute on one CPU core.
        TINY = os.environ.get("KERAS_VTX_TINY", "0") == "1"
        if importlib.util.find_spec("keras_vtx") is None:
            # A package name, a wheel or a source checkout path (for example "/content/keras_vtx").
            source = os.environ.get("KERAS_VTX_SOURCE", "keras-vtx")
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", source])
        # Keras reads the backend once, when it is first imported.
        os.environ.setdefault("KERAS_BACKEND", "jax")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

        import keras  # noqa: E402
        import numpy as np  # noqa: E402

        from keras_vtx.distribute import get_distribution  # noqa: E402

        distribution = get_distribution("auto")
        REPLICAS = distribution.num_replicas  # global batch sizes are multiples of this
        OUTPUT = os.path.join(os.path.abspath(os.environ.get("KERAS_VTX_OUTPUT", "outputs")),
                              "{name}")
        os.makedirs(OUTPUT, exist_ok=True)
        keras.utils.set_random_seed(0)
        print(f"backend: {{keras.backend.backend()}}, {{distribution}}, tiny: {{TINY}}")
        print(f"pictures go to {{OUTPUT}}")


        def show(path):
            """Shows a PNG inline in a notebook; prints its path when run as a script."""
            try:
                from IPython import get_ipython
                from IPython.display import Image, display
            except ImportError:
                get_ipython = None
            if get_ipython is None or get_ipython() is None:
                print("wrote", path)
            else:
                display(Image(filename=path))
        ''')


def md(text):
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text):
    return ("code", textwrap.dedent(text).strip("\n"))


def notebook_cells(name, title_markdown, cells):
    """The cells of a notebook: what it shows and how to run it, the setup, then its own."""
    title = textwrap.dedent(title_markdown).strip("\n") + "\n\n" + SETUP_MARKDOWN
    return [("markdown", title), code(setup_cell(name)), *cells]


# --- ViT fine-tuning ---------------------------------------------------------------------

VIT = notebook_cells("vit_fine_tuning", """\
    # ViT: fine-tuning and seeing inside

    Fine-tunes a Vision Transformer (Dosovitskiy et al., 2021) classifier from a preset on
    an image classification set (by default the embedded, procedurally drawn "shapes"
    set: no download), evaluates it, then draws the paper's pictures from the trained model:

    - attention maps from the class token and attention rollout (Abnar & Zuidema, 2020),
      overlaid on the images (the paper's figure 6 and appendix D.8);
    - the mean attention distance of every head by depth (figure 7, right; appendix D.7);
    - the principal components of the patch-embedding filters (figure 7, left);
    - the cosine similarity of the position embeddings (figure 7, centre).
    """, [
    md("""\
        ## Configuration

        On an accelerator: `vit_base_patch16_224` (ViT-B/16) at 224 x 224. Named presets have
        random weights; `"hf://google/vit-base-patch16-224"` loads the published ImageNet
        weights (needs internet) for a real fine-tuning. `DATA` takes `shapes`, `shapes:N`,
        `dir:PATH` (a folder of class folders) or `tfds:NAME`.
        """),
    code("""\
        if TINY:
            PRESET, DATA, IMAGE_SIZE = "vit_pico_patch4_32", "shapes:160", 32
            BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, LEARNING_RATE = 16, 1, 3, 1e-3
        else:
            PRESET = os.environ.get("VIT_PRESET", "vit_base_patch16_224")
            DATA = os.environ.get("VIT_DATA", "shapes:6000")
            IMAGE_SIZE, BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, LEARNING_RATE = 224, 64, 3, None, 1e-4
        BATCH_SIZE *= REPLICAS
        # TensorFlow takes longer to compile the training step with XLA than a few tiny steps take;
        # JAX compiles anyway (its op-by-op mode is slower still).
        JIT_COMPILE = False if TINY and keras.backend.backend() == "tensorflow" else "auto"
        """),
    md("## Data and training"),
    code("""\
        from keras_vtx.data import load_classification_data
        from keras_vtx.models import ViTClassifier

        # The endless shapes set needs no augmentation; real images get random crops and flips.
        augment = {"flip": False, "train_crop": "random", "padding": 0} if DATA.startswith(
            "shapes") else {}
        data = load_classification_data(DATA, image_size=IMAGE_SIZE, batch_size=BATCH_SIZE,
                                         **augment)
        class_names = data.class_names
        train = data.train.repeat() if STEPS_PER_EPOCH else data.train
        steps = STEPS_PER_EPOCH or data.steps_per_epoch
        print(data)

        with distribution.scope():
            model = ViTClassifier.from_preset(PRESET, num_classes=len(class_names),
                                              image_size=IMAGE_SIZE)
            model.compile(learning_rate=LEARNING_RATE, total_steps=EPOCHS * steps,
                          warmup_steps=max(1, EPOCHS * steps // 10),
                          jit_compile=JIT_COMPILE)
            # Tiny mode validates once, after training.
            history = model.fit(train, validation_data=None if TINY else data.validation,
                                epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
                                shuffle=False, verbose=2)
            results = model.evaluate(data.validation, return_dict=True, verbose=0)
        print({name: round(float(value), 4) for name, value in results.items()})
        """),
    md("""\
        ## Attention maps and rollout

        Attention weights come out of the model through an explicit option. They are
        computed outside the fused attention kernel, so training runs without it: the
        trained weights are saved as a preset and reloaded with
        `return_attention_scores=True`.
        """),
    code("""\
        from keras_vtx.analysis.vit_attention import attention_maps, plot_attention_maps

        preset_dir = os.path.join(OUTPUT, "preset")
        model.save_to_preset(preset_dir, overwrite=True)
        attention_model = ViTClassifier.from_preset(preset_dir, return_attention_scores=True)

        images, labels = next(iter(data.validation.unbatch().batch(8)))
        images, labels = np.asarray(images), np.asarray(labels)
        if labels.ndim > 1:  # one-hot labels
            labels = labels.argmax(-1)
        predicted = np.asarray(model.predict(images, verbose=0)).argmax(-1)
        titles = [f"{class_names[t]} -> {class_names[p]}" for t, p in zip(labels, predicted)]

        rollout = attention_maps(attention_model, images, method="rollout")
        show(plot_attention_maps(images, rollout, os.path.join(OUTPUT, "attention_rollout.png"),
                                 titles=titles))
        last_layer = attention_maps(attention_model, images, method="last")
        show(plot_attention_maps(images, last_layer,
                                 os.path.join(OUTPUT, "attention_last_layer.png"), titles=titles))
        """),
    md("""\
        ## Mean attention distance

        For each layer and head, the pixel distance between a query patch and the patches
        it attends to, weighted by the attention and averaged over the images. In the
        paper, some heads of the lowest layers already attend globally while others stay
        local, and the distance grows with depth.
        """),
    code("""\
        from keras_vtx.analysis.attention_distance import (
            mean_attention_distance,
            plot_mean_attention_distance,
        )

        distances = mean_attention_distance(attention_model, images)
        print("layers x heads:", distances.shape)
        show(plot_mean_attention_distance(distances,
                                          os.path.join(OUTPUT, "mean_attention_distance.png")))
        """),
    md("""\
        ## Patch-embedding filters and position-embedding similarity

        The principal components of the patch-embedding filters look like plausible bases
        for the structure within each patch; each position embedding is most similar to
        the embeddings of its own row and column once the model has learnt the 2-D layout
        (a few steps of tiny training are too few for that).
        """),
    code("""\
        from keras_vtx.analysis.vit_embeddings import (
            patch_embedding_components,
            plot_patch_embedding_components,
            plot_position_embedding_similarity,
            position_embedding_similarity,
        )

        components = patch_embedding_components(model, num_components=28)
        show(plot_patch_embedding_components(components,
                                             os.path.join(OUTPUT, "patch_embedding.png")))
        similarity = position_embedding_similarity(model)
        print("similarity (grid rows, grid cols, grid rows, grid cols):", similarity.shape)
        show(plot_position_embedding_similarity(
            similarity, os.path.join(OUTPUT, "position_similarity.png")))
        """),
])


# --- CLIP ----------------------------------------------------------------------------------

CLIP = notebook_cells("clip_zero_shot_and_training", """\
    # CLIP: contrastive training, zero-shot classification and attention

    Trains CLIP (Radford et al., 2021) contrastively on image-caption pairs (by default
    the embedded shapes pairs, captions such as "a small red circle on the left"), then:

    - classifies images zero-shot from prompt templates (`ZeroShotClassifier`);
    - draws the paper's zero-shot panel (figure 21): each image with its five most
      probable prompts and their probabilities;
    - overlays the image tower's attention rollout on the images;
    - compares groups of images by the cosine similarity of their embeddings, within and
      across groups (Khani et al., NAACL 2021).

    The zero-shot cells need a source with classes (the shapes pairs); with your own pairs
    file, set `class_names` and label some images yourself.
    """, [
    md("""\
        ## Configuration

        On an accelerator: `clip_vit_base_patch32` (ViT-B/32 image tower) at 224 x 224,
        trained from scratch on 8,000 shapes pairs. `DATA` also takes a `.csv`, `.tsv` or
        `.jsonl` file of (image, caption) records; `"hf://openai/clip-vit-base-patch32"`
        loads OpenAI's weights (needs internet). Shapes captions are at most 10 tokens, so a
        16-token context keeps the text tower cheap.
        """),
    code("""\
        if TINY:
            PRESET, DATA, IMAGE_SIZE, CONTEXT_LENGTH = "clip_pico_patch4_32", "shapes:160", 32, 16
            BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, LEARNING_RATE = 16, 1, 2, 1e-3
        else:
            PRESET = os.environ.get("CLIP_PRESET", "clip_vit_base_patch32")
            DATA = os.environ.get("CLIP_DATA", "shapes:8000")
            IMAGE_SIZE, CONTEXT_LENGTH = 224, 16
            BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, LEARNING_RATE = 256, 10, None, 5e-4
        BATCH_SIZE *= REPLICAS
        # TensorFlow takes longer to compile the training step with XLA than a few tiny steps take;
        # JAX compiles anyway (its op-by-op mode is slower still).
        JIT_COMPILE = False if TINY and keras.backend.backend() == "tensorflow" else "auto"
        """),
    md("""\
        ## Data and contrastive training

        `load_pair_data` yields `{"images", "token_ids"}` batches; the loss contrasts every
        image with every caption of the global batch.
        """),
    code("""\
        from keras_vtx.data import load_pair_data
        from keras_vtx.models import CLIP, CLIPTokenizer

        with distribution.scope():
            model = CLIP.from_preset(PRESET, image_encoder={"image_size": IMAGE_SIZE},
                                     text_encoder={"context_length": CONTEXT_LENGTH})
        tokenizer = CLIPTokenizer(sequence_length=model.text_encoder.context_length)
        data = load_pair_data(DATA, image_size=IMAGE_SIZE, batch_size=BATCH_SIZE,
                              tokenizer=tokenizer)
        train = data.train.repeat() if STEPS_PER_EPOCH else data.train
        steps = STEPS_PER_EPOCH or data.steps_per_epoch
        print(data)
        if data.validation_captions:
            print("a caption:", data.validation_captions[0][0])

        with distribution.scope():
            model.compile(learning_rate=LEARNING_RATE, total_steps=EPOCHS * steps,
                          warmup_steps=max(1, EPOCHS * steps // 10),
                          jit_compile=JIT_COMPILE)
            model.fit(train, validation_data=None if TINY else data.validation, epochs=EPOCHS,
                      steps_per_epoch=STEPS_PER_EPOCH, shuffle=False, verbose=2)
        """),
    md("""\
        ## Zero-shot classification

        Each class name fills every prompt template ("a photo of a {}." ...); the class
        embedding is the renormalised mean of its prompts' embeddings (the paper's prompt
        ensembling, section 3.1.4).
        """),
    code("""\
        from keras_vtx.models import ZeroShotClassifier

        images = np.concatenate([batch["images"] for batch in
                                 data.validation.as_numpy_iterator()])
        labels = data.validation_labels
        class_names = data.class_names
        classifier = ZeroShotClassifier(model, class_names, templates="shapes",
                                        tokenizer=tokenizer)
        k = min(5, len(class_names))
        accuracy = classifier.evaluate_accuracy(images, labels, ks=(1, k))
        print(f"zero-shot accuracy on {len(images)} images ({len(class_names)} classes):",
              {name: round(float(value), 3) for name, value in accuracy.items()})
        """),
    md("## The zero-shot panel (the paper's figure 21)"),
    code("""\
        from keras_vtx.analysis.zero_shot_panel import plot_zero_shot_panel, zero_shot_top_k

        panel_images, panel_labels = images[:4], labels[:4]
        top_k = zero_shot_top_k(classifier, panel_images, k=k)
        show(plot_zero_shot_panel(panel_images, top_k, os.path.join(OUTPUT, "zero_shot_panel.png"),
                                  true_labels=[class_names[i] for i in panel_labels]))
        """),
    md("""\
        ## Attention of the image tower

        As for ViT, attention comes out through an explicit option of the image encoder:
        the trained model is saved as a preset and reloaded with it.
        """),
    code("""\
        from keras_vtx.analysis.vit_attention import attention_maps, plot_attention_maps

        preset_dir = os.path.join(OUTPUT, "preset")
        model.save_to_preset(preset_dir, overwrite=True)
        attention_model = CLIP.from_preset(preset_dir,
                                           image_encoder={"return_attention_scores": True})
        maps = attention_maps(attention_model, images[:8], method="rollout")
        show(plot_attention_maps(images[:8], maps, os.path.join(OUTPUT, "clip_attention.png"),
                                 titles=[class_names[i] for i in labels[:8]]))
        """),
    md("""\
        ## Embedding-set similarity

        Khani et al. (NAACL 2021) compare the image results of a word and of its translation
        by the cosine similarity of their embeddings: high similarity within and across the
        two groups means the word translates well visually. Here the groups are images of
        three shape classes; a trained image tower gives higher similarity within a class
        than across classes.
        """),
    code("""\
        from keras_vtx.analysis.embedding_sets import (
            embedding_set_similarity,
            plot_embedding_set_similarity,
        )

        groups = {}
        for name in class_names[:3]:
            members = images[labels == class_names.index(name)][:8]
            if len(members):
                groups[name] = members
        result = embedding_set_similarity(groups, model=model)
        show(plot_embedding_set_similarity(result,
                                           os.path.join(OUTPUT, "embedding_sets.png")))
        """),
])


# --- DETR ----------------------------------------------------------------------------------

DETR = notebook_cells("detr_coco_format", """\
    # DETR on a COCO-format data set

    Trains DETR (Carion et al., 2020) on a data set in COCO's format: a folder of images and
    an instances JSON (`images`, `annotations` with `bbox = [x, y, width, height]` in pixels,
    `categories`). The notebook writes the embedded shapes detection set in that format (your
    own data set goes in the same place), loads it, trains for a few steps, then:

    - predicts and draws detections;
    - evaluates COCO box AP with pycocotools (`keras_vtx.metrics`);
    - draws the decoder cross-attention of each detected object (the paper's figure 6) and
      the encoder self-attention at a few pixels (figure 3).
    """, [
    md("""\
        ## Configuration

        On an accelerator: `detr_resnet50` (ResNet-50, 6 + 6 layers, 100 queries) on 256 x 256
        shapes images. For your own COCO-format data, set `TRAIN_JSON`, `TRAIN_IMAGES`,
        `VAL_JSON` and `VAL_IMAGES` to its files instead of exporting the shapes below, and
        `SIZES = {}` for DETR's own sizes (shorter side 480 to 800, longer at most 1333).
        DETR converges slowly (hundreds of epochs in the paper): a few steps only show the
        loop working.
        """),
    code("""\
        if TINY:
            PRESET, IMAGE_SIZE, NUM_TRAIN, NUM_VAL = "detr_pico_shapes", 64, 16, 4
            BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, LEARNING_RATE = 4, 1, 3, 5e-4
        else:
            PRESET = os.environ.get("DETR_PRESET", "detr_resnet50")
            IMAGE_SIZE, NUM_TRAIN, NUM_VAL = 256, 4000, 400
            BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, LEARNING_RATE = 32, 10, None, 1e-4
        BATCH_SIZE *= REPLICAS
        # TensorFlow takes longer to compile the training step with XLA than a few tiny steps take;
        # JAX compiles anyway (its op-by-op mode is slower still).
        JIT_COMPILE = False if TINY and keras.backend.backend() == "tensorflow" else "auto"
        # DETR's multi-scale augmentation, scaled from its 800-pixel images to IMAGE_SIZE.
        s = IMAGE_SIZE
        SIZES = dict(scales=(3 * s // 4, 7 * s // 8, s), max_size=s,
                     crop_resize_scales=(s // 2, 5 * s // 8, 3 * s // 4),
                     crop_size=(15 * s // 32, 3 * s // 4), eval_size=s, pad_to=(s, s))
        """),
    md("""\
        ## A COCO-format folder

        `export_shapes_coco` draws images of one to four shapes of six classes and writes
        them as PNG files with an instances JSON.
        """),
    code("""\
        import json

        from keras_vtx.data import export_shapes_coco

        coco_dir = os.path.join(OUTPUT, "shapes_coco")
        TRAIN_JSON, TRAIN_IMAGES = export_shapes_coco(
            os.path.join(coco_dir, "train"), NUM_TRAIN, image_size=IMAGE_SIZE, seed=0,
            annotation_file="instances_train.json")
        VAL_JSON, VAL_IMAGES = export_shapes_coco(
            os.path.join(coco_dir, "val"), NUM_VAL, image_size=IMAGE_SIZE, seed=1,
            annotation_file="instances_val.json")
        with open(VAL_JSON) as f:
            coco = json.load(f)
        print(TRAIN_JSON, "and", len(os.listdir(TRAIN_IMAGES)), "images in", TRAIN_IMAGES)
        print("categories:", [c["name"] for c in coco["categories"]])
        print("an annotation:", coco["annotations"][0])
        """),
    md("""\
        ## Loading it and training

        Batches are `(x, y)`: `x` holds ImageNet-normalised `images` and a `pixel_mask`, `y`
        normalised `(cx, cy, w, h)` boxes and labels padded to the number of queries.
        """),
    code("""\
        from keras_vtx.data import load_detection_data
        from keras_vtx.models import DETR, get_preset

        # Every target box needs an object query: pad the targets to their number.
        num_queries = get_preset(PRESET)["config"].get("num_queries", 100)
        train, validation, info = load_detection_data(
            TRAIN_JSON, image_dir=TRAIN_IMAGES, val_annotations=VAL_JSON,
            val_image_dir=VAL_IMAGES, batch_size=BATCH_SIZE, max_boxes=num_queries, **SIZES)
        print(info)
        steps = STEPS_PER_EPOCH or info.steps_per_epoch
        if STEPS_PER_EPOCH:
            train = train.repeat()

        with distribution.scope():
            model = DETR.from_preset(PRESET, num_classes=info.num_classes,
                                     class_names=info.class_names)
            # The shapes presets train from scratch: the backbone at the same rate.
            model.compile(learning_rate=LEARNING_RATE,
                          backbone_learning_rate=LEARNING_RATE if TINY else LEARNING_RATE / 10,
                          jit_compile=JIT_COMPILE)
            model.fit(train, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, shuffle=False,
                      verbose=2)
        """),
    md("## Detections"),
    code("""\
        from keras_vtx.analysis import draw_detections
        from keras_vtx.data.detection_transforms import IMAGENET_MEAN, IMAGENET_STD

        x, y = next(iter(validation))
        x = {name: np.asarray(value) for name, value in x.items()}
        # An untrained model scores low: keep the best few rather than a threshold.
        detections = model.predict_detections(x, top_k=4)
        size = np.asarray(y["size"])[0]
        image = x["images"][0][:size[0], :size[1]]  # ImageNet-normalised
        picture = np.clip((image * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255).astype("uint8")
        found = detections[0]
        print({name: np.round(value, 2) for name, value in found.items()})
        path = os.path.join(OUTPUT, "detections.png")
        draw_detections(image, found["boxes"], found["labels"], found["scores"],
                        class_names=info.class_names, path=path, denormalize=True)
        show(path)
        """),
    md("## COCO evaluation (pycocotools)"),
    code("""\
        from keras_vtx.metrics import COCOEvaluationCallback

        evaluation = COCOEvaluationCallback(validation, info.ground_truth,
                                            category_ids=info.category_ids)
        evaluation.set_model(model)
        metrics = evaluation.evaluate()
        print({name: round(float(value), 4) for name, value in metrics.items()})
        """),
    md("""\
        ## Attention: decoder cross-attention and encoder self-attention

        Reloaded with `return_attention_scores=True`, DETR also returns each encoder
        layer's self-attention and each decoder layer's cross-attention over the feature
        map. The decoder's attention of a detected object concentrates on its extremities
        (figure 6); the encoder's attention at a pixel of an object covers that object,
        already separating instances (figure 3).
        """),
    code("""\
        from keras_vtx.analysis.detr_attention import (
            detr_attention_maps,
            detr_encoder_attention,
            plot_detr_decoder_attention,
            plot_detr_encoder_attention,
        )

        preset_dir = os.path.join(OUTPUT, "preset")
        model.save_to_preset(preset_dir, overwrite=True)
        attention_model = DETR.from_preset(preset_dir, return_attention_scores=True)

        one_image, one_mask = x["images"][:1], x["pixel_mask"][:1]
        decoder = detr_attention_maps(attention_model, one_image, pixel_mask=one_mask, top_k=3)
        show(plot_detr_decoder_attention(picture, decoder[0],
                                         os.path.join(OUTPUT, "detr_decoder_attention.png"),
                                         class_names=info.class_names))

        # Pixels (row, column) at the centres of the first ground-truth boxes.
        height, width = size
        boxes = np.asarray(y["boxes"])[0][np.asarray(y["labels"])[0] >= 0][:3]
        points = [(int(cy * height), int(cx * width)) for cx, cy, _, _ in boxes]
        encoder = detr_encoder_attention(attention_model, one_image, points, pixel_mask=one_mask)
        show(plot_detr_encoder_attention(picture, encoder[0], points,
                                         os.path.join(OUTPUT, "detr_encoder_attention.png")))
        """),
])


# --- Image GPT -----------------------------------------------------------------------------

IGPT = notebook_cells("igpt_sampling_and_probes", """\
    # Image GPT: sampling, completions and linear probes

    Image GPT (Chen et al., 2020, "Generative Pretraining from Pixels") models images as
    sequences of palette colours. The notebook

    - fits a k-means colour palette on the training pixels (or uses the preset's);
    - trains an iGPT for a few steps on palette-quantised images (next-pixel prediction),
      reporting bits per dimension;
    - samples images and completes the top half of held-out images (the paper's figure 1);
    - fits a linear probe on every layer's average-pooled features and plots the accuracy
      by depth (the paper's figure 3: the best features lie in the middle of the network).
    """, [
    md("""\
        ## Configuration

        On an accelerator: `igpt_small` (iGPT-S, 24 layers, width 512) at 32 x 32 with a
        512-colour palette fitted on the shapes images. `DATA` also takes `dir:PATH` or
        `tfds:NAME`.
        """),
    code("""\
        if TINY:
            PRESET, DATA, PALETTE_IMAGES = "igpt_tiny_test", "shapes:160", 32
            BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, PROBE_EXAMPLES = 16, 1, 3, 64
        else:
            PRESET = os.environ.get("IGPT_PRESET", "igpt_small")
            DATA = os.environ.get("IGPT_DATA", "shapes:10000")
            PALETTE_IMAGES = 2000
            BATCH_SIZE, EPOCHS, STEPS_PER_EPOCH, PROBE_EXAMPLES = 64, 2, None, 2000
        BATCH_SIZE *= REPLICAS
        """),
    md("## A colour palette and the model"),
    code("""\
        from keras_vtx.data import fit_palette, load_palette_data
        from keras_vtx.models import ImageGPT

        with distribution.scope():
            model = ImageGPT.from_preset(PRESET)
        side = model.image_size
        # A named preset's weights are random: fit the palette on the data instead of using
        # the preset's (a trained preset directory keeps its own).
        palette = fit_palette(DATA, num_colors=model.palette_size, image_size=side,
                              max_images=PALETTE_IMAGES, **({"iterations": 5} if TINY else {}))
        with distribution.scope():
            model = ImageGPT.from_preset(PRESET, palette=palette)
        print(f"{side}x{side} images, {palette.num_colors} colours, "
              f"{model.count_params():,} parameters")
        """),
    md("## Training"),
    code("""\
        data = load_palette_data(DATA, palette=palette, image_size=side, batch_size=BATCH_SIZE,
                                 train_crop="random", padding=0)
        train = data.train.repeat() if STEPS_PER_EPOCH else data.train
        steps = STEPS_PER_EPOCH or data.steps_per_epoch
        with distribution.scope():
            model.compile(total_steps=EPOCHS * steps, warmup_steps=max(1, EPOCHS * steps // 10),
                          jit_compile=False if TINY else "auto")
            model.fit(train, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, shuffle=False,
                      verbose=2)
            results = model.evaluate(data.validation, return_dict=True, verbose=0)
        print({name: round(float(value), 3) for name, value in results.items()})
        """),
    md("""\
        ## Samples and completions

        `generate` samples pixel by pixel with a key/value cache. In the completion grid,
        each row is one held-out image: its given top half (the rest grey), the sampled
        completions, then the original.
        """),
    code("""\
        from PIL import Image

        from keras_vtx.analysis.completion_grid import completion_grid, plot_completion_grid

        samples = model.generate(num_images=4, top_k=16, seed=0)
        strip = np.concatenate(list(samples), axis=1)
        path = os.path.join(OUTPUT, "samples.png")
        # Nearest-neighbour enlargement keeps every palette pixel a flat square.
        Image.fromarray(strip).resize((strip.shape[1] * 8, strip.shape[0] * 8),
                                      Image.NEAREST).save(path)
        show(path)

        held_out_ids, held_out_labels = next(data.validation.as_numpy_iterator())
        grid = completion_grid(model, pixel_ids=held_out_ids[:3], num_samples=2, seed=0)
        show(plot_completion_grid(grid, os.path.join(OUTPUT, "completions.png")))
        """),
    md("""\
        ## Linear probes by layer

        Each layer's features (layer 0 is the embeddings) are normalised and average-pooled
        over positions; a logistic-regression probe is fitted on training images and tested
        on held-out ones.
        """),
    code("""\
        from keras_vtx.analysis import plot_layer_probe_accuracy, probe_image_gpt


        def first_examples(dataset, count):
            ids, labels = [], []
            for batch_ids, batch_labels in dataset.as_numpy_iterator():
                ids.append(batch_ids)
                labels.append(batch_labels)
                if sum(len(i) for i in ids) >= count:
                    break
            return np.concatenate(ids)[:count], np.concatenate(labels)[:count]


        probes = probe_image_gpt(model, first_examples(data.train, PROBE_EXAMPLES),
                                 first_examples(data.validation, PROBE_EXAMPLES),
                                 regularization=1e-3 if TINY else (1e-4, 1e-3, 1e-2, 1e-1),
                                 batch_size=BATCH_SIZE)
        accuracies = {layer: round(float(v), 3) for layer, v in probes["accuracies"].items()}
        print("accuracy by layer (0: embeddings):", accuracies)
        show(plot_layer_probe_accuracy(probes["accuracies"],
                                       os.path.join(OUTPUT, "probe_accuracy.png"),
                                       chance=1 / len(data.class_names)))
        """),
])


NOTEBOOKS = {
    "vit_fine_tuning.ipynb": VIT,
    "clip_zero_shot_and_training.ipynb": CLIP,
    "detr_coco_format.ipynb": DETR,
    "igpt_sampling_and_probes.ipynb": IGPT,
}


def build_notebook(file_name, cells):
    """An `nbformat` notebook of `cells` with stable cell ids and no outputs."""
    stem = os.path.splitext(file_name)[0]
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for index, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(source)
        cell["id"] = f"{stem[:20]}-{index:02d}"
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


def render(file_name):
    """The notebook file's text, exactly as committed."""
    return nbformat.writes(build_notebook(file_name, NOTEBOOKS[file_name])) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write: exit 1 if a notebook is missing or differs")
    args = parser.parse_args(argv)
    stale = []
    for file_name in NOTEBOOKS:
        path = os.path.join(EXAMPLES_DIR, file_name)
        text = render(file_name)
        current = None
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                current = f.read()
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            os.makedirs(EXAMPLES_DIR, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print("wrote", path)
    if stale:
        print("out of date (run python scripts/make_notebooks.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
