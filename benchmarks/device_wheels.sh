#!/usr/bin/env bash
# Downloads, here, the wheels the GPU machine lacks for benchmarks/gpu_session.sh: Keras at
# the version constraints.txt pins and its small dependencies namex and optree (the machine
# has JAX, PyTorch, SciPy, NumPy and the rest of Keras' needs, but no Keras and no network).
#
#   bash benchmarks/device_wheels.sh                  # into .whl/ (git-ignored), for Python 3.12
#   bash benchmarks/device_wheels.sh DIR 3.11         # another folder or Python version
#
# The device call then names `.whl` in `carry`; gpu_session.sh installs them first.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python_version=${2:-3.12}
pin() {  # the version constraints.txt pins, else the one installed here
  local version
  version=$(sed -n "s/^$1==//p" constraints.txt)
  if [ -z "$version" ]; then
    version=$(python3 -c "import importlib.metadata as m; print(m.version('$1'))")
  fi
  echo "$1==$version"
}
mkdir -p "$dest"
rm -f "$dest"/keras-*.whl "$dest"/namex-*.whl "$dest"/optree-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" \
  "$(pin keras)" "$(pin namex)" "$(pin optree)"
ls "$dest"
