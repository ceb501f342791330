"""Losses written with `keras.ops`: CLIP's contrastive loss and SupCon."""

from keras_vtx.losses.clip_loss import CLIPLoss
from keras_vtx.losses.sup_con_loss import SupConLoss

__all__ = ["CLIPLoss", "SupConLoss"]
