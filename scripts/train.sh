#!/bin/sh
# Train a model.
#   sh scripts/train.sh                                      # toy data, generated on first use
#   DATASET=f30k DATA_PATH=data/f30k sh scripts/train.sh     # CHAN-ASDG recipe on Flickr30K
#   DATASET=coco DATA_PATH=data/coco CONFIG=chan sh scripts/train.sh
# CONFIG: asdg (default) | chan | vse (docs/MODEL.md). Extra arguments go to train.py.
set -e
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATASET=${DATASET:-toy}
CONFIG=${CONFIG:-asdg}
RUN=${RUN:-runs/${DATASET}_${CONFIG}}

case "$DATASET" in
  toy)
    # Small and CPU-friendly: BiGRU text side (no pretrained weights needed), 256-d features.
    exec $PYTHON train.py --config "$CONFIG" --data_path data/toy --data_name toy \
      --text_enc_type bigru --img_dim 256 --embed_size 256 \
      --word_dim 128 --batch_size 128 --num_epochs 4 --lr_update 3 --learning_rate 5e-4 \
      --margin 0.05 --vse_mean_warmup_epochs 1 --drop --workers 2 --log_step 20 \
      --model_name "$RUN" "$@"
    ;;
  f30k|coco)
    : "${DATA_PATH:?set DATA_PATH to the dataset folder holding precomp/}"
    # Published CHAN recipe: AdamW 5e-4, BERT-family x0.1, decay x0.1 at epoch 15 of 25,
    # batch 128, margin 0.05, one warm-up epoch over all negatives, clip 2.0, seed 2022.
    exec $PYTHON train.py --config "$CONFIG" --data_path "$DATA_PATH" --data_name "$DATASET" \
      --num_epochs 25 --lr_update 15 --learning_rate 5e-4 --batch_size 128 --margin 0.05 \
      --vse_mean_warmup_epochs 1 --grad_clip 2.0 --seed 2022 --drop --workers 8 \
      --log_step 200 --model_name "$RUN" "$@"
    ;;
  *)
    echo "unknown DATASET=$DATASET (toy | f30k | coco)" >&2
    exit 2
    ;;
esac
