"""Normalisation constants shared by models, data pipelines, converters and analysis."""

# ImageNet's per-channel mean and standard deviation of RGB in [0, 1] (torchvision, DETR).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# CLIP's (OpenAI's preprocessing, transformers' CLIPImageProcessor defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
