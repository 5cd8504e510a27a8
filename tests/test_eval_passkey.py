from __future__ import annotations

import pytest

from yarn_jax.evaluation import passkey as pk


def test_prompt_layout_matches_the_reference():
    text = pk.prompt_text(1234, 200, 0.25)
    lines = text.split("\n")
    assert lines[0] == pk.TASK and lines[-1] == "What is the pass key? The pass key is"
    assert lines[2] == "The pass key is 1234. Remember it. 1234 is the pass key."
    assert len(lines[1]) == 50 and len(lines[3]) == 150  # 25 % of the garbage before the needle
    assert lines[1] == pk.FILLER[:50] and lines[3] == (pk.FILLER * 2)[:150]  # filler repeated, cut by chars


def test_prompt_is_the_longest_that_fits(assets):
    from yarn_jax import api

    tok = api.from_pretrained(str(assets["smollm2"])).tokenizer()
    for length in (300, 1000):
        ids = pk.prompt_ids(tok, 777, length, 0.5, bos=1)
        assert ids[0] == 1 and ids.size <= length
        garbage = len(tok.decode(ids[1:].tolist()).split("\n")[1]) + len(tok.decode(ids[1:].tolist()).split("\n")[3])
        assert garbage % pk.STEP == 0
        longer = 1 + len(tok.encode(pk.prompt_text(777, garbage + pk.STEP, 0.5)).ids)
        assert longer > length


def test_answers_contexts_and_trials():
    assert pk.first_integer(" 37096.\nThe grass") == 37096 and pk.first_integer(" a password") is None
    assert pk.passkey_context({4096: 1.0, 8192: 0.9, 16384: 0.5, 32768: 0.8}) == (32768, pytest.approx(0.8))
    assert pk.passkey_context({4096: 0.5}) == (None, None)
    t = pk.trials(5, 0, 4096)
    assert [d for d, _ in t] == [0.0, 0.25, 0.5, 0.75, 1.0] and all(1 <= k <= 50000 for _, k in t)
    assert t == pk.trials(5, 0, 4096) and t != pk.trials(5, 1, 4096)
