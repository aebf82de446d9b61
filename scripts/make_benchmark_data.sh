#!/usr/bin/env bash
# Build the evaluation benchmark of docs/benchmark.md: HR photos and their simulated real-world LR.
#
#   scripts/make_benchmark_data.sh [OUT [PRESET ...]]       default: bench realistic
#
#   OUT/photos/samples/   the 5 photos bundled with sdflow (from the scikit-image 0.26.0 wheel)
#   OUT/photos/skimage/   4 more from the installed scikit-image wheel: camera, coins, brick, gravel
#   OUT/photos/mate/      the 12 photos of Debian's mate-backgrounds 1.26.0-1 (nature/), the
#                         centre 1024x768 of each (cropped, never resampled)
#   OUT/photos/PIXELS.sha256  checksums of the photos' pixels; the last line printed is the
#                         digest of this file, to compare with the one in docs/benchmark.md
#   OUT/<PRESET>/HR, OUT/<PRESET>/LR   `sdflow degrade --preset PRESET --seed 0` of all photos
#
# Needs the sdflow environment with scikit-image (pip install -e '.[test]') and, for the Debian
# photos, apt-get with current package lists (`apt-get update` once; root is not needed to
# download). SKIP_MATE=1 leaves the Debian photos out. PYTHON picks the interpreter (default:
# .venv/bin/python if present, else python3). Nothing is installed: the .deb is only unpacked.
set -euo pipefail

OUT=${1:-bench}
shift || true
PRESETS=("${@:-realistic}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
MATE_VERSION=1.26.0-1
PHOTOS=$OUT/photos

rm -rf "$PHOTOS"
mkdir -p "$PHOTOS/samples" "$PHOTOS/skimage"

echo "== bundled sample photos"
cp "$REPO"/src/sdflow/assets/samples/*.png "$PHOTOS/samples/"

echo "== scikit-image wheel photos"
"$PYTHON" - "$PHOTOS/skimage" <<'EOF'
import shutil, sys
from pathlib import Path

import skimage

# Licences from the docstrings of skimage.data.<name>(): camera, brick, gravel CC0; coins
# "no known copyright restrictions" (Brooklyn Museum).
NAMES = ("camera", "coins", "brick", "gravel")
if skimage.__version__ != "0.26.0":
    print(f"warning: scikit-image {skimage.__version__}, not 0.26.0: its photos may differ",
          file=sys.stderr)
data = Path(skimage.__file__).parent / "data"
for name in NAMES:
    shutil.copy(data / f"{name}.png", Path(sys.argv[1]) / f"{name}.png")
EOF

if [ "${SKIP_MATE:-0}" != 1 ]; then
    echo "== Debian mate-backgrounds $MATE_VERSION (nature/)"
    mkdir -p "$PHOTOS/mate"
    tmp=$(mktemp -d)
    chmod a+rwx "$tmp"  # apt-get download works as the _apt user, which must write here
    trap 'rm -rf "$tmp"' EXIT
    if ! (cd "$tmp" && apt-get download "mate-backgrounds=$MATE_VERSION" >/dev/null); then
        echo "error: cannot download mate-backgrounds=$MATE_VERSION; run 'apt-get update' first," \
             "or set SKIP_MATE=1 to build the benchmark without these photos" >&2
        exit 1
    fi
    dpkg-deb -x "$tmp"/mate-backgrounds_*.deb "$tmp/x"
    cp "$tmp/x/usr/share/doc/mate-backgrounds/copyright" "$PHOTOS/mate/COPYRIGHT"
    "$PYTHON" - "$tmp/x/usr/share/backgrounds/mate/nature" "$PHOTOS/mate" <<'EOF'
import sys
from pathlib import Path

from sdflow.imageio import read_image, write_image

W, H = 1024, 768  # every photo there is at least 1280 x 1024
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for p in sorted(src.glob("*.jpg")):
    rgb = read_image(p).rgb
    top, left = (rgb.shape[0] - H) // 2, (rgb.shape[1] - W) // 2
    write_image(dst / f"{p.stem}.png", rgb[top:top + H, left:left + W])
EOF
fi

# Checksums of the decoded pixels, not of the files: PNG bytes change with the zlib and Pillow
# versions that wrote them, the pixels must not.
"$PYTHON" - "$PHOTOS" <<'EOF'
import hashlib, sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
lines = []
for p in sorted(root.rglob("*.png"), key=lambda q: q.relative_to(root).as_posix()):
    with Image.open(p) as im:
        a = np.asarray(im)
    h = hashlib.sha256(f"{a.shape} {a.dtype}".encode() + a.tobytes()).hexdigest()
    lines.append(f"{h}  {p.relative_to(root).as_posix()}")
(root / "PIXELS.sha256").write_text("\n".join(lines) + "\n")
print(f"photos: {len(lines)}")
EOF

for preset in "${PRESETS[@]}"; do
    echo "== sdflow degrade --preset $preset"
    rm -rf "${OUT:?}/$preset"
    "$PYTHON" -m sdflow degrade -i "$PHOTOS" -o "$OUT/$preset" --preset "$preset" --seed 0
done
echo "photos digest (sha256 of photos/PIXELS.sha256): $(sha256sum "$PHOTOS/PIXELS.sha256" | cut -d' ' -f1)"
