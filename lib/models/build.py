"""Building a model from its :class:`ModelConfig`: one builder per part.

Construction order is part of the behaviour: modules draw their initial weights from the global
RNG in the order they are built (image side, token graph, text encoder, similarity, pooling),
so a seeded run only reproduces if that order stays.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..similarity import Similarity, coding_class
from .backbone import GRID_ENCODER, BackboneGridEncoder
from .config import ModelConfig
from .fusion import APPM, SeedAPPM
from .graph import TokenGraph
from .image import PrecompImageEncoder
from .model import ImageTextModel
from .pooling import GPO, MeanPool
from .text import BertTextEncoder, GRUTextEncoder


def build_model(cfg: ModelConfig, vocab_size: int | None = None,
                word_index: Mapping[str, int] | None = None,
                pretrained: bool = True) -> ImageTextModel:
    """The model of ``cfg``.

    ``vocab_size`` is required for the BiGRU, and ``word_index`` (word -> row) to initialise it
    from GloVe. With ``pretrained=False`` (rebuilding a checkpoint) no pretrained weights
    are read: the BERT-family model is built from its config, GloVe vectors and
    ``--backbone_path`` are skipped, since the checkpoint's state dict replaces them anyway.
    """
    # global coding (VSE∞): pool the raw region/token features, normalise only the pooled vector
    pooled = coding_class(cfg.coding_type).pooled_inputs
    img_enc = build_image_encoder(cfg, normalize=not pooled, pretrained=pretrained)
    txt_enc = build_text_encoder(cfg, vocab_size, word_index, pretrained, normalize=not pooled)
    sim = Similarity(cfg.coding_type, cfg.pooling_type, cfg.alpha, cfg.belta)
    img_pool = txt_pool = None
    if pooled:
        pool = {"gpo": GPO, "mean": MeanPool}[cfg.global_pool]
        img_pool, txt_pool = pool(), pool()
    return ImageTextModel(img_enc, txt_enc, sim, img_pool, txt_pool)


def build_image_encoder(cfg: ModelConfig, normalize: bool = True,
                        pretrained: bool = True) -> nn.Module:
    """Region features ``(B, R, img_dim)`` + lengths -> embeddings ``(B, R, D)``, zero padded;
    with ``--precomp_enc_type backbone``, raw images ``(B, 3, S, S)`` -> grid cells and their
    lengths (``BackboneGridEncoder``).

    A new image encoder is a module with that interface, chosen here from the config;
    ``normalize=False`` asks it to leave the L2 norm to global pooling; ``pretrained=False``
    leaves a backbone random, for a checkpoint's weights to replace.
    """
    if cfg.precomp_enc_type == GRID_ENCODER:  # APPM in 2-D over the whole grid
        return BackboneGridEncoder(cfg.backbone, cfg.embed_size,
                                   cfg.backbone_path if pretrained else None,
                                   build_fusion(cfg, spatial_dims=2), cfg.cell_drop_rate,
                                   no_imgnorm=cfg.no_imgnorm or not normalize)
    return PrecompImageEncoder(cfg.img_dim, cfg.embed_size, cfg.precomp_enc_type,
                               no_imgnorm=cfg.no_imgnorm or not normalize,
                               fusion=build_fusion(cfg, spatial_dims=1),
                               sase_variant=cfg.sase_variant, attn_dropout=cfg.attn_dropout,
                               layer_scale=cfg.layer_scale)


def build_fusion(cfg: ModelConfig, spatial_dims: int) -> nn.Module | None:
    """APPM over regions (1-D, detector order) or grid cells (2-D), in ``cfg.appm_variant``."""
    if cfg.fusion != "appm":
        return None
    rates, bins = tuple(cfg.aspp_rates), tuple(cfg.ppm_bins)
    if cfg.appm_variant == "seed":
        return SeedAPPM(cfg.embed_size, cfg.fusion_dim, rates, bins, spatial_dims)
    return APPM(cfg.embed_size, cfg.fusion_dim, rates, bins, spatial_dims,
                layer_scale=cfg.layer_scale)


def build_text_encoder(cfg: ModelConfig, vocab_size: int | None = None,
                       word_index: Mapping[str, int] | None = None, pretrained: bool = True,
                       normalize: bool = True) -> nn.Module:
    """Token ids ``(B, L)`` + lengths -> embeddings ``(B, L, D)``, zero padded."""
    graph = TokenGraph(cfg.embed_size, cfg.gnn_hidden, cfg.gnn_threshold, cfg.layer_scale) \
        if cfg.text_gnn else None
    no_txtnorm = cfg.no_txtnorm or not normalize
    if cfg.text_enc_type == "bert":
        return BertTextEncoder(cfg.bert_path, cfg.embed_size, no_txtnorm=no_txtnorm, graph=graph,
                               pretrained=pretrained)
    if cfg.text_enc_type != "bigru":
        raise ValueError(f"unknown --text_enc_type {cfg.text_enc_type!r} (bigru|bert)")
    if vocab_size is None:
        raise ValueError("the BiGRU text encoder needs a vocabulary size")
    txt_enc = GRUTextEncoder(vocab_size, cfg.word_dim, cfg.embed_size, cfg.num_layers,
                             no_txtnorm=no_txtnorm, graph=graph)
    if pretrained and cfg.wemb_type == "glove":
        if word_index is None:
            raise ValueError("GloVe initialisation needs the vocabulary's word index")
        txt_enc.load_word_vectors(cfg.wemb_path, word_index)
    return txt_enc
