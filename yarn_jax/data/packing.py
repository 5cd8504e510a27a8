"""Training sequences: documents tokenized, bookended with BOS/EOS, cut into fixed-length rows, and served
as a deterministic, resumable stream of batches.

`chunk` (the paper's PG19 recipe: each document split into 64k-token chunks): a row holds one document's
tokens; the last, short chunk of a document is padded. `pack`: bookended documents are concatenated and
cut into rows; each row carries segment ids (1, 2, ... per document piece, 0 = padding) and positions that
restart at every document start, so no token attends across documents or is predicted from another.

Batches come from a grain `MapDataset`: rows shuffled by the seed, reshuffled each epoch, batched. Batch
`i` is a pure function of (rows, seed, batch size, i), so the data position checkpointed with the model is
just the index of the next batch, and a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from yarn_jax.errors import ConfigError

MODES = ("pack", "chunk")


@dataclasses.dataclass
class Rows:
    """[N, T] int32 arrays of training rows."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def fingerprint(self) -> str:
        """A digest of the rows: a resumed run refuses data that changed under it."""
        h = hashlib.sha256()
        for a in (self.input_ids, self.segment_ids, self.positions):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def take(self, index) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids[index], "segment_ids": self.segment_ids[index],
                "positions": self.positions[index]}


def bookend(ids: np.ndarray, bos: int | None, eos: int | None) -> np.ndarray:
    parts = ([[bos]] if bos is not None else []) + [ids] + ([[eos]] if eos is not None else [])
    return np.concatenate([np.asarray(p, np.int32) for p in parts])


def build_rows(docs: list[np.ndarray], seq_len: int, *, bos: int | None, eos: int | None,
               mode: str = "pack") -> Rows:
    """Rows of seq_len tokens from tokenized documents (without BOS/EOS)."""
    if mode not in MODES:
        raise ConfigError(f"packing: {mode!r} is not one of {MODES}")
    if seq_len < 2:
        raise ConfigError(f"seq_len must be >= 2, got {seq_len}")
    ids, seg, pos = [], [], []
    if mode == "chunk":
        for doc in docs:
            tokens = bookend(doc, bos, eos)
            for start in range(0, len(tokens), seq_len):
                piece = tokens[start:start + seq_len]
                if len(piece) < 2:  # nothing to predict
                    continue
                ids.append(piece)
                seg.append(np.ones(len(piece), np.int32))
                pos.append(np.arange(len(piece), dtype=np.int32))
    else:
        stream = [bookend(doc, bos, eos) for doc in docs]
        tokens = np.concatenate(stream)
        doc_index = np.concatenate([np.full(len(s), i, np.int64) for i, s in enumerate(stream)])
        doc_start = np.concatenate([np.arange(len(s)) for s in stream]).astype(np.int32)
        for start in range(0, len(tokens), seq_len):
            piece = slice(start, start + seq_len)
            d = doc_index[piece]
            ids.append(tokens[piece])
            seg.append((np.concatenate([[0], np.cumsum(d[1:] != d[:-1])]) + 1).astype(np.int32))
            # positions restart at each document start; a document continued from the previous row
            # continues its positions from 0 in this row (it sees none of its earlier tokens)
            p = doc_start[piece].astype(np.int64)
            first = p[0] if len(p) else 0
            pos.append(np.where(d == d[0], p - first, p).astype(np.int32))
    if not ids:
        raise ConfigError("data: no training row could be built (documents too short?)")
    n = len(ids)
    out = Rows(np.zeros((n, seq_len), np.int32), np.zeros((n, seq_len), np.int32), np.zeros((n, seq_len), np.int32))
    for i, (a, s, p) in enumerate(zip(ids, seg, pos)):
        out.input_ids[i, :len(a)] = a
        out.segment_ids[i, :len(a)] = s
        out.positions[i, :len(a)] = p
    return out


class BatchStream:
    """Global batch i -> {input_ids, segment_ids, positions} [B, T] (host arrays), deterministic in i."""

    def __init__(self, rows: Rows, batch_size: int, seed: int):
        import grain

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        # shuffled row indices, a new permutation every epoch, batched; random access by batch index
        self._batches = grain.MapDataset.range(len(rows)).shuffle(seed=seed).repeat(None).batch(batch_size)

    def indices(self, i: int) -> np.ndarray:
        return np.asarray(self._batches[i])

    def batch(self, i: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
        """Batch i, or only `rows` of it (a process reads the rows its devices hold)."""
        return self.rows.take(self.indices(i)[rows])

    def state(self, next_batch: int) -> dict:
        """What a checkpoint stores to resume the stream at `next_batch`."""
        return {"next_batch": int(next_batch), "seed": self.seed, "batch_size": self.batch_size,
                "rows": len(self.rows), "fingerprint": self.rows.fingerprint()}

    def check_resume(self, state: dict, where: str) -> int:
        """The batch to resume at, after checking the stream is the one the checkpoint was written with."""
        mine = self.state(state.get("next_batch", 0))
        diff = sorted(k for k in mine if k != "next_batch" and state.get(k) != mine[k])
        if diff:
            raise ConfigError(f"{where}: the checkpoint was trained on another data stream ("
                              + ", ".join(f"{k}: {state.get(k)!r} there, {mine[k]!r} now" for k in diff)
                              + "); resuming would not reproduce its batches. Use another --out.")
        return int(state["next_batch"])
