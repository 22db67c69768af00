"""Model construction: ``build_model(args) -> model``.

Components (see docs/MODEL.md): image encoder (``image.py``, with APPM fusion from
``fusion.py`` and SASE from ``context.py``), text encoder (``text.py``, with the token graph of
``graph.py``), optional global pooling (``pooling.py``) and the whole model (``model.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..similarity import Similarity, coding_class
from .fusion import APPM
from .graph import TokenGraph
from .image import PrecompImageEncoder
from .model import Embeddings, ImageTextModel
from .pooling import GPO, MeanPool
from .text import BertTextEncoder, GRUTextEncoder

__all__ = ["build_model", "Embeddings", "ImageTextModel", "Similarity"]


def build_model(args, vocab_size: int | None = None, word_index: Mapping[str, int] | None = None,
                pretrained: bool = True):
    """Build the model from parsed training flags.

    ``vocab_size`` is required for the BiGRU, and ``word_index`` (word -> row) to initialise it
    from GloVe. With ``pretrained=False`` (rebuilding a checkpoint) no pretrained weights
    are read: the BERT-family model is built from its config and GloVe vectors are skipped,
    since the checkpoint's state dict replaces them anyway.
    """
    fusion = None
    if args.fusion == "appm":
        fusion = APPM(args.embed_size, args.fusion_dim, tuple(args.aspp_rates),
                      tuple(args.ppm_bins), spatial_dims=1)
    # global coding (VSE∞): pool the raw region/token features, normalise only the pooled vector
    pooled = coding_class(args.coding_type).pooled_inputs
    img_enc = PrecompImageEncoder(args.img_dim, args.embed_size, args.precomp_enc_type,
                                  no_imgnorm=args.no_imgnorm or pooled, fusion=fusion)
    graph = TokenGraph(args.embed_size, args.gnn_hidden, args.gnn_threshold) \
        if args.text_gnn else None
    if args.text_enc_type == "bigru":
        if vocab_size is None:
            raise ValueError("the BiGRU text encoder needs a vocabulary size")
        txt_enc = GRUTextEncoder(vocab_size, args.word_dim, args.embed_size, args.num_layers,
                                 no_txtnorm=args.no_txtnorm or pooled, graph=graph)
        if pretrained and args.wemb_type == "glove":
            if word_index is None:
                raise ValueError("GloVe initialisation needs the vocabulary's word index")
            txt_enc.load_word_vectors(args.wemb_path, word_index)
    elif args.text_enc_type == "bert":
        txt_enc = BertTextEncoder(args.bert_path, args.embed_size,
                                  no_txtnorm=args.no_txtnorm or pooled, graph=graph,
                                  pretrained=pretrained)
    else:
        raise ValueError(f"unknown --text_enc_type {args.text_enc_type!r} (bigru|bert)")
    sim = Similarity(args.coding_type, args.pooling_type, args.alpha, args.belta)
    img_pool = txt_pool = None
    if pooled:
        pool = {"gpo": GPO, "mean": MeanPool}[args.global_pool]
        img_pool, txt_pool = pool(), pool()
    return ImageTextModel(img_enc, txt_enc, sim, img_pool, txt_pool)
