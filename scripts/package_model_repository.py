#!/usr/bin/env python3
"""Package the Triton model repository with only the versions Triton would serve.

Each model directory (one with a ``config.pbtxt``) keeps its config and other files (symlinks
resolved), plus the version directories its ``version_policy`` selects: ``latest { num_versions: N }`` (Triton's
default, N = 1), ``all {}`` or ``specific { versions: [...] }``. Hidden entries (half-written
``.staging-*`` versions), ``__pycache__`` and ``*.pyc`` are left out.

Outputs, for the Helm chart's model repository sources (docs/kubernetes.md):

* ``--output repo.tar.gz``: an archive whose top level is the model directories (extract it into
  the repository root), for ``triton.modelRepository.source: fetch``; its sha256 is printed and
  written to ``repo.tar.gz.sha256`` (``sha256sum -c`` format; the chart's ``fetch.sha256``);
* ``--stage-dir DIR``: the same tree as a directory (docker/triton.Dockerfile bakes it in);
* ``--list``: print the selected files.

Standard library only (runs in a bare ``python:3.11-slim`` build stage).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import re
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.pbtxt"


class PackagingError(RuntimeError):
    """The repository cannot be packaged (no model, no served version, bad policy)."""


@dataclass(frozen=True)
class VersionPolicy:
    kind: str  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return available[-self.num_versions:] if self.num_versions > 0 else []


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _block(text: str, key: str) -> str | None:
    """The ``{...}`` body following ``key`` (``key {`` or ``key: {``), braces balanced."""
    match = re.search(rf"\b{re.escape(key)}\s*:?\s*{{", text)
    if not match:
        return None
    depth, start = 1, match.end()
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    raise PackagingError(f"unbalanced braces after {key!r}")


def parse_version_policy(config_text: str) -> VersionPolicy:
    """The ``version_policy`` of a config.pbtxt (Triton's default: the latest version)."""
    text = _strip_comments(config_text)
    body = _block(text, "version_policy")
    if body is None:
        return VersionPolicy("latest", 1)
    if _block(body, "all") is not None:
        return VersionPolicy("all")
    specific = _block(body, "specific")
    if specific is not None:
        listed = re.findall(r"versions\s*:?\s*(\[[^\]]*\]|-?\d+)", specific)
        versions = tuple(int(v) for item in listed for v in re.findall(r"-?\d+", item))
        if not versions:
            raise PackagingError("version_policy specific {} lists no versions")
        return VersionPolicy("specific", versions=versions)
    latest = _block(body, "latest")
    if latest is not None:
        match = re.search(r"num_versions\s*:?\s*(\d+)", latest)
        return VersionPolicy("latest", int(match.group(1)) if match else 1)
    raise PackagingError(f"unrecognised version_policy {{{body.strip()}}}")


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__pycache__" or path.suffix == ".pyc"


def version_dirs(model_dir: Path) -> list[int]:
    return sorted(
        int(child.name)
        for child in model_dir.iterdir()
        if child.is_dir() and child.name.isdigit() and any(not _ignored(p) for p in child.iterdir())
    )


def _walk(root: Path) -> list[Path]:
    files = []
    for child in sorted(root.iterdir()):
        if _ignored(child):
            continue
        if child.is_dir():
            files.extend(_walk(child))
        elif child.is_file():
            files.append(child)
    return files


def select_files(repository: Path, models: list[str] | None = None) -> dict[str, list[int]]:
    """Model name -> served versions, for every model (or the named ones) in ``repository``."""
    if not repository.is_dir():
        raise PackagingError(f"{repository} is not a directory")
    found = sorted(p.name for p in repository.iterdir() if p.is_dir() and not _ignored(p) and (p / CONFIG).is_file())
    if models:
        missing = sorted(set(models) - set(found))
        if missing:
            raise PackagingError(f"no model directory with {CONFIG} for: {', '.join(missing)}")
        found = [m for m in found if m in models]
    if not found:
        raise PackagingError(f"no model directory with {CONFIG} under {repository}")
    selection = {}
    for name in found:
        model_dir = repository / name
        policy = parse_version_policy((model_dir / CONFIG).read_text(encoding="utf-8"))
        served = policy.select(version_dirs(model_dir))
        if not served:
            raise PackagingError(
                f"{name}: no version directory matches its version_policy ({policy.kind}); "
                f"for router_classifier run `make export` first"
            )
        selection[name] = served
    return selection


def repository_files(repository: Path, selection: dict[str, list[int]]) -> list[Path]:
    """Files to ship, relative to ``repository``: model-level files + served version dirs."""
    out: list[Path] = []
    for name, versions in selection.items():
        model_dir = repository / name
        for child in sorted(model_dir.iterdir()):
            if _ignored(child):
                continue
            if child.is_dir() and child.name.isdigit():
                if int(child.name) in versions:
                    out.extend(_walk(child))
            elif child.is_dir():
                out.extend(_walk(child))
            elif child.is_file():
                out.append(child)
    return [p.relative_to(repository) for p in out]


def _tarinfo_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owned by root, world-readable: whatever uid Triton runs as can read it.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_archive(repository: Path, files: list[Path], output: Path) -> str:
    """Write a .tar.gz of ``files`` (sorted, root-owned); return its sha256."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    dirs = sorted({parent for f in files for parent in f.parents if str(parent) != "."})
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        # dereference: a symlinked file (gemma3_270m/1/model.py -> the shared model.py) ships
        # as a regular file, so any subset of models unpacks self-contained.
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
            for d in dirs:
                tar.add(repository / d, arcname=str(d), recursive=False, filter=_tarinfo_filter)
            for f in sorted(files):
                tar.add(repository / f, arcname=str(f), recursive=False, filter=_tarinfo_filter)
    tmp.replace(output)
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    Path(f"{output}.sha256").write_text(f"{digest}  {output.name}\n", encoding="utf-8")
    return digest


def stage(repository: Path, files: list[Path], stage_dir: Path) -> None:
    """Copy ``files`` into ``stage_dir`` (which must not exist or be empty)."""
    if stage_dir.exists() and any(stage_dir.iterdir()):
        raise PackagingError(f"{stage_dir} is not empty")
    for f in files:
        target = stage_dir / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repository / f, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--models", help="comma-separated model names (default: every model)")
    parser.add_argument("--output", type=Path, help="write a .tar.gz here (+ .sha256 beside it)")
    parser.add_argument("--stage-dir", type=Path, help="copy the selected tree into this directory")
    parser.add_argument("--list", action="store_true", help="print the selected files")
    args = parser.parse_args(argv)
    if not (args.output or args.stage_dir or args.list):
        parser.error("give --output, --stage-dir and/or --list")
    try:
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        selection = select_files(args.model_repository, models)
        files = repository_files(args.model_repository, selection)
        for name, versions in selection.items():
            print(f"{name}: versions {', '.join(map(str, versions))}", file=sys.stderr)
        if args.list:
            print("\n".join(str(f) for f in files))
        if args.stage_dir:
            stage(args.model_repository, files, args.stage_dir)
            print(f"staged {len(files)} files in {args.stage_dir}", file=sys.stderr)
        if args.output:
            digest = write_archive(args.model_repository, files, args.output)
            print(f"wrote {args.output} ({len(files)} files), sha256 {digest}", file=sys.stderr)
            print(digest)
    except (PackagingError, OSError) as exc:
        print(f"package_model_repository: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
