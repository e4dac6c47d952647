#!/usr/bin/env bash
# Incremental developer build without pip: configures once into build/dev, rebuilds what changed,
# and copies the extension modules into python/ember/ so `PYTHONPATH=python pytest` uses them.
# Safe to run from several shells at once (one build at a time, by lock).
# Builds the CUDA module too (EMBER_CUDA=ON: developers keep it compiling); pass extra CMake
# options in EMBER_CMAKE_ARGS, e.g. EMBER_CMAKE_ARGS=-DEMBER_CUDA=OFF.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
mkdir -p "$root/build"
exec 9>"$root/build/.devbuild.lock"
flock 9
if [ ! -f "$root/build/dev/build.ninja" ]; then
  cmake -S "$root" -B "$root/build/dev" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$(command -v "$py")" \
    -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DEMBER_CUDA=ON ${EMBER_CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$root/build/dev" -- -j2
# Copy then rename: a process that has the old module mapped keeps its inode (cp over a mapped
# .so would crash it with SIGBUS).
for so in "$root"/build/dev/_cpu*.so "$root"/build/dev/_cuda*.so; do
  [ -e "$so" ] || continue
  dest="$root/python/ember/$(basename "$so")"
  cp -f "$so" "$dest.tmp.$$" && mv -f "$dest.tmp.$$" "$dest"
done
exit 0
