"""ImageNet input statistics, shared by the raw-image loaders and the backbone encoders.

The loaders normalise every image with them and the grid encoder re-normalises for trunks
trained with other statistics, so both layers need them; they live here because ``lib.models``
must not import ``lib.data`` (docs/ARCHITECTURE.md).
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per RGB channel, images in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
