"""Command-line flags of ``train.py`` (the names VSE∞/CHAN users know), grouped by concern, and
the :class:`ModelConfig` built from them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data.images import resolve_image_size
from .data.naming import dataset_name
from .errors import CheckpointError, DataError
from .losses import CRITERIA
from .models.backbone import GRID_ENCODER, backbone_source
from .models.config import ADDED_LATER, ModelConfig
from .models.context import ATTENTION_HEADS
from .models.image import IMAGE_ENCODERS
from .precision import PRECISIONS
from .similarity import CODINGS, POOLINGS

# Named configurations (docs/MODEL.md). They set defaults; explicit flags still override them.
# The published (chan, chan_gru, vse) and seed (asdg) recipes exactly; the flags' own defaults
# are this project's forms (LayerScale, attention dropout), which none of these use.
NAMED_CONFIGS = {
    # CHAN as published with BERT: one FC over regions, VHA coding + mean pooling
    "chan": {"precomp_enc_type": "basic", "fusion": "none", "text_gnn": False,
             "text_enc_type": "bert", "bert_path": "bert-base-uncased",
             "coding_type": "VHACoding", "pooling_type": "MeanPooling",
             "attn_dropout": 0.0, "layer_scale": None},
    # CHAN's BiGRU script: self-attention over regions (no dropout, plain residual), GloVe words,
    # VHA + LSE(0.1), batch 384, AdamW with torch's default weight decay
    "chan_gru": {"precomp_enc_type": "selfattention", "fusion": "none", "text_gnn": False,
                 "text_enc_type": "bigru", "bert_path": None, "word_dim": 300,
                 "wemb_type": "glove", "coding_type": "VHACoding", "pooling_type": "LSEPooling",
                 "belta": 0.1, "batch_size": 384, "weight_decay": 0.01,
                 "attn_dropout": 0.0, "layer_scale": None},
    # CHAN-ASDG in the seed's forms: seed APPM + seed SASE + DistilBERT + token GNN, VHA + mean.
    # One change of ours, with the evidence in docs/ABLATION.md: LayerScale 0.1 on the residual
    # branches (attention, token graph); with the seed's plain residuals the token graph
    # collapsed at the switch to hardest negatives (--layer_scale none restores them).
    "asdg": {"precomp_enc_type": "sase", "fusion": "appm", "text_gnn": True,
             "text_enc_type": "bert", "bert_path": "distilbert-base-uncased",
             "coding_type": "VHACoding", "pooling_type": "MeanPooling",
             "appm_variant": "seed", "sase_variant": "seed", "attn_dropout": 0.0,
             "layer_scale": 0.1},
    # VSE∞'s region recipe: FC + MLP, GPO on both sides, margin 0.2
    "vse": {"precomp_enc_type": "basic_mlp", "fusion": "none", "text_gnn": False,
            "text_enc_type": "bert", "bert_path": "bert-base-uncased",
            "coding_type": "global", "global_pool": "gpo", "margin": 0.2},
}

# Flags of VSE∞/CHAN that this trainer does not take, with what to use instead.
REPLACED_FLAGS = {
    "--val_step": "validation runs once per epoch on dev; the best rsum gives model_best.pth",
    "--backbone_source": "give the backbone's weights file with --backbone_path",
    "--backbone_warmup_epochs": "use --embedding_warmup_epochs (epochs with a frozen backbone)",
}


def parse_train_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse training flags; ``--config NAME`` first installs that configuration's defaults."""
    parser = train_parser()
    for token in argv if argv is not None else sys.argv[1:]:
        name = token.split("=", 1)[0]
        if name in REPLACED_FLAGS:
            parser.error(f"{name} (a VSE∞/CHAN flag) is not taken here: {REPLACED_FLAGS[name]}")
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**NAMED_CONFIGS[known.config])
    args = parser.parse_args(argv)
    problem = _flag_problem(args) or _grid_flag_problem(args)
    if problem:
        parser.error(problem)
    try:
        args.data_name = dataset_name(args.data_path, args.data_name)
    except DataError as err:
        parser.error(str(err))
    if args.vocab_path is None:  # SCAN layout: DATA_ROOT/{f30k,coco} beside DATA_ROOT/vocab
        args.vocab_path = str(Path(args.data_path).parent / "vocab")
    return args


