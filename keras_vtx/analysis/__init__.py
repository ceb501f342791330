"""Analysis tools: seeing inside the models, with arrays for further use and PNG pictures.

- ViT-like encoders (ViT, CLIP's image tower): attention maps and attention
  rollout from the class token, mean attention distance by layer and head,
  principal components of the patch-embedding filters, position-embedding
  similarity (the ViT paper's figures 6 and 7).
- DETR: the decoder's cross-attention of each predicted object and the
  encoder's self-attention at chosen pixels (the DETR paper's figures 3 and 6).
- CLIP: the zero-shot panel (an image and its top-k prompts, figure 21);
  embedding-set similarity of groups of images from any encoder of the package.
- Image GPT: the completion grid, linear probes of every layer
  (`probe_image_gpt`, with BERT mask ensembles) and their plot.
- Linear probes of frozen features, and detections drawn on images.

Attention comes out of the models through an explicit option
(`return_attention_scores=True`); a model built without it gives a clear error.
Every `plot_*` function writes a PNG of exactly `figsize * dpi` pixels with
matplotlib, an optional dependency (`pip install keras-vtx[plot]`). Imports
without TensorFlow; a `tf.data.Dataset` given to `extract_features` is read
through its NumPy iterator.
"""

from keras_vtx.analysis.attention_distance import (
    mean_attention_distance,
    mean_attention_distance_from_scores,
    plot_mean_attention_distance,
    uniform_attention_distance,
)
from keras_vtx.analysis.completion_grid import completion_grid, fill_masked, plot_completion_grid
from keras_vtx.analysis.detr_attention import (
    detr_attention_maps,
    detr_encoder_attention,
    plot_detr_decoder_attention,
    plot_detr_encoder_attention,
)
from keras_vtx.analysis.draw_detections import draw_detections
from keras_vtx.analysis.embedding_sets import (
    embed_images,
    embedding_set_similarity,
    plot_embedding_set_similarity,
)
from keras_vtx.analysis.image_gpt_probes import extract_layer_features, probe_image_gpt
from keras_vtx.analysis.linear_probe import (
    LinearProbe,
    extract_features,
    few_shot_probe,
    probe_layers,
    sweep_regularization,
)
from keras_vtx.analysis.probe_plot import plot_layer_probe_accuracy
from keras_vtx.analysis.vit_attention import (
    attention_maps,
    attention_rollout,
    attention_scores,
    plot_attention_maps,
)
from keras_vtx.analysis.vit_embeddings import (
    patch_embedding_components,
    plot_patch_embedding_components,
    plot_position_embedding_similarity,
    position_embedding_similarity,
)
from keras_vtx.analysis.zero_shot_panel import plot_zero_shot_panel, zero_shot_top_k

__all__ = [
    "LinearProbe",
    "attention_maps",
    "attention_rollout",
    "attention_scores",
    "completion_grid",
    "detr_attention_maps",
    "detr_encoder_attention",
    "draw_detections",
    "embed_images",
    "embedding_set_similarity",
    "extract_features",
    "extract_layer_features",
    "few_shot_probe",
    "fill_masked",
    "mean_attention_distance",
    "mean_attention_distance_from_scores",
    "patch_embedding_components",
    "plot_attention_maps",
    "plot_completion_grid",
    "plot_detr_decoder_attention",
    "plot_detr_encoder_attention",
    "plot_embedding_set_similarity",
    "plot_layer_probe_accuracy",
    "plot_mean_attention_distance",
    "plot_patch_embedding_components",
    "plot_position_embedding_similarity",
    "plot_zero_shot_panel",
    "position_embedding_similarity",
    "probe_image_gpt",
    "probe_layers",
    "sweep_regularization",
    "uniform_attention_distance",
    "zero_shot_top_k",
]
