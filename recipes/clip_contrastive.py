"""Trains a CLIP model contrastively; by default a small one on the embedded shapes pairs in CPU minutes.

    python recipes/clip_contrastive.py                        # the README's command
    KERAS_BACKEND=jax python recipes/clip_contrastive.py --epochs 10
    python recipes/clip_contrastive.py --data /data/pairs.csv --image-size 224 \\
        --preset clip_vit_base_patch32 --precision mixed_bfloat16 --distribute

`--data` takes `shapes`, `shapes:N` (N images, captions such as "a small red
circle on the left"), a `.csv`/`.tsv`/`.jsonl` file of (image path, caption)
records (`--image-root` for relative paths) or `tfds:NAME`. After training the
run reports, on the held-out pairs, image-to-text and text-to-image retrieval
recall@1/5 and, for shapes, the zero-shot accuracy on the six shape classes
(`ZeroShotClassifier` with prompts built from the class names). It writes to
`--output`: TensorBoard logs (`logs/`), the best weights by validation loss
(`checkpoints/`), a backup that an interrupted run resumes from when started
again with the same arguments (`backup/`), the final model as a preset
directory (`preset/`, reload with `CLIP.from_preset(path)`) and `report.json`.

The defaults (the pico preset, 3,300 shapes, 30 epochs of 23 steps of 128
pairs, 16-token context) were measured with TensorFlow on 2 CPU cores: 11.5 min
of wall time on busy cores (5.8 min on idle ones, 2026-12-07, every figure the same),
zero-shot accuracy 0.897 on the 330 held-out images (six shape
classes, chance 0.17; top-5 1.0), validation loss 0.54 (ln 128 = 4.85 at
chance), recall@1 0.52 both ways and recall@5 0.96 (many captions of the shapes
set are identical, which caps recall@1). As in the paper, the report also holds
the zero-shot accuracy of single prompts against the template ensemble (figure
4: "{}" 0.842, "a {}" 0.715, the 36 "shapes" templates 0.891) and k-shot linear
probes on the same image embeddings (figure 6: 1-shot 0.46, 4-shot 0.80, 16-shot
0.89: zero-shot matches a 16-shot probe), both on the second half of the
held-out images, the probes drawn from the first half (5 draws each).
"""

import argparse
import json
import os
import sys
import time