def _flag_problem(args) -> str | None:
    """What is wrong with a combination of flags, before anything is written."""
    if args.text_enc_type == "bert" and not args.bert_path:
        return ("--text_enc_type bert needs a model: --bert_path /local/folder, a hub name such "
                "as distilbert-base-uncased (downloaded), or --config NAME")
    if args.reset_start_epoch and not args.resume:
        return "--reset_start_epoch needs --resume CHECKPOINT"
    if args.max_caption_tokens < 3:
        return f"--max_caption_tokens must be at least 3, got {args.max_caption_tokens}"
    if not 0 <= args.obj_drop_rate < 1:
        return f"--obj_drop_rate must be in [0, 1), got {args.obj_drop_rate}"
    for flag in ("batch_size", "log_step", "num_epochs", "embed_size"):
        if getattr(args, flag) < 1:
            return f"--{flag} must be at least 1, got {getattr(args, flag)}"
    if args.wemb_type == "glove" and not args.wemb_path:
        return ("--wemb_type glove (set by --config chan_gru) needs --wemb_path, a GloVe text "
                "file of --word_dim values per word (CHAN used glove.840B.300d); or pass "
                "--wemb_type none")
    if not 0 <= args.attn_dropout < 1:
        return f"--attn_dropout must be in [0, 1), got {args.attn_dropout}"
    if args.precomp_enc_type in ("selfattention", "sase") and args.embed_size % ATTENTION_HEADS:
        return (f"--precomp_enc_type {args.precomp_enc_type} uses {ATTENTION_HEADS} attention "
                f"heads: --embed_size must be a multiple of {ATTENTION_HEADS}, got "
                f"{args.embed_size}")
    return None


# Raw-image flags and their defaults; any other value without --precomp_enc_type backbone is
# refused, since region features would silently ignore it.
GRID_DEFAULTS = {"backbone": "resnet152", "backbone_path": None, "backbone_lr_factor": 0.01,
                 "embedding_warmup_epochs": 0, "image_size": None, "input_scale_factor": None,
                 "cell_drop_rate": 0.2}


def _grid_flag_problem(args) -> str | None:
    """What is wrong with the raw-image flags; when nothing, ``args.image_size`` becomes the
    side the loaders use (from ``--image_size`` or ``--input_scale_factor``)."""
    if args.precomp_enc_type != GRID_ENCODER:
        given = [f"--{flag}" for flag, default in GRID_DEFAULTS.items()
                 if getattr(args, flag) != default]
        if given:
            return (f"{', '.join(given)}: raw-image settings, which region features would "
                    f"ignore; add --precomp_enc_type {GRID_ENCODER} to train on raw images")
        return None
    if args.img_dim is not None:
        return (f"--img_dim is the width of region features; with --precomp_enc_type "
                f"{GRID_ENCODER} the backbone decides it")
    if not args.backbone_path:
        return (f"--precomp_enc_type {GRID_ENCODER} needs --backbone_path FILE, local weights "
                f"for --backbone {args.backbone} (nothing is downloaded)")
    if not Path(args.backbone_path).is_file():
        return f"--backbone_path {args.backbone_path}: no such file"
    if not 0 <= args.cell_drop_rate < 1:
        return f"--cell_drop_rate must be in [0, 1), got {args.cell_drop_rate}"
    if args.embedding_warmup_epochs < 0:
        return f"--embedding_warmup_epochs must be at least 0, got {args.embedding_warmup_epochs}"
    try:
        backbone_source(args.backbone)
        args.image_size = resolve_image_size(args.image_size, args.input_scale_factor)
    except ValueError as err:
        return str(err)
    return None


def dataset_kind(config) -> str:
    """The ``DATASET_KINDS`` entry a model of ``config`` (flags or a ModelConfig) reads."""
    return "images" if config.precomp_enc_type == GRID_ENCODER else "precomp"


