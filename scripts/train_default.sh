#!/usr/bin/env bash
# Re-train the bundled default model (docs/model_card.md) from photos the package registries serve.
#
#   scripts/train_default.sh [WORK [PRESET]]        default: work-default severe
#
#   WORK/bench/photos/    the photos (scripts/make_benchmark_data.sh: Debian's mate-backgrounds
#                         nature photos, the scikit-image photos, sdflow's bundled samples)
#   WORK/tiles/           the 12 mate photos cut into 144 tiles of 256 x 256 (the training photos)
#   WORK/data/train_HR, train_LR   `sdflow degrade --mode unpaired`: half of the tiles clean, the
#                         other half degraded with PRESET; no LR tile shows what an HR tile shows
#   WORK/test/HR, LR      held-out photos (bundled samples + scikit-image), degraded with PRESET
#   WORK/test_draws/HR, LR  the same photos, four degradation draws each (seeds 1-4)
#   WORK/run/             the training run (configs/default.yaml, 8000 steps)
#   WORK/eval/, eval_draws/  `sdflow eval` of the run on WORK/test and WORK/test_draws: the
#                         model card's tables
#
# DATA_ONLY=1 stops before training; TRAIN_ARGS adds options to `sdflow train` (e.g. --set ...).
# BUNDLE=1 also copies the model into src/sdflow/assets/model/ with its metadata. Needs the
# sdflow environment (make install) and apt-get with package lists for the Debian photos.
set -euo pipefail

WORK=${1:-work-default}
PRESET=${2:-severe}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
export PYTHON

"$REPO/scripts/make_benchmark_data.sh" "$WORK/bench" "$PRESET"
PHOTOS=$WORK/bench/photos

echo "== tiles of the training photos"
# Tiles, not whole photos, are split between the two sets: with 12 photos, a split by photo gives
# the HR and LR sets different colours and scenes, and the content discriminator then drags E's
# colours toward the HR photos' (docs/model_card.md, "How it was made").
rm -rf "$WORK/tiles"
"$PYTHON" - "$PHOTOS/mate" "$WORK/tiles" <<'EOF'
import sys
from pathlib import Path

from sdflow.imageio import read_image, write_image

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
T = 256
for p in sorted(src.glob("*.png")):
    a = read_image(p).rgb
    for y in range(0, a.shape[0] - T + 1, T):
        for x in range(0, a.shape[1] - T + 1, T):
            write_image(dst / f"{p.stem}_{y:03d}_{x:03d}.png", a[y:y + T, x:x + T])
EOF

echo "== unpaired training sets and held-out test set ($PRESET)"
rm -rf "$WORK/data" "$WORK/test" "$WORK/test_photos"
"$PYTHON" -m sdflow degrade -i "$WORK/tiles" -o "$WORK/data" --mode unpaired --preset "$PRESET" --seed 0
mkdir -p "$WORK/test_photos"
cp "$PHOTOS"/samples/*.png "$PHOTOS"/skimage/*.png "$WORK/test_photos/"
"$PYTHON" -m sdflow degrade -i "$WORK/test_photos" -o "$WORK/test" --preset "$PRESET" --seed 1
# Nine pairs give a noisy figure (each photo draws one random degradation), so the model card's
# main table uses four draws of each photo: seeds 1-4, 36 pairs, named <photo>_s<seed>.png.
# Seed 1 is WORK/test itself.
rm -rf "$WORK/test_draws"
for seed in 1 2 3 4; do
    draw=$WORK/test
    if [ "$seed" != 1 ]; then
        draw=$WORK/test_draws/s$seed
        "$PYTHON" -m sdflow degrade -i "$WORK/test_photos" -o "$draw" --preset "$PRESET" --seed "$seed"
    fi
    for side in HR LR; do
        mkdir -p "$WORK/test_draws/$side"
        for f in "$draw/$side"/*.png; do
            cp "$f" "$WORK/test_draws/$side/$(basename "$f" .png)_s$seed.png"
        done
    done
    [ "$seed" = 1 ] || rm -rf "$draw"
done

[ "${DATA_ONLY:-0}" = 1 ] && exit 0

echo "== training (configs/default.yaml)"
rm -rf "$WORK/run"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$PYTHON" -m sdflow train --config "$REPO/configs/default.yaml" \
    --hr "$WORK/data/train_HR" --lr "$WORK/data/train_LR" --out "$WORK/run" \
    --val-hr "$WORK/test/HR" --val-lr "$WORK/test/LR" ${TRAIN_ARGS:-}

echo "== evaluation on the held-out photos"
"$PYTHON" -m sdflow eval --hr "$WORK/test/HR" --lr "$WORK/test/LR" --model "$WORK/run" \
    -o "$WORK/eval" --tau 0 0.4 0.8 --samples 2 --precision fp32 -q
"$PYTHON" -m sdflow eval --hr "$WORK/test_draws/HR" --lr "$WORK/test_draws/LR" --model "$WORK/run" \
    -o "$WORK/eval_draws" --tau 0 0.4 0.8 --samples 2 --precision fp32 -q

if [ "${BUNDLE:-0}" = 1 ]; then
    echo "== bundling"
    "$PYTHON" "$REPO/scripts/bundle_default.py" "$WORK/run" "$PRESET" \
        "$REPO/src/sdflow/assets/model/sdflow_default.safetensors"
fi
