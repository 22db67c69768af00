#!/bin/sh
# Evaluate the best checkpoint of a run trained by scripts/train.sh.
#   sh scripts/eval.sh                                       # toy run, test split
#   DATASET=f30k DATA_PATH=data/f30k sh scripts/eval.sh      # Flickr30K 1K test
#   DATASET=coco DATA_PATH=data/coco sh scripts/eval.sh      # COCO 5K and 1K (5-fold)
#   DATASET=f30k DATA_PATH=data/f30k FEATURES=grid sh scripts/eval.sh   # a raw-image (grid) run
# Metrics are printed and written as JSON (and the score matrix as .npy) into $RUN. A grid
# checkpoint holds its backbone's weights: BACKBONE_PATH is not needed here.
set -e
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATASET=${DATASET:-toy}
CONFIG=${CONFIG:-asdg}
FEATURES=${FEATURES:-regions}
case "$FEATURES" in
  regions) SUFFIX="" ;;
  grid) SUFFIX=_grid ;;
  *) echo "unknown FEATURES=$FEATURES (regions | grid)" >&2; exit 2 ;;
esac
RUN=${RUN:-runs/${DATASET}_${CONFIG}${SUFFIX}}
MODEL=${MODEL:-$RUN/model_best.pth}

case "$DATASET" in
  toy)
    $PYTHON eval.py --model_path "$MODEL" --split test --metrics_out "$RUN/metrics_test.json" \
      --save_results "$RUN/sims_test.npy" "$@"
    ;;
  f30k)
    : "${DATA_PATH:?set DATA_PATH to the dataset folder holding precomp/}"
    $PYTHON eval.py --model_path "$MODEL" --data_path "$DATA_PATH" --split test \
      --metrics_out "$RUN/metrics_test.json" --save_results "$RUN/sims_test.npy" "$@"
    ;;
  coco)
    : "${DATA_PATH:?set DATA_PATH to the dataset folder holding precomp/}"
    echo "== COCO 5K (testall) =="
    $PYTHON eval.py --model_path "$MODEL" --data_path "$DATA_PATH" --split testall \
      --metrics_out "$RUN/metrics_5k.json" --save_results "$RUN/sims_testall.npy" "$@"
    echo "== COCO 1K (5-fold mean over testall) =="
    $PYTHON eval.py --results "$RUN/sims_testall.npy" --fold5 "$@" \
      --metrics_out "$RUN/metrics_1k.json"
    ;;
  *)
    echo "unknown DATASET=$DATASET (toy | f30k | coco)" >&2
    exit 2
    ;;
esac
