"""The model config: every setting that decides a model's weights or its scores, in one place.

Built from the training flags (``lib.config.model_config``), it is what ``build_model`` takes,
what a checkpoint stores under ``"model_config"`` to be rebuilt by ``eval.py``, and what
``--resume`` compares field by field. It has no defaults of its own: those are the flags'
(``lib/config.py``), so that they are written in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

# Fields --resume does not compare: GloVe initialisation (the checkpoint's weights replace it),
# the location of the BERT-family model or of the backbone weights (the same model may be
# resumed from another folder; a different architecture fails when its weights load), and the
# grid's input side and cell drop (no weight depends on them: a run may go on at another size).
NOT_COMPARED = {"compared": False}
# Fields that configs saved before them lack, with the behaviour those models had.
ADDED_LATER = {"appm_variant": "ours", "sase_variant": "ours", "attn_dropout": 0.1,
               "layer_scale": 0.1, "backbone": "resnet152", "backbone_path": None,
               "image_size": None, "cell_drop_rate": 0.2}


@dataclass(frozen=True)
class ModelConfig:
    img_dim: int  # region feature width, read from the training features
    embed_size: int
    precomp_enc_type: str
    no_imgnorm: bool
    text_enc_type: str
    bert_path: str | None = field(metadata=NOT_COMPARED)
    word_dim: int
    num_layers: int
    wemb_type: str = field(metadata=NOT_COMPARED)
    wemb_path: str = field(metadata=NOT_COMPARED)
    no_txtnorm: bool
    coding_type: str
    pooling_type: str
    alpha: float
    global_pool: str
    belta: float
    fusion: str
    fusion_dim: int
    aspp_rates: tuple[int, ...]
    ppm_bins: tuple[int, ...]
    text_gnn: bool
    gnn_threshold: float
    gnn_hidden: int
    appm_variant: str
    sase_variant: str
    attn_dropout: float
    layer_scale: float | None
    # raw images and backbone grids (--precomp_enc_type backbone)
    backbone: str
    backbone_path: str | None = field(metadata=NOT_COMPARED)
    image_size: int | None = field(metadata=NOT_COMPARED)  # input side; None for region features
    cell_drop_rate: float = field(metadata=NOT_COMPARED)

    @classmethod
    def from_dict(cls, values: Mapping) -> ModelConfig:
        """The config from a mapping holding (at least) every field, e.g. ``vars(args)``.

        Fields added after a config was saved take :data:`ADDED_LATER`'s values: what models
        built before them computed."""
        values = {**ADDED_LATER, **values}
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise KeyError(f"model config lacks {missing}")
        return cls(**{f.name: _frozen(values[f.name]) for f in fields(cls)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def compared_fields(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.metadata.get("compared", True)]

    def differences(self, saved: ModelConfig) -> list[str]:
        """``--flag saved (now current)`` for every compared field where ``saved`` differs."""
        return [f"--{name} {getattr(saved, name)!r} (now {getattr(self, name)!r})"
                for name in self.compared_fields() if getattr(saved, name) != getattr(self, name)]


def _frozen(value):
    """Lists (e.g. ``aspp_rates`` read back from an older checkpoint) compare as tuples."""
    return tuple(value) if isinstance(value, list) else value
