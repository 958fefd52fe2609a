#!/usr/bin/env bash
# On the GPU machine (the device tool runs it in the repository's root): join the parts that
# `make gpu-bundle` wrote under .gpu/ and earlier transfers left there, check them, unpack, and run
# `python -m bench.gpu` with the device's torch. Results go to $OUT (or .eval/bench-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
manifest=$(ls .gpu/*/manifest.json 2>/dev/null | head -n 1 || true)
[ -n "$manifest" ] || { echo "no .gpu/*/manifest.json: run make gpu-bundle here, then transfer its parts"; exit 3; }
read -r parts sha < <(python3 -c "import json; m = json.load(open('$manifest')); print(m['parts'], m['sha256'])")
for k in $(seq 1 "$parts"); do
  [ -f ".gpu/$k/bundle.part" ] || { echo "part $k of $parts is not here: transfer it (carry [\".gpu/$k\"])"; exit 3; }
done
work=/tmp/router-bench-gpu
if [ "$(cat "$work/sha256" 2>/dev/null || true)" != "$sha" ]; then
  echo ">> joining $parts parts"
  rm -rf "$work" && mkdir -p "$work"
  for k in $(seq 1 "$parts"); do cat ".gpu/$k/bundle.part"; done > "$work/bundle.tar.xz"
  echo "$sha  $work/bundle.tar.xz" | sha256sum -c --quiet
  tar -xJf "$work/bundle.tar.xz" -C "$work"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/numpy" "$work"/wheels/numpy-*.whl
  echo "$sha" > "$work/sha256"
fi
stub=$(ls "$work"/site/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub)
libdir=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
echo ">> the python backend's stub against this Python's libpython ($libdir):"
if LD_LIBRARY_PATH="$libdir:$work/site/nvidia_pytriton.libs" ldd "$stub" | grep -q "libpython.*not found"; then
  # The stub embeds the interpreter through the shared libpython, which a Python built without
  # --enable-shared (or without its libpython package) does not have in LIBDIR: look elsewhere.
  found=$(find / -xdev -name "libpython$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])').so.1.0" \
          2>/dev/null | head -n 1 || true)
  if [ -n "$found" ]; then
    echo "   libpython found at $found"
    export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "   no shared libpython on this machine: Triton's python backend cannot start (the engine study still runs)"
  fi
fi
LD_LIBRARY_PATH="$libdir:$work/site/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$stub" \
  | grep -E "libpython|not found" || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
# numpy < 2 first: Triton 2.51's stub misreads numpy 2 arrays (model.py's docstring)
export PYTHONPATH="$work/numpy:$work/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 -m bench.gpu --model-repository "$work/repository" --data "$work/prompts.jsonl" \
  --out "${OUT:-.eval/bench-gpu}" "$@"
