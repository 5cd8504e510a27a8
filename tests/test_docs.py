"""The documentation's commands cannot go stale: every command in a ```bash block of README.md and docs/*.md
(also inside `gcloud ... --command "..."`) names an existing `make` target or `yarn-jax` verb, uses only
flags that verb accepts, and points at config files that exist; `yarn-jax train` / `eval` commands are
parsed and validated as the command would (pydantic, the YAML they name). The README's Python quickstart
calls only methods the model object has. Also: the front page stays a front page (size, links resolve)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from yarn_jax import cli_config
from yarn_jax.__main__ import VERBS
from yarn_jax.api import PretrainedModel
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "train", "eval.py": "eval"}


def _blocks(page: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S)


def _commands(block: str) -> list[list[str]]:
    """Each command of a shell block as tokens: continuation lines joined, comments dropped, `&&`-chained
    and quoted (`--command "..."`) commands split out."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            raise AssertionError(f"unparsable shell line: {line!r}") from None
        out += _split(tokens)
    return out


def _split(tokens: list[str]) -> list[list[str]]:
    out, current = [], []
    for tok in tokens:
        if tok in ("&&", ";", "|", "||", ">", "2>&1") or tok.startswith(">"):
            out.append(current)
            current = [] if tok in ("&&", ";", "|", "||") else ["<redirect>"]
        elif " " in tok and ("yarn-jax" in tok or "make " in tok):  # a quoted command (gcloud --command)
            for part in tok.split("&&"):
                out += _split(shlex.split(part))
        else:
            current.append(tok)
    out.append(current)
    return [c for c in out if c and c[0] != "<redirect>"]


def _verb(cmd: list[str]) -> tuple[str, list[str]] | None:
    """(verb, its arguments) of a yarn_jax command in any of its spellings, else None."""
    head = cmd[0].rsplit("/", 1)[-1]
    if head == "yarn-jax" and len(cmd) > 1:
        return cmd[1], cmd[2:]
    if head.startswith("python") and len(cmd) > 1:
        if cmd[1] in SCRIPTS:
            return SCRIPTS[cmd[1]], cmd[2:]
        if cmd[1] == "-m" and len(cmd) > 2 and cmd[2].startswith("yarn_jax"):
            if cmd[2] == "yarn_jax":
                return cmd[3], cmd[4:]
            return cmd[2].split(".")[1], cmd[3:]
    return None


def _help_flags(verb: str) -> set[str]:
    import importlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        importlib.import_module(VERBS[verb]).main(["--help"] if verb != "convert" else ["--help"])
    return set(re.findall(r"--[a-z][a-z0-9-]*", out.getvalue()))


def _settings_flags(cls) -> set[str]:
    flags = {f"--{n.replace('_', '-')}" for n in cls.model_fields}
    return flags | {f"--no-{f[2:]}" for f in flags} | {"--config"}


ALL_COMMANDS = [(page.name, cmd) for page in PAGES for block in _blocks(page, "bash") for cmd in _commands(block)]


def test_the_docs_have_commands_to_check():
    verbs = {v[0] for _, c in ALL_COMMANDS if (v := _verb(c))}
    assert {"eval", "train", "convert", "sweep", "aot"} <= verbs, verbs


@pytest.mark.parametrize("page, cmd", [c for c in ALL_COMMANDS if c[1][0] == "make" or _verb(c[1])],
                         ids=lambda x: x if isinstance(x, str) else " ".join(x)[:60])