def model_config(args, img_dim: int | None = None) -> ModelConfig:
    """The model config of parsed flags. ``img_dim``: the feature width read from the data
    (which ``--img_dim``, when given, was checked against); default ``--img_dim``."""
    return ModelConfig.from_dict({**vars(args), "img_dim": img_dim or args.img_dim})


def saved_model_config(ckpt: dict, path: str | Path) -> ModelConfig:
    """The model config stored in checkpoint ``path``. One written before the config existed
    holds only the run's flags (``"config"``); flags it predates take today's defaults."""
    try:
        if "model_config" in ckpt:
            values = dict(ckpt["model_config"])
        else:
            values = {**vars(train_parser().parse_args([])), **ADDED_LATER, **ckpt["config"]}
        if ckpt.get("version", 1) < 3 and values.get("precomp_enc_type") == "basic":
            values["precomp_enc_type"] = "basic_mlp"  # "basic" was VSE∞'s FC + MLP until 3
        return ModelConfig.from_dict(values)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unusable model config ({err})") from None


def _scale(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a CHAN-ASDG image-text matching model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", choices=sorted(NAMED_CONFIGS),
                   help="named configuration whose settings become the defaults")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default="data/toy",
                   help="dataset folder holding precomp/ (e.g. data/f30k); the embedded toy "
                   "set, and nothing else, is generated on first use at <repository>/data/toy")
    g.add_argument("--data_name", default=None,
                   help="f30k | coco | toy | another name; default: the data folder's name "
                   "(data/f30k -> f30k), and a known folder name that contradicts it is an "
                   "error; selects the vocabulary file and the default evaluation split")
    g.add_argument("--vocab_path", default=None,
                   help="BiGRU vocabulary: a SCAN JSON file or the folder holding "
                   "{data_name}_precomp_vocab.json (default: vocab/ beside the dataset folder, "
                   "e.g. data/vocab for data/f30k)")
    g.add_argument("--img_dim", type=int, default=None,
                   help="region feature width (BUTD: 2048); default: read from train_ims.npy, "
                   "when given the features are checked against it")
    g.add_argument("--batch_size", type=int, default=128, help="training mini-batch size")
    g.add_argument("--workers", type=int, default=2,
                   help="loader workers: threads building whole training batches of region "
                   "features, processes for raw images and evaluation")
    g.add_argument("--drop", action=argparse.BooleanOptionalAction, default=True,
                   help="training augmentation, as CHAN's --drop: drop each region with "
                   "probability --obj_drop_rate (at least one is kept) and mask, replace or "
                   "delete caption words; --no-drop turns both off")
    g.add_argument("--obj_drop_rate", type=float, default=0.2,
                   help="probability of dropping a region (with --drop)")
    g.add_argument("--max_caption_tokens", type=int, default=128,
                   help="tokens kept per caption (WordPiece pieces or BiGRU words), "
                   "[CLS]/[SEP] or <start>/<end> included; longer captions are cut and counted "
                   "in the log")

    g = p.add_argument_group("model")
    g.add_argument("--embed_size", type=int, default=1024, help="joint embedding width")
    g.add_argument("--precomp_enc_type", default="basic", choices=(*IMAGE_ENCODERS, GRID_ENCODER),
                   help="image encoder over region features: basic (one FC, CHAN), basic_mlp "
                   "(FC + residual MLP, VSE∞'s basic), selfattention, sase; or backbone: raw "
                   "images through a CNN grid encoder (group 'raw images and backbone grids')")
    g.add_argument("--no_imgnorm", action="store_true", help="do not L2-normalise regions")
    g.add_argument("--text_enc_type", default="bert", choices=("bert", "bigru"),
                   help="text encoder")
    g.add_argument("--bert_path", default=None,
                   help="BERT-family model for --text_enc_type bert: a local folder, or a hub "
                   "name such as distilbert-base-uncased (downloaded); the named "
                   "configurations set one")
    g.add_argument("--word_dim", type=int, default=300, help="BiGRU word embedding width")
    g.add_argument("--num_layers", type=int, default=1, help="BiGRU layers")
    g.add_argument("--wemb_type", default="none", choices=("none", "glove"),
                   help="BiGRU word-embedding initialisation")
    g.add_argument("--wemb_path", default="",
                   help="with --wemb_type glove: GloVe text file (its width must be --word_dim)")
    g.add_argument("--no_txtnorm", action="store_true", help="do not L2-normalise tokens")
    g.add_argument("--coding_type", default="VHACoding", choices=CODINGS,
                   help="CHAN coding of the region x token cosine matrix")
    g.add_argument("--pooling_type", default="MeanPooling", choices=POOLINGS,
                   help="pooling of the coded values into one score")
    g.add_argument("--alpha", type=float, default=0.1, help="VSA attention temperature")
    g.add_argument("--global_pool", default="gpo", choices=("gpo", "mean"),
                   help="with --coding_type global: GPO (VSE∞) or mean pooling of each side")
    g.add_argument("--belta", type=float, default=0.1,
                   help="LSE/Softmax pooling temperature (CHAN's spelling of beta)")

    g = p.add_argument_group("ASDG modules")
    g.add_argument("--fusion", default="none", choices=("none", "appm"),
                   help="multi-scale fusion of the region embeddings (APPM: ASPP + PPM)")
    g.add_argument("--fusion_dim", type=int, default=128, help="APPM bottleneck width")
    g.add_argument("--aspp_rates", type=_int_list, default=(6, 18),
                   help="ASPP dilation rates, comma separated")
    g.add_argument("--ppm_bins", type=_int_list, default=(1, 2, 4),
                   help="PPM pyramid bin counts, comma separated")
    g.add_argument("--appm_variant", default="ours", choices=("ours", "seed"),
                   help="APPM form: ours (LayerNorm, no dropout, --layer_scale on the branch) or "
                   "the seed's (BatchNorm over valid positions, dropout 0.5 after ASPP, inner "
                   "residuals)")
    g.add_argument("--sase_variant", default="ours", choices=("ours", "seed"),
                   help="SASE squeeze-excitation: ours (x * gate, reduction 16) or the seed's "
                   "(LN(x) * gate + x, reduction 8, bias-free)")
    g.add_argument("--attn_dropout", type=float, default=0.1,
                   help="dropout in the region self-attention (selfattention, sase); CHAN and "
                   "the seed use 0")
    g.add_argument("--layer_scale", type=_scale, default=0.1,
                   help="initial per-channel scale (LayerScale) of the residual branches: "
                   "self-attention, our APPM, token graph; 'none' for a plain residual (CHAN, "
                   "the seed)")
    g.add_argument("--text_gnn", action="store_true",
                   help="token graph network (two GAT layers) on the text side")
    g.add_argument("--gnn_threshold", type=float, default=0.5,
                   help="cosine similarity above which two tokens are joined")
    g.add_argument("--gnn_hidden", type=int, default=512, help="GAT hidden width")

    g = p.add_argument_group("raw images and backbone grids")
    g.add_argument("--backbone", default=GRID_DEFAULTS["backbone"],
                   help="CNN over the raw images: a torchvision ResNet-family model (resnet152, "
                   "resnext101_32x8d, ...) or a convolutional timm model "
                   "(tf_efficientnet_lite0, ...); torchvision:NAME / timm:NAME pick the library")
    g.add_argument("--backbone_path", default=GRID_DEFAULTS["backbone_path"],
                   help="local weights of --backbone (a state dict, a checkpoint holding one, "
                   "or .safetensors); required, never downloaded")
    g.add_argument("--backbone_lr_factor", type=float,
                   default=GRID_DEFAULTS["backbone_lr_factor"],
                   help="learning-rate factor of the backbone (VSE∞'s default)")
    g.add_argument("--embedding_warmup_epochs", type=int,
                   default=GRID_DEFAULTS["embedding_warmup_epochs"],
                   help="epochs with the backbone frozen before it trains (VSE∞'s grid script: 1)")
    g.add_argument("--image_size", type=int, default=GRID_DEFAULTS["image_size"],
                   help="side of the square network input, aspect ratio not kept (default 512)")
    g.add_argument("--input_scale_factor", type=float,
                   default=GRID_DEFAULTS["input_scale_factor"],
                   help="VSE∞'s form of --image_size: side int(256 x factor), 2.0 = 512; both "
                   "given must agree")
    g.add_argument("--cell_drop_rate", type=float, default=GRID_DEFAULTS["cell_drop_rate"],
                   help="training: drop each grid cell with this probability, at least one kept "
                   "(0: off; --obj_drop_rate is for regions, --drop switches only the caption "
                   "augmentation of raw-image runs)")

    g = p.add_argument_group("loss")
    g.add_argument("--criterion", default="ContrastiveLoss",
                   choices=CRITERIA, help="training objective")
    g.add_argument("--margin", type=float, default=0.05, help="hinge loss margin")
    g.add_argument("--temperature", type=float, default=0.01, help="InfoNCE temperature")
    g.add_argument("--max_violation", action="store_true",
                   help="hardest negative also during the warm-up epochs (after them it is "
                   "always used; set --vse_mean_warmup_epochs >= --num_epochs to never use it)")
    g.add_argument("--positives", default="diagonal", choices=("diagonal", "same_image"),
                   help="which pairs of a batch are positives: diagonal (CHAN, VSE∞: a second "
                   "caption of the same image is a negative) or same_image (never a negative)")
    g.add_argument("--vse_mean_warmup_epochs", type=int, default=1,
                   help="epochs summing over all negatives before switching to the hardest")

    g = p.add_argument_group("optimisation")
    g.add_argument("--num_epochs", type=int, default=25, help="training epochs")
    g.add_argument("--learning_rate", type=float, default=5e-4, help="initial learning rate")
    g.add_argument("--lr_update", type=int, default=15, help="epoch at which lr drops x0.1")
    g.add_argument("--optim", default="adamw", choices=("adamw", "adam"),
                   help="optimizer; 'adam' is AdamW too, as in VSE∞")
    g.add_argument("--weight_decay", type=float, default=1e-4,
                   help="AdamW (decoupled) weight decay")
    g.add_argument("--bert_lr_factor", type=float, default=0.1,
                   help="learning-rate factor of the pretrained text transformer")
    g.add_argument("--grad_clip", type=float, default=2.0, help="gradient-norm clip (0: off)")
    g.add_argument("--seed", type=int, default=2022, help="random seed")
    g.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")

    g = p.add_argument_group(
        "distributed", "under torchrun (README: multi-GPU); --batch_size is the global batch, "
        "split evenly among the ranks")
    g.add_argument("--local_negatives", action="store_true",
                   help="each rank ranks its own slice of the batch among itself only (plain "
                   "DDP) instead of against all pairs of the global batch")
    g.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="BatchNorm layers normalise with the statistics of the global batch, as "
                   "one process would; --no-sync_bn: each rank with its own slice's")

    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--model_name", default="runs/toy", help="folder for checkpoints and the log")
    g.add_argument("--logger_name", default=None,
                   help="TensorBoard folder (default: <model_name>/log)")
    g.add_argument("--log_step", type=int, default=200, help="log every N steps")
    g.add_argument("--resume", default="", help="checkpoint to resume from")
    g.add_argument("--reset_start_epoch", action="store_true",
                   help="with --resume: load weights only and start a new run at epoch 0")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoints of an earlier run in --model_name (without it, "
                   "such a folder is refused unless --resume continues that run)")
    g.add_argument("--val_precision", default="fp32", choices=PRECISIONS,
                   help="precision of the per-epoch validation (fp32: the best epoch is chosen "
                   "on exact scores)")
    g.add_argument("--no_progress", action="store_true", help="no progress bars")

    g = p.add_argument_group("speed")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model + loss of the training step (eager is the "
                   "reference; docs/PERFORMANCE.md says when to use it)")
    g.add_argument("--compile_mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)")
    g.add_argument("--token_cache", default=None,
                   help="folder (outside the data folder) where the tokenized training "
                   "captions are kept between runs; default: in memory for this run only")
    return p
