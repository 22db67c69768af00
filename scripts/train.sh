#!/bin/sh
# Train a model.
#   sh scripts/train.sh                                      # toy data, generated on first use
#   DATASET=f30k DATA_PATH=data/f30k sh scripts/train.sh     # CHAN-ASDG recipe on Flickr30K
#   DATASET=coco DATA_PATH=data/coco CONFIG=chan sh scripts/train.sh
#   DATASET=f30k DATA_PATH=data/f30k FEATURES=grid BACKBONE_PATH=resnet152.pth sh scripts/train.sh
# CONFIG: asdg (default) | chan | chan_gru | vse (docs/MODEL.md). Extra arguments go to
# train.py.
# FEATURES: regions (default, precomp/*_ims.npy) | grid (raw images through BACKBONE, default
# resnet152, with local weights BACKBONE_PATH; VSE∞'s grid setting, README "Raw images").
# NGPU=N: N processes on this node through torchrun (python -m torch.distributed.run), one per
# GPU (or N CPU processes on a machine without one); --batch_size stays the global batch
# (README "Multi-GPU"). Several nodes: NNODES, NODE_RANK (0 on the master), MASTER_ADDR and
# MASTER_PORT, the same NGPU on every node:
#   NGPU=8 DATASET=coco DATA_PATH=data/coco sh scripts/train.sh            # one node, 8 GPUs
#   NGPU=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 DATASET=coco ...         # node 0 of two
# Only what differs from the flag defaults and the named configuration is passed here.
set -e
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATASET=${DATASET:-toy}
CONFIG=${CONFIG:-asdg}
FEATURES=${FEATURES:-regions}

case "$FEATURES" in
  regions)
    SUFFIX=""
    ;;
  grid)
    : "${BACKBONE_PATH:?set BACKBONE_PATH to a local weights file of BACKBONE (default resnet152)}"
    if [ "$DATASET" = toy ]; then
      echo "FEATURES=grid reads raw images: DATASET=f30k or coco (toy has regions only)" >&2
      exit 2
    fi
    # 512 px, backbone at lr x 0.01 (flag defaults); VSE∞'s grid script freezes it for 1 epoch
    set -- --precomp_enc_type backbone --backbone "${BACKBONE:-resnet152}" \
      --backbone_path "$BACKBONE_PATH" --embedding_warmup_epochs 1 "$@"
    SUFFIX=_grid
    ;;
  *)
    echo "unknown FEATURES=$FEATURES (regions | grid)" >&2
    exit 2
    ;;
esac
RUN=${RUN:-runs/${DATASET}_${CONFIG}${SUFFIX}}
NGPU=${NGPU:-1}
NNODES=${NNODES:-1}

if [ "$NNODES" -gt 1 ]; then
  : "${NODE_RANK:?set NODE_RANK to this node's index, 0 to NNODES-1}"
  : "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
  TRAIN="$PYTHON -m torch.distributed.run --nproc_per_node=$NGPU --nnodes=$NNODES \
    --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR --master_port=${MASTER_PORT:-29500} train.py"
elif [ "$NGPU" -gt 1 ]; then
  TRAIN="$PYTHON -m torch.distributed.run --standalone --nproc_per_node=$NGPU train.py"
else
  TRAIN="$PYTHON train.py"
fi

case "$DATASET" in
  toy)
    # Small and CPU-friendly: the default data/toy set, BiGRU text side without pretrained
    # word vectors (none are needed offline), 256-d embeddings, 4 short epochs.
    exec $TRAIN --config "$CONFIG" --text_enc_type bigru --wemb_type none \
      --embed_size 256 --word_dim 128 --num_epochs 4 --lr_update 3 --log_step 20 \
      --model_name "$RUN" "$@"
    ;;
  f30k|coco)
    : "${DATA_PATH:?set DATA_PATH to the dataset folder holding precomp/}"
    # The flag defaults are the published CHAN recipe: AdamW 5e-4, BERT-family x0.1, decay
    # x0.1 at epoch 15 of 25, batch 128, margin 0.05, one warm-up epoch over all negatives,
    # clip 2.0, seed 2022.
    exec $TRAIN --config "$CONFIG" --data_path "$DATA_PATH" --data_name "$DATASET" \
      --workers 8 --model_name "$RUN" "$@"
    ;;
  *)
    echo "unknown DATASET=$DATASET (toy | f30k | coco)" >&2
    exit 2
    ;;
esac
