"""Backbone networks: each maps RGB images on the 0-255 scale to a feature vector.

Every backbone applies its own input normalisation in its first layer, so the data
pipeline and exported models always take RGB 0-255 images.
"""

import functools

from hdml_tf.backbones.applications import APPLICATIONS, build_application
from hdml_tf.backbones.googlenet import MIN_IMAGE_SIZE, build_googlenet

BACKBONES = {
    "googlenet": build_googlenet,
    **{name: functools.partial(build_application, name) for name in APPLICATIONS},
}
# Smallest input side in pixels that each backbone accepts.
MIN_IMAGE_SIZES = {
    "googlenet": MIN_IMAGE_SIZE,
    **{name: spec.min_image_size for name, spec in APPLICATIONS.items()},
}


def build_backbone(name, image_size=None):
    """Build backbone `name` (a key of BACKBONES) for square inputs of `image_size` px."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](image_size=image_size)


__all__ = ["BACKBONES", "MIN_IMAGE_SIZE", "MIN_IMAGE_SIZES", "build_backbone"]
