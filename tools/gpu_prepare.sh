#!/usr/bin/env bash
# Prepare what a GPU machine lacks, here (with network), before a device session:
#   .whl/  cp312 wheels of Procgen and what it needs (the device has Python 3.12, no network)
#   .gl/   Debian packages of libGL and friends (Procgen renders with OpenGL)
# `bash tools/gpu_prepare.sh maze` instead fills .whl-maze/ with MuJoCo, Gymnasium and
# Gymnasium-Robotics and what importing them needs (Maze2D; no GL: MUJOCO_GL=disable), LZMA-repacked,
# about 36 MiB.
# `bash tools/gpu_prepare.sh slim` rewrites the Procgen wheel in .whl/ for CoinRun plans: the top-down,
# water and space backgrounds (which CoinRun and ninja never draw; Procgen loads every image at start,
# so they become 4x4 PNGs instead of going) shrink it by about 9.5 MB, room to carry a world's weights
# in the 64 MiB that travel. CoinRun's frames are unchanged (checked here, same seeds, same pixels);
# games that draw those backgrounds (maze, heist, starpilot, ...) get flat ones: not for them.
# Both folders are git-ignored; name them in the device call's `carry`. On the device:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   mkdir -p /tmp/gl && for f in .gl/*.deb; do dpkg -x $f /tmp/gl; done
#   export PYTHONPATH=/tmp/site:src LD_LIBRARY_PATH=/tmp/gl/usr/lib/x86_64-linux-gnu:/tmp/gl/lib/x86_64-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
repack() {  # $1: a glob of wheels to repack with LZMA (pip reads LZMA members through zipfile)
python3 - "$1" <<'PY'
import glob, os, sys, zipfile
for path in glob.glob(sys.argv[1]):
    src = zipfile.ZipFile(path)
    if all(i.compress_type == zipfile.ZIP_LZMA for i in src.infolist()):
        continue
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w") as out:
        for info in src.infolist():
            out.writestr(info, src.read(info.filename), compress_type=zipfile.ZIP_LZMA)
    os.replace(tmp, path)
    print(f"repacked {path} with LZMA: {os.path.getsize(path) / 1e6:.1f} MB")
PY
}
if [ "${1:-}" = slim ]; then
python3 - .whl/procgen_mirror-*.whl <<'PY'
import io, os, sys, zipfile
from PIL import Image
flat = io.BytesIO()
Image.new("RGB", (4, 4), (40, 40, 60)).save(flat, "PNG")
path = sys.argv[1]
drop = tuple(f"procgen/data/assets/{d}/" for d in ("topdown_backgrounds", "water_backgrounds", "space_backgrounds"))
src, tmp, n = zipfile.ZipFile(path), path + ".tmp", 0
with zipfile.ZipFile(tmp, "w") as out:
    for info in src.infolist():
        data = src.read(info.filename)
        if info.filename.startswith(drop) and info.filename.endswith(".png"):
            data, n = flat.getvalue(), n + 1
        out.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
os.replace(tmp, path)
print(f"{path}: {n} backgrounds flattened, now {os.path.getsize(path) / 1e6:.1f} MB")
PY
  exit 0
fi
if [ "${1:-}" = maze ]; then
  mkdir -p .whl-maze
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
      -d .whl-maze mujoco==4.0.0 mujoco-core==4.0.0 glfw pyopengl gymnasium==1.4.0 \
      gymnasium-robotics==1.4.2 farama-notifications cloudpickle typing-extensions pettingzoo==1.27.0 imageio
  # (not mujoco-studio, 9 MB: a viewer that `import mujoco` does not need; glfw's bundled library
  # needs only libc, so no GL packages either)
  repack ".whl-maze/gymnasium_robotics-*.whl"
  du -sh .whl-maze
  exit 0
fi
mkdir -p .whl .gl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d .whl procgen-mirror==0.10.7 gym3==0.3.3 gym-notices cffi pycparser
python3 -m pip wheel -q --no-deps -w .whl gym==0.26.2
# the working tree that travels is capped at 64 MiB: Procgen's wheel (48 MB, deflate) repacked with
# LZMA is 41 MB, which leaves room for the repository
repack ".whl/procgen_mirror-*.whl"
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial
apt-get $o update -qq
(cd .gl && apt-get $o download libgl1 libglx0 libglvnd0 libx11-6 libx11-data libxcb1 libxau6 libxdmcp6 libbsd0 \
    libmd0 libglib2.0-0 libpcre2-8-0 2>/dev/null)
ls -la .whl .gl
du -sh .whl .gl