# Run from a checkout without installing the package: `python recipes/...`.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from recipes._common import (  # noqa: E402
    measure_and_save,
    replicas_and_scope,
    start_processes,
    training_callbacks,
    training_schedule,
)

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Shapes captions are at most 10 tokens with the start and end tokens: a short
# context makes the text tower several times cheaper than CLIP's 77.
SHAPES_CONTEXT_LENGTH = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="clip_pico_patch4_32",
                        help="a preset name, a preset directory or an hf:// address")
    parser.add_argument("--data", default="shapes:3300",
                        help="shapes | shapes:N | PATH.csv | PATH.tsv | PATH.jsonl | tfds:NAME")
    parser.add_argument("--validation-data", default=None,
                        help="a pairs file for validation (else --validation-split is held out)")
    parser.add_argument("--image-root", default=None,
                        help="folder of relative image paths in a pairs file "
                             "(default: the file's folder)")
    parser.add_argument("--validation-split", type=float, default=0.1,
                        help="fraction held out when the data has no validation split")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--context-length", type=int, default=None,
                        help="tokens per caption (default: 16 for shapes, else the preset's)")
    parser.add_argument("--captions-per-image", choices=("sample", "flatten"), default="sample",
                        help="several captions per image: one at random each epoch, or "
                             "every (image, caption) pair")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128,
                        help="the global batch size (the contrastive batch: more negatives)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="peak learning rate, after the linear warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--warmup-fraction", type=float, default=0.1,
                        help="fraction of the steps spent warming up the learning rate")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="no random resized crops (they never flip: captions say "
                             "left and right)")
    parser.add_argument("--templates", default=None,
                        help="zero-shot prompt templates: a shipped set name or one template "
                             "with {} (default: 'shapes' for shapes data, else 'simple')")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--distribute", action="store_true",
                        help="train on every local accelerator "
                             "(keras_vtx.distribute.get_distribution())")
    parser.add_argument("--output", default=os.path.join("runs", "clip_contrastive"))
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="train this many batches per epoch (default: one pass)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", default="auto",
                        help="Keras verbosity: auto, 0, 1 (progress bar) or 2")
    args = parser.parse_args(argv)
    for name in ("image_size", "epochs", "batch_size", "steps_per_epoch", "context_length"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; received {value}")
    if args.context_length is not None and args.context_length < 2:
        parser.error("--context-length must hold the start and end tokens (>= 2)")
    if not 0 <= args.warmup_fraction < 1:
        parser.error(f"--warmup-fraction must be in [0, 1); received {args.warmup_fraction}")
    if args.verbose != "auto":
        args.verbose = int(args.verbose)
    return args


def _is_shapes(data_spec):
    return data_spec.split(":")[0] == "shapes"


def embed_validation(model, data, tokenizer):
    """Embeddings of the held-out images and captions, and each caption's image.

    Every caption of every validation image counts (COCO's protocol) when the
    captions are known and no image was skipped; otherwise the validation
    dataset's own pairs (its first caption per image) are used.
    """
    images, image_embeddings, pair_texts = [], [], []
    for batch in data.validation.as_numpy_iterator():
        images.append(batch["images"])
        image_embeddings.append(keras.ops.convert_to_numpy(model.encode_images(batch["images"])))
        pair_texts.append(keras.ops.convert_to_numpy(model.encode_text(batch["token_ids"])))
    images = np.concatenate(images)
    image_embeddings = np.concatenate(image_embeddings)
    captions = data.validation_captions
    if captions is None or data.bad_files.count or len(captions) != len(images):
        return images, image_embeddings, np.concatenate(pair_texts), np.arange(len(images))
    texts = [c for group in captions for c in group]
    text_to_image = np.repeat(np.arange(len(captions)), [len(g) for g in captions])
    text_embeddings = np.concatenate([
        keras.ops.convert_to_numpy(model.encode_text(np.asarray(tokenizer(texts[i:i + 256]))))
        for i in range(0, len(texts), 256)
    ])
    return images, image_embeddings, text_embeddings, text_to_image


# The CLIP paper's figure 6: k-shot linear probes on the image features against zero-shot.
PROBE_SHOTS = (1, 2, 4, 8, 16)
PROBE_SEEDS = 5


def paper_comparisons(model, tokenizer, data, images, image_embeddings, templates):
    """Prompt ensembling against single prompts (figure 4), zero-shot against few-shot probes.

    The held-out images are split in two halves: the k-shot probes draw their
    examples from the first and every accuracy here is measured on the second.
    """
    from keras_vtx.analysis import few_shot_probe
    from keras_vtx.models import ZeroShotClassifier
    from keras_vtx.models.clip.prompt_templates import get_templates

    labels = np.asarray(data.validation_labels)
    half = len(labels) // 2
    test_images, test_labels = images[half:], labels[half:]
    ensemble = get_templates(templates)
    prompts = {"{}": "{}", "a {}": "a {}",
               f"ensemble of {len(ensemble)}": ensemble}
    by_prompt = {}
    for name, prompt in prompts.items():
        classifier = ZeroShotClassifier(model, data.class_names, templates=prompt,
                                        tokenizer=tokenizer)
        by_prompt[name] = classifier.evaluate_accuracy(test_images, test_labels,
                                                       ks=(1,))["top1_accuracy"]
    counts = np.bincount(labels[:half], minlength=len(data.class_names))
    shots = [k for k in PROBE_SHOTS if k <= counts.min()]
    probes = few_shot_probe(image_embeddings[:half], labels[:half], image_embeddings[half:],
                            test_labels, shots=shots, seeds=PROBE_SEEDS) if shots else None
    return {
        "zero_shot_by_prompt": by_prompt,
        "few_shot_probe": None if probes is None else {
            "shots": probes["shots"], "seeds": PROBE_SEEDS,
            "mean_accuracy": {str(k): v for k, v in probes["mean_accuracy"].items()},
            "std_accuracy": {str(k): v for k, v in probes["std_accuracy"].items()},
        },
        "comparison_images": {"probe_pool": half, "test": len(labels) - half},
    }


def main(argv=None, callbacks=None):
    """Runs the recipe with the command-line arguments `argv`.

    Args:
        argv: list of str (default: `sys.argv[1:]`).
        callbacks: extra Keras callbacks, run after the recipe's own.

    Returns:
        The report written to `OUTPUT/report.json`, as a dict.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    # Several processes (one per host, KERAS_DISTRIBUTION_*): started before anything runs.
    num_processes = start_processes()
    keras.utils.set_random_seed(args.seed)
    keras.config.set_dtype_policy(args.precision)

    from keras_vtx.data import load_pair_data
    from keras_vtx.metrics import retrieval_recall
    from keras_vtx.models.clip import CLIP
    from keras_vtx.models.clip.clip_tokenizer import CLIPTokenizer
    from keras_vtx.models.clip.zero_shot_classifier import ZeroShotClassifier

    num_replicas, scope = replicas_and_scope(args.distribute or num_processes > 1,
                                             args.batch_size)

    context_length = args.context_length
    if context_length is None and _is_shapes(args.data):
        context_length = SHAPES_CONTEXT_LENGTH
    text_overrides = {} if context_length is None else {"context_length": context_length}
    with scope():
        model = CLIP.from_preset(args.preset, image_encoder={"image_size": args.image_size},
                                 text_encoder=text_overrides)
    context_length = model.text_encoder.context_length
    tokenizer = CLIPTokenizer(sequence_length=context_length)
    pair_options = {}
    if not _is_shapes(args.data):
        pair_options = {"image_root": args.image_root,
                        "validation_spec": args.validation_data}
    data = load_pair_data(
        args.data, image_size=args.image_size, batch_size=args.batch_size, seed=args.seed,
        validation_split=args.validation_split, tokenizer=tokenizer, augment=args.augment,
        captions_per_image=args.captions_per_image, **pair_options,
    )
    validation = data.validation
    train, steps_per_epoch, total_steps, warmup_steps = training_schedule(
        args, data, data.train, args.epochs, what="pairs",
        hint=", or pass --steps-per-epoch for a source of unknown size")
    with scope():
        model.compile(
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
        )

    output = args.output
    fit_callbacks, throughput = training_callbacks(output, "val_loss", "min", callbacks)
    with scope():
        history = model.fit(
            train,
            validation_data=validation,
            epochs=args.epochs,
            steps_per_epoch=steps_per_epoch if args.steps_per_epoch else None,
            callbacks=fit_callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, with the seed
            verbose=args.verbose,
        )
        loss = float(model.evaluate(validation, return_dict=True, verbose=0)["loss"])

    def analyse(trained):
        """Retrieval recall, zero-shot accuracy and the paper's comparisons."""
        images, image_embeddings, text_embeddings, text_to_image = embed_validation(
            trained, data, tokenizer
        )
        recall = retrieval_recall(image_embeddings, text_embeddings, text_to_image, ks=(1, 5))
        zero_shot, paper = {}, {}
        if data.class_names is not None:
            templates = args.templates or ("shapes" if _is_shapes(args.data) else "simple")
            classifier = ZeroShotClassifier(trained, data.class_names, templates=templates,
                                            tokenizer=tokenizer)
            zero_shot = classifier.evaluate_accuracy(images, data.validation_labels,
                                                     ks=(1, min(5, len(data.class_names))))
            paper = paper_comparisons(trained, tokenizer, data, images, image_embeddings,
                                      templates)
        return recall, zero_shot, paper

    measured = measure_and_save(model, os.path.join(output, "preset"), analyse, scope)
    if measured is None:  # a process other than 0 of several: process 0 writes the outputs
        return {"loss": loss, "history": {k: [float(v) for v in vs]
                                          for k, vs in history.history.items()}}
    recall, zero_shot, paper = measured

    report = {
        "preset": args.preset,
        "data": args.data,
        "backend": keras.backend.backend(),
        "precision": args.precision,
        "num_replicas": num_replicas,
        "num_processes": num_processes,
        "num_train": data.num_train,
        "num_validation": data.num_validation,
        "image_size": args.image_size,
        "context_length": context_length,
        "epochs": args.epochs,
        "epochs_run": throughput.epochs_run,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "loss": loss,
        "logit_scale": float(keras.ops.convert_to_numpy(model.logit_scale.value)),
        **recall,
        "zero_shot_accuracy": zero_shot.get("top1_accuracy"),
        "zero_shot_top5_accuracy": zero_shot.get(f"top{min(5, len(data.class_names or ()))}"
                                                 "_accuracy"),
        "class_names": list(data.class_names) if data.class_names is not None else None,
        **paper,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
        "train_time_s": throughput.seconds,
        "wall_time_s": time.perf_counter() - start,
        "pairs_per_second": throughput.batches * args.batch_size / max(throughput.seconds, 1e-9),
        "bad_files": data.bad_files.count,
        "bad_file_examples": list(data.bad_files.examples),
    }
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    summary = (f"validation loss {loss:.3f}, image-to-text recall@1 "
               f"{recall['image_to_text_recall@1']:.3f}, text-to-image recall@1 "
               f"{recall['text_to_image_recall@1']:.3f}")
    if report["zero_shot_accuracy"] is not None:
        summary += f", zero-shot accuracy {report['zero_shot_accuracy']:.3f}"
        summary += "\nzero-shot top-1 by prompt (second half of the held-out images): " + ", ".join(
            f"{name!r} {value:.3f}" for name, value in report["zero_shot_by_prompt"].items())
        if report["few_shot_probe"] is not None:
            means = report["few_shot_probe"]["mean_accuracy"]
            summary += "\nk-shot linear probes on the image embeddings: " + ", ".join(
                f"{k}-shot {value:.3f}" for k, value in means.items())
    print(summary)
    return report


if __name__ == "__main__":
    main()
