#!/usr/bin/env bash
# Build the affordance_ros interfaces (msg/*.msg, srv/*.srv) with cmake into a prefix, for the
# pip/venv route (`make demo`, `make test`) where colcon is not used.
#
# Usage: scripts/build_msgs.sh PREFIX [BUILD_DIR]
#   PREFIX     install prefix, e.g. build/ros_msgs; afterwards put
#              PREFIX/lib/pythonX.Y/site-packages on PYTHONPATH (after the repository root)
#              and PREFIX/lib on LD_LIBRARY_PATH (affordance_ros/env.py: ros_env(PREFIX)).
#   BUILD_DIR  cmake build tree (default: PREFIX.build)
# Environment: PYTHON (default: the venv's python next to this repository, else python3).
# Skips the build when the prefix is newer than every msg file and CMakeLists.txt.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ $# -ge 1 ]] || { echo "usage: $0 PREFIX [BUILD_DIR]" >&2; exit 2; }
mkdir -p "$1"
prefix="$(cd "$1" && pwd)"
build="${2:-$prefix.build}"

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
venv="$("$py" -c 'import sys; print(sys.prefix)')"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
stamp="$prefix/.affordance_msgs.stamp"

if [[ -f "$stamp" && -d "$prefix/lib/python$pyver/site-packages/affordance_ros/srv" ]]; then
  newer="$(find "$repo/msg" "$repo/srv" "$repo/CMakeLists.txt" "$repo/package.xml" -newer "$stamp" | head -n1)"
  if [[ -z "$newer" ]]; then echo "affordance_ros messages up to date in $prefix"; exit 0; fi
fi

for tool in cmake make; do
  command -v "$tool" >/dev/null || { echo "error: '$tool' not found; install it (apt-get install cmake build-essential)" >&2; exit 1; }
done
[[ -d "$venv/share/rosidl_default_generators" ]] || {
  echo "error: rosidl_default_generators not found under $venv/share;" \
       "install the ROS build wheels (see the Makefile's ROS_BUILD_WHEELS)" >&2; exit 1; }

# The wheels' exported cmake targets keep the manylinux build container's include paths.
pyinc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
npinc="$("$py" -c 'import numpy; print(numpy.get_include())')"
{ grep -rl --include='*.cmake' "/opt/python/cp311-cp311" "$venv/share" 2>/dev/null || true; } \
  | xargs -r sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g"

# CMake rejects exported include paths inside the source tree, and the venv often lives in the
# repository: configure from a staged copy of the package files instead of the repository.
src="$build/src"
rm -rf "$src" && mkdir -p "$src"
cp -r "$repo/package.xml" "$repo/CMakeLists.txt" "$repo/msg" "$repo/srv" "$src/"

export PATH="$venv/bin:$PATH" AMENT_PREFIX_PATH="$venv"
cmake -S "$src" -B "$build/cmake" -DAFFORDANCE_MSGS_ONLY=ON -DCMAKE_PREFIX_PATH="$venv" \
  -DCMAKE_INSTALL_PREFIX="$prefix" -DPython3_EXECUTABLE="$py" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_TESTING=OFF >"$build/build.log" 2>&1 || { cat "$build/build.log" >&2; exit 1; }
cmake --build "$build/cmake" -j "$(nproc)" >>"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log" >&2; exit 1; }
cmake --install "$build/cmake" >>"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log" >&2; exit 1; }
touch "$stamp"
echo "affordance_ros messages installed in $prefix"
