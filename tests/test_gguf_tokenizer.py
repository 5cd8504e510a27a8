"""The torch-free GGUF tokenizer against transformers' own GGUF path (`AutoTokenizer.from_pretrained(...,
gguf_file=...)`, which needs torch: the reference runs in the test install)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yarn_jax.checkpoint.gguf_tokenizer import save_gguf_tokenizer
from yarn_jax.errors import CheckpointError

LOADING_KEYS = {"is_local", "local_files_only"}  # how transformers' from_pretrained was called, not the tokenizer


def transformers_saved(gguf_path: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(str(out))


def assert_same_files(ours: Path, theirs: Path) -> None:
    """tokenizer.json and the chat template byte for byte; tokenizer_config.json equal but for how it was loaded."""
    names = {p.name for p in theirs.iterdir()}
    assert {p.name for p in ours.iterdir()} == names
    for name in names - {"tokenizer_config.json"}:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    config = json.loads((theirs / "tokenizer_config.json").read_text())
    assert json.loads((ours / "tokenizer_config.json").read_text()) == {
        k: v for k, v in config.items() if k not in LOADING_KEYS}


def test_smollm2_tokenizer_is_byte_identical_to_transformers_gguf_path(assets, tmp_path):
    gguf_path = Path(assets["smollm2_gguf"])
    save_gguf_tokenizer(gguf_path, tmp_path / "ours")
    transformers_saved(gguf_path, tmp_path / "theirs")
    assert_same_files(tmp_path / "ours", tmp_path / "theirs")
    assert (tmp_path / "ours" / "chat_template.jinja").exists()


def test_the_bundled_model_directory_holds_that_tokenizer(assets, tmp_path):
    """What `yarn-jax assets` wrote into the cache is that same tokenizer.json."""
    save_gguf_tokenizer(assets["smollm2_gguf"], tmp_path / "ours")
    assert (tmp_path / "ours" / "tokenizer.json").read_bytes() == (assets["smollm2"] / "tokenizer.json").read_bytes()


def _sentencepiece_gguf(path: Path, with_tokenizer: bool = True, bos_id: int = 1) -> None:
    """A tiny llama GGUF with a sentencepiece ('llama') vocabulary and no add_bos flag: the other builder
    transformers has, and its default of adding BOS."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if with_tokenizer:
        pieces = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab", "bc", "\u2581b"]
        w.add_tokenizer_model("llama")
        w.add_token_list(pieces)
        w.add_token_scores([0.0, 0.0, 0.0] + [-float(i) for i in range(len(pieces) - 3)])
        w.add_token_types([2, 3, 3] + [1] * (len(pieces) - 3))
        w.add_bos_token_id(bos_id)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    w.add_tensor("token_embd.weight", np.zeros((12, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_sentencepiece_vocabulary_matches_transformers_too(tmp_path):
    _sentencepiece_gguf(tmp_path / "sp.gguf")
    save_gguf_tokenizer(tmp_path / "sp.gguf", tmp_path / "ours")
    transformers_saved(tmp_path / "sp.gguf", tmp_path / "theirs")
    assert_same_files(tmp_path / "ours", tmp_path / "theirs")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "ours" / "tokenizer.json"))
    assert tok.encode("ab bc").ids[0] == 1  # BOS added: llama.cpp's default for a sentencepiece vocabulary


def test_a_gguf_without_a_vocabulary_or_with_a_bad_token_id_is_refused_in_one_line(tmp_path):
    _sentencepiece_gguf(tmp_path / "none.gguf", with_tokenizer=False)
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        save_gguf_tokenizer(tmp_path / "none.gguf", tmp_path / "out")
    _sentencepiece_gguf(tmp_path / "bad.gguf", bos_id=99)
    with pytest.raises(CheckpointError, match="'tokenizer.ggml.bos_token_id'=99 is not a token id"):
        save_gguf_tokenizer(tmp_path / "bad.gguf", tmp_path / "out")
    (tmp_path / "text.gguf").write_text("not a gguf")
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        save_gguf_tokenizer(tmp_path / "text.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_tokenizer_is_built_without_importing_torch(assets, tmp_path):
    """The runtime install has no torch: building the tokenizer must not import it (checked in a fresh
    interpreter; CI also runs `yarn-jax assets` in a torch-free venv)."""
    code = ("import sys; from yarn_jax.checkpoint.gguf_tokenizer import save_gguf_tokenizer; "
            f"save_gguf_tokenizer({str(assets['smollm2_gguf'])!r}, {str(tmp_path / 'out')!r}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_gguf_file_alone_brings_its_own_tokenizer(assets, tmp_path):
    """A .gguf with no tokenizer.json beside it (as llama.cpp users share them): the model's tokenizer is the
    one its metadata carries, encoding as the bundled tokenizer.json does."""
    import shutil

    import yarn_jax

    alone = tmp_path / "alone" / "model.gguf"
    alone.parent.mkdir()
    shutil.copy(assets["smollm2_gguf"], alone)
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"
    model = yarn_jax.from_pretrained(alone)
    bundled = yarn_jax.from_pretrained(assets["smollm2"])
    assert model.encode(text).tolist() == bundled.encode(text).tolist()
    assert model.decode(model.encode(text)) == text
