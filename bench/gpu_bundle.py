"""`make gpu-bundle`: what `make bench-gpu` needs on a GPU machine that has torch but no network and
takes at most 64 MiB a transfer, packed into git-ignored parts under .gpu/ (one part a transfer).

The bundle holds: the tritonserver that the nvidia-pytriton wheel carries (the binary, its vendored
libraries, the python backend and the stub for the device's Python; the stubs and libpython of other
versions are left out), numpy < 2 for that Python (Triton 2.51's stub misreads numpy 2's arrays), the
served files of one exported version in fp32 (the int8 copy does not run on a GPU), and the
benchmark's prompts. bench/gpu_device.sh joins the parts there, checks them and runs bench.gpu.

Usage: python -m bench.gpu_bundle [--version N] [--python 3.12] [--part-mib 56]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .gpu import MODEL, ROOT, load_prompts, newest_version

NUMPY = "numpy==1.26.4"  # the newest numpy < 2 with wheels for Python 3.12
SERVED = ("model.onnx", "model.py", "torch_graph.py", "metadata.json", "head.npz", "calibration.npy",
          "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def triton_files(python: str) -> list[tuple[Path, str]]:
    """(file, name in the bundle) for the wheel's server, backend, the one stub and the libraries."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nvidia-pytriton is not installed here: make install-all")
    package = Path(next(iter(spec.submodule_search_locations)))
    site = package.parent
    files = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(site).as_posix()
        if not path.is_file() or "__pycache__" in rel:
            continue
        if "/python_backend_stubs/" in rel and f"/python_backend_stubs/{python}/" not in rel:
            continue
        files.append((path, f"site/{rel}"))
    for path in sorted((site / "nvidia_pytriton.libs").iterdir()):
        if path.name.startswith("libpython3"):  # only the 3.13 stub links it; the device brings its own
            continue
        files.append((path, f"site/nvidia_pytriton.libs/{path.name}"))
    return files


def numpy_wheel(python: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(dest), NUMPY], check=True)
    return next(dest.glob("numpy-*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--python", default="3.12", help="the device's Python (major.minor)")
    parser.add_argument("--data", type=Path, required=True, help="a routing file whose prompts the benchmark sends")
    parser.add_argument("--prompts", type=int, default=2048)
    parser.add_argument("--part-mib", type=int, default=56,
                        help="a part's size (a transfer holds 64 MiB, the working tree included)")
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu")
    args = parser.parse_args(argv)

    version = (args.model_repository / MODEL / str(args.version) if args.version
               else newest_version(args.model_repository))
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        _log(f">> 1/3 numpy < 2 for Python {args.python}")
        wheel = numpy_wheel(args.python, Path(tmp))
        members = [(wheel, f"wheels/{wheel.name}")]
        _log(">> 2/3 tritonserver from the nvidia-pytriton wheel, the version's fp32 files, the prompts "
             "(xz: about 2 minutes on 2 cores)")
        members += triton_files(args.python)
        members += [(version / name, f"repository/{MODEL}/{version.name}/{name}")
                    for name in SERVED if (version / name).is_file()]
        prompts = "".join(json.dumps({"prompt": p}) + "\n" for p in load_prompts(args.data, args.prompts)).encode()
        bundle = Path(tmp) / "bundle.tar.xz"
        with tarfile.open(bundle, "w:xz", preset=6) as tar:
            for path, name in members:
                tar.add(path, arcname=name)
            info = tarfile.TarInfo("prompts.jsonl")
            info.size = len(prompts)
            tar.addfile(info, io.BytesIO(prompts))
        data = bundle.read_bytes()
    _log(f">> 3/3 {len(data) / 2**20:.1f} MiB in parts of {args.part_mib} MiB under {args.out}")
    step = args.part_mib * 2**20
    parts = []
    for k, start in enumerate(range(0, len(data), step), 1):
        part = args.out / str(k) / "bundle.part"
        part.parent.mkdir()
        part.write_bytes(data[start:start + step])
        parts.append(part.relative_to(ROOT).as_posix())
    manifest = {"sha256": hashlib.sha256(data).hexdigest(), "parts": len(parts), "version": int(version.name),
                "python": args.python}
    for part in parts:  # each transfer brings the manifest: whichever arrives, the device knows the whole
        (ROOT / part).with_name("manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    for k, part in enumerate(parts, 1):
        print(f"transfer {k}/{len(parts)}: carry [\"{part.rsplit('/', 1)[0]}\"]"
              + ("" if k < len(parts) else ", then: bash bench/gpu_device.sh"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
