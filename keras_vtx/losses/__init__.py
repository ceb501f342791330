"""Losses written with `keras.ops`: CLIP's contrastive loss, SupCon and DETR's set loss."""

from keras_vtx.losses.clip_loss import CLIPLoss
from keras_vtx.losses.hungarian_loss import HungarianLoss, validate_targets
from keras_vtx.losses.sup_con_loss import SupConLoss

__all__ = ["CLIPLoss", "HungarianLoss", "SupConLoss", "validate_targets"]
