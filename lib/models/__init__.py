"""The model: ``build_model(cfg: ModelConfig) -> ImageTextModel`` (``build.py``).

Components (see docs/MODEL.md): image encoder (``image.py``, with APPM fusion from
``fusion.py`` and SASE from ``context.py``; over raw images the grid encoder of
``backbone.py``), text encoder (``text.py``, with the token graph of ``graph.py``), optional
global pooling (``pooling.py``), the CHAN similarity (``lib/similarity/``) and the model
holding them (``model.py``). ``config.py`` holds the :class:`ModelConfig` every builder takes.
"""

from __future__ import annotations

from ..similarity import Similarity
from .backbone import BACKBONE_GROUP, GRID_ENCODER
from .build import build_image_encoder, build_model, build_text_encoder
from .config import ModelConfig
from .model import Embeddings, ImageTextModel
from .text import PRETRAINED_GROUP

__all__ = ["BACKBONE_GROUP", "GRID_ENCODER", "build_model", "build_image_encoder",
           "build_text_encoder", "Embeddings", "ImageTextModel", "ModelConfig", "PRETRAINED_GROUP",
           "Similarity"]