def test_documented_command_is_valid(page, cmd):
    if cmd[0] == "make":
        targets = re.findall(r"^([a-z][a-z0-9_-]*):", (ROOT / "Makefile").read_text(), re.M)
        assert all(t in targets for t in cmd[1:] if not t.startswith("-")), (page, cmd)
        return
    verb, args = _verb(cmd)
    assert verb in VERBS, f"{page}: no verb {verb!r} in {cmd}"
    args = [a for a in args if a != "..."]  # an elision in the docs
    for a in args:
        if a.startswith(("configs/", "results/")) and not any(c in a for c in "*<{"):
            assert (ROOT / a).exists(), f"{page}: {a} does not exist ({cmd})"
    if verb in ("train", "eval"):
        cls = TrainConfig if verb == "train" else EvalConfig
        args = [re.sub(r"^\$\w+$", "1", a) for a in args]  # $RANK and the like
        if "--config" in args and not args[args.index("--config") + 1].startswith("configs/"):
            i = args.index("--config")  # the reader's own file (my.yaml): the flags are still checked
            args = args[:i] + args[i + 2:]
        cfg, _ = cli_config.parse_command(cls, [str(ROOT / a) if a.startswith("configs/") else a for a in args],
                                          prog=verb, description="", where=f"{page}")
        assert cfg is not None
        return
    allowed = _help_flags(verb) | ({f for c in (TrainConfig, EvalConfig) for f in _settings_flags(c)}
                                   if verb == "aot" else set())
    used = {a.split("=")[0] for a in args if a.startswith("--")}
    assert used <= allowed, f"{page}: {sorted(used - allowed)} are not flags of yarn-jax {verb} ({cmd})"


def test_python_quickstart_uses_what_exists():
    calls = set()
    for page in PAGES:
        for block in _blocks(page, "python"):
            compile(block, str(page), "exec")  # at least valid Python
            calls |= set(re.findall(r"\bmodel\.(\w+)\(", block))
    assert calls, "no Python examples found"
    assert calls <= set(dir(PretrainedModel)), calls - set(dir(PretrainedModel))


def test_front_page_is_a_front_page_and_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    assert text.splitlines()[3].startswith("make eval") and text.splitlines()[4].startswith("make test")
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_the_readme_python_quickstart_runs_as_written(assets, tmp_path):
    """The README's Python block executed as a user would paste it (a fresh interpreter, an empty directory),
    within 10 minutes (~30 s here), its perplexity a sane figure and its saved directory there."""
    import subprocess
    import sys

    (block,) = [b for b in _blocks(ROOT / "README.md", "python")]
    code = block + "\nprint('PPL', model.perplexity(hamlet, length=2048))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ppl = float(proc.stdout.split("PPL")[-1])
    assert 5 < ppl < 100  # SmolLM2 on Hamlet's first 2k tokens: ~25
    assert (tmp_path / "hf_out" / "config.json").exists()


def test_the_pods_summary_first_row_is_what_make_aot_compiles():
    """docs/pods.md's headline row (`make aot`: the config as it is on v5p-32) carries the compiler's record
    for exactly that command (results/aot/json), so the page cannot drift from what the command prints."""
    import json

    record = json.loads((ROOT / "results/aot/json/cp_7b_64k_v5p-32_seq4_dual_chunk.json").read_text())
    assert record["config"].endswith("configs/train/llama2_7b_yarn_s16.yaml") and record["topology"] == "v5p-32"
    cfg = TrainConfig(**cli_config.read_yaml(str(ROOT / "configs/train/llama2_7b_yarn_s16.yaml")))
    assert (cfg.mesh, cfg.mesh_axes, cfg.load_balance) == ("fsdp_sequence", {"sequence": 4}, "dual_chunk")
    make = (ROOT / "Makefile").read_text()
    assert "yarn-jax aot --config configs/train/llama2_7b_yarn_s16.yaml --topology v5p-32" in make
    p = record["programs"][0]
    want = (f"{p['memory']['total_bytes'] / 2**30:.1f} of 95 GiB",
            f"{p['modeled']['step_s']:.1f} s / {100 * p['modeled']['mfu']:.1f} %")
    row = next(x for x in (ROOT / "docs/pods.md").read_text().splitlines() if "(`make aot`" in x)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert (cells[2], cells[3]) == want, (cells, want)
