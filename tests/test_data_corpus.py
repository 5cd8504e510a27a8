from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from yarn_jax.data.corpus import load_documents
from yarn_jax.errors import ConfigError


@pytest.fixture()
def tok():
    t = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 3}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return t


def test_jsonl_text_and_directories(tmp_path, tok):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"text": "a b"}, {"text": "a b c a", "id": "x"}, {"body": "c"}]))
    with pytest.raises(ConfigError, match="line 3 has no string field 'text'"):
        load_documents(str(f), tok)
    docs = load_documents(str(f), tok, min_tokens=3, max_docs=1)
    assert [(d.name, d.ids.tolist()) for d in docs] == [("x", [1, 2, 3, 1])]
    g = tmp_path / "body.jsonl"
    g.write_text(json.dumps({"body": "c a"}) + "\n\n")
    assert [d.ids.tolist() for d in load_documents(str(g), tok, text_field="body")] == [[3, 1]]
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "sub" / "b.md").write_text("c c")
    (tmp_path / "dir" / "a.txt").write_text("a")
    (tmp_path / "dir" / "skip.bin").write_text("b")
    assert [(d.name, d.ids.tolist()) for d in load_documents(str(tmp_path / "dir"), tok)] == [
        ("a.txt", [1]), ("sub/b.md", [3, 3])]


def test_errors_name_the_source(tmp_path, tok):
    with pytest.raises(ConfigError, match="neither"):
        load_documents(str(tmp_path / "missing.txt"), tok)
    (tmp_path / "short.txt").write_text("a b")
    with pytest.raises(ConfigError, match=r">= 5 tokens \(longest: 2\)"):
        load_documents(str(tmp_path / "short.txt"), tok, min_tokens=5)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ConfigError, match="line 1 is not JSON"):
        load_documents(str(tmp_path / "bad.jsonl"), tok)


def test_shakespeare_plays_in_name_order(assets):
    from yarn_jax import api

    tok = api.from_pretrained(str(assets["smollm2"])).tokenizer()
    docs = load_documents("shakespeare", tok, min_tokens=60000)
    assert [d.name for d in docs] == ["hamlet"]  # the only play over 60k SmolLM2 tokens (61,105)
    assert docs[0].ids.size == 61105


def test_tfds_data_source_without_tensorflow(tmp_path, tok):
    """A tiny TFDS dataset prepared as array_record, read back through `tfds.data_source`."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyPlays(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"book_text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i, text in enumerate(["a b c", "c", "b b b b"]):
                yield i, {"book_text": text}

    TinyPlays(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    docs = load_documents("tfds:tiny_plays:test", tok, min_tokens=2, tfds_data_dir=str(tmp_path))
    assert sorted(d.ids.tolist() for d in docs) == [[1, 2, 3], [2, 2, 2, 2]]  # book_text found by default
    with pytest.raises(ConfigError, match="tiny_plays.*fields.*set text_field"):
        load_documents("tfds:tiny_plays:test", tok, text_field="body", tfds_data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="cannot open TFDS 'tiny_plays' split 'train'"):
        load_documents("tfds:tiny_plays:train", tok, tfds_data_dir=str(tmp_path))
