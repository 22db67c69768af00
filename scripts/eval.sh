#!/bin/sh
# Evaluate the best checkpoint of a run trained by scripts/train.sh.
#   sh scripts/eval.sh                                       # toy run, test split
#   DATASET=f30k DATA_PATH=data/f30k sh scripts/eval.sh      # Flickr30K 1K test
#   DATASET=coco DATA_PATH=data/coco sh scripts/eval.sh      # COCO 5K and 1K (5-fold)
# Metrics are printed and written as JSON (and the score matrix as .npy) into $RUN.
set -e
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATASET=${DATASET:-toy}
CONFIG=${CONFIG:-asdg}
RUN=${RUN:-runs/${DATASET}_${CONFIG}}
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
