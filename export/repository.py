"""Versions of a model in a Triton model repository: list, latest, next, publish atomically.

A version is a numeric subdirectory (``<model dir>/<n>/``). Triton's default version policy
serves the highest one, so publishing a new version = atomically renaming a fully written
temporary directory to ``<n+1>``; a half-written version is never visible. Temporary
directories start with ``.`` so Triton's repository scan ignores them.

CLI (used by ``make run``): ``python -m export.repository --has-version DIR`` exits 0 when DIR
has a numeric version subdirectory holding ``model.onnx``, 1 otherwise.
"""
from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

MODEL_FILE = "model.onnx"


def list_versions(model_dir: Path, complete_only: bool = True) -> list[int]:
    """Numeric version subdirectories, ascending; ``complete_only`` keeps those with model.onnx."""
    if not model_dir.is_dir():
        return []
    versions = []
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit():
            if not complete_only or (child / MODEL_FILE).is_file():
                versions.append(int(child.name))
    return sorted(versions)


def latest_version(model_dir: Path) -> int | None:
    """The version Triton serves by default (the highest complete one), or None."""
    versions = list_versions(model_dir)
    return versions[-1] if versions else None


def next_version(model_dir: Path) -> int:
    """One above every numeric subdirectory, complete or not, so nothing is ever reused."""
    versions = list_versions(model_dir, complete_only=False)
    return versions[-1] + 1 if versions else 1


def version_dir(model_dir: Path, version: int | None = None) -> Path:
    """The directory of ``version`` (default: the latest complete one)."""
    if version is None:
        version = latest_version(model_dir)
        if version is None:
            raise FileNotFoundError(f"no model version with {MODEL_FILE} under {model_dir}")
    path = model_dir / str(version)
    if not (path / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {MODEL_FILE}")
    return path


def staging_dir(model_dir: Path) -> Path:
    """A fresh hidden directory inside ``model_dir`` (same filesystem, so the rename is atomic)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))


def publish(staged: Path, model_dir: Path, attempts: int = 5) -> Path:
    """Rename ``staged`` to the next free version directory; never replaces an existing one."""
    for _ in range(attempts):
        target = model_dir / str(next_version(model_dir))
        if target.exists():  # rename(2) would silently replace an *empty* directory
            continue
        try:
            os.rename(staged, target)
            return target
        except OSError as exc:  # another exporter won the race for this number
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    shutil.rmtree(staged, ignore_errors=True)
    raise RuntimeError(f"could not claim a new version directory under {model_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.repository", description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--has-version", metavar="DIR", type=Path, help="exit 0 if DIR has a version with model.onnx")
    group.add_argument("--latest", metavar="DIR", type=Path, help="print the latest version's directory")
    group.add_argument("--list", metavar="DIR", type=Path, help="print the complete versions")
    args = parser.parse_args(argv)
    if args.has_version is not None:
        return 0 if latest_version(args.has_version) is not None else 1
    if args.latest is not None:
        version = latest_version(args.latest)
        if version is None:
            print(f"no version with {MODEL_FILE} under {args.latest}", file=sys.stderr)
            return 1
        print(args.latest / str(version))
        return 0
    print("\n".join(str(v) for v in list_versions(args.list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
