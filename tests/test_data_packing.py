"""Training rows and the batch stream: hand-computed packing/chunking, segment-aware positions, and a
stream whose batch i depends only on (rows, seed, batch size, i)."""

import numpy as np
import pytest

from yarn_jax.data.packing import BatchStream, build_rows
from yarn_jax.errors import ConfigError

DOCS = [np.arange(10, 15, dtype=np.int32), np.arange(20, 27, dtype=np.int32)]


def test_pack_bookends_and_restarts_positions_per_document():
    r = build_rows(DOCS, 6, bos=1, eos=2, mode="pack")
    # stream: 1 10 11 12 13 14 | 2 1 20 21 22 23 | 24 25 26 2 . .
    np.testing.assert_array_equal(r.input_ids, [[1, 10, 11, 12, 13, 14], [2, 1, 20, 21, 22, 23],
                                                [24, 25, 26, 2, 0, 0]])
    np.testing.assert_array_equal(r.segment_ids, [[1, 1, 1, 1, 1, 1], [1, 2, 2, 2, 2, 2], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(r.positions, [[0, 1, 2, 3, 4, 5], [0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 0, 0]])


def test_chunk_keeps_one_document_per_row_and_pads():
    r = build_rows(DOCS, 6, bos=1, eos=2, mode="chunk")
    np.testing.assert_array_equal(r.input_ids, [[1, 10, 11, 12, 13, 14], [1, 20, 21, 22, 23, 24],
                                                [25, 26, 2, 0, 0, 0]])
    np.testing.assert_array_equal(r.segment_ids[2], [1, 1, 1, 0, 0, 0])
    # document 0's lone EOS chunk (one token: nothing to predict) is dropped
    assert len(r) == 3


def test_bad_rows_are_refused():
    with pytest.raises(ConfigError, match="packing"):
        build_rows(DOCS, 6, bos=1, eos=2, mode="zip")
    with pytest.raises(ConfigError, match="seq_len"):
        build_rows(DOCS, 1, bos=1, eos=2)


def test_stream_is_a_deterministic_function_of_the_batch_index():
    r = build_rows([np.arange(100, dtype=np.int32) + 3], 8, bos=1, eos=2)
    a, b = BatchStream(r, 3, seed=5), BatchStream(r, 3, seed=5)
    first = [a.indices(i).tolist() for i in range(12)]
    assert [b.indices(i).tolist() for i in reversed(range(12))][::-1] == first  # any access order
    epoch = sorted(sum(first[:len(r) // 3], []))
    assert epoch == sorted(set(epoch))  # no row twice within an epoch's whole batches
    assert BatchStream(r, 3, seed=6).indices(0).tolist() != first[0] or \
        BatchStream(r, 3, seed=6).indices(1).tolist() != first[1]
    # a process reads only its rows of a batch
    np.testing.assert_array_equal(a.batch(4, slice(1, 3))["input_ids"], r.input_ids[a.indices(4)[1:3]])


def test_resume_refuses_another_stream():
    r = build_rows([np.arange(50, dtype=np.int32) + 3], 8, bos=1, eos=2)
    s = BatchStream(r, 2, seed=0)
    assert s.check_resume(s.state(7), "ckpt") == 7
    with pytest.raises(ConfigError, match="seed: 0 there, 1 now"):
        BatchStream(r, 2, seed=1).check_resume(s.state(7), "ckpt")
