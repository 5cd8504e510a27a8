"""The command-line settings (yarn_jax/cli_config.py): --help shows the values that will run (each help's
default, typed back as the flag, gives the same settings), sections, --flag/--no-flag booleans, choices,
errors naming where a bad value came from, the short rope form in train, the eval defaults equal to
configs/eval/default.yaml, and the `yarn-jax` verbs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from yarn_jax import cli_config
from yarn_jax.errors import ConfigError
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"train": (TrainConfig, "configs/train/smollm2_yarn.yaml"), "eval": (EvalConfig, "configs/eval/default.yaml")}


def _help(cls, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli_config.parse_command(cls, [*argv, "--help"], prog="p", description="", where="w")
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("with_file", [False, True], ids=["defaults", "config_file"])
def test_help_defaults_are_the_values_that_run(command, with_file, capsys):
    """Every flag's '(default: X)': passing X as that flag leaves the settings unchanged — with and without a
    config file (then X is the file's value, and the help says it came from there)."""
    cls, path = COMMANDS[command]
    argv = ["--config", str(ROOT / path)] if with_file else []
    text = _help(cls, argv, capsys)
    runs = cli_config.parse_command(cls, argv, prog="p", description="", where="w")[0]
    file_values = yaml.safe_load((ROOT / path).read_text()) if with_file else {}
    checked = 0
    for name, field in cls.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        m = re.search(rf"{re.escape(flag)}(?:,| [A-Z_]| \{{)[^()]*?.*?\(default: (.*?)(, from [^)]*)?\)", text)
        assert m, f"{flag}: no default in --help"
        assert bool(m.group(2)) == (name in file_values), flag
        shown = m.group(1)
        if field.annotation is bool:
            typed = [flag if shown == "true" else f"--no-{flag[2:]}"]
        elif getattr(runs, name) is None:  # unset: "null", or the description's meaning of unset
            assert shown == "null" or shown in (field.description or ""), flag
            continue
        elif typing_is_list(field.annotation):
            typed = [flag, *shown.split()] if shown != "[]" else []
        else:
            typed = [flag, shown]
        again = cli_config.parse_command(cls, [*argv, *typed], prog="p", description="", where="w")[0]
        assert again == runs, f"{flag} {shown!r}"
        checked += 1
    assert checked >= len(cls.model_fields) - 8  # (nulls and empty lists aside)


def typing_is_list(annotation) -> bool:
    import typing

    return typing.get_origin(annotation) is list


def test_help_has_sections_choices_and_negatable_booleans(capsys):
    text = _help(TrainConfig, [], capsys)
    for section in ("model:", "method:", "data:", "optimization:", "run:", "parallelism:"):
        assert section in text, section
    assert text.index("optimization:") < text.index("parallelism:")  # mesh and process flags last
    assert "--lr-decay {constant,cosine}" in text and "--context-parallel {all_gather,ulysses,ring}" in text
    assert "--async-checkpoint, --no-async-checkpoint" in text
    cfg, _ = cli_config.parse_command(TrainConfig, ["--no-async-checkpoint"], prog="p", description="", where="w")
    assert cfg.async_checkpoint is False


def test_without_a_config_file_train_applies_no_recipe():
    cfg, _ = cli_config.parse_command(TrainConfig, ["--model", "some/dir"], prog="p", description="", where="w")
    assert cfg.rope is None  # the checkpoint's own rope
    assert (cfg.steps, cfg.warmup_steps, cfg.learning_rate, cfg.out) == (400, 20, 2e-5, "runs/train")


def test_train_takes_the_short_rope_form():
    short, _ = cli_config.parse_command(TrainConfig, ["--rope", "yarn:factor=4,original_max_position_embeddings=4096"],
                                        prog="p", description="", where="w")
    full, _ = cli_config.parse_command(TrainConfig, ["--rope", "{rope_type: yarn, factor: 4, "
                                                     "original_max_position_embeddings: 4096}"],
                                       prog="p", description="", where="w")
    assert short.rope == full.rope == {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 4096}
    assert cli_config.parse_command(TrainConfig, ["--rope", "default"], prog="p", description="",
                                    where="w")[0].rope is None
    with pytest.raises(ConfigError, match=r"rope \(from --rope\): .*expected key=value"):
        cli_config.parse_command(TrainConfig, ["--rope", "yarn:factor"], prog="p", description="", where="w")


def test_errors_name_where_the_bad_value_came_from(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: -1\nsteps: 3\n")
    with pytest.raises(ConfigError, match=rf"learning_rate \(from {re.escape(str(bad))}\)"):
        cli_config.parse_command(TrainConfig, ["--config", str(bad)], prog="p", description="", where="w")
    with pytest.raises(ConfigError, match=r"steps \(from --steps\)"):
        cli_config.parse_command(TrainConfig, ["--config", str(bad), "--learning-rate", "1e-4", "--steps", "0"],
                                 prog="p", description="", where="w")
    with pytest.raises(ConfigError, match=r"argument --protocol: invalid choice: 'chunked'"):
        cli_config.parse_command(EvalConfig, ["--protocol", "chunked"], prog="p", description="", where="w")


def test_the_config_file_names_what_it_set():
    _, note = cli_config.parse_command(TrainConfig, ["--config", str(ROOT / COMMANDS["train"][1]), "--steps", "2"],
                                       prog="yarn-jax train", description="", where="w")
    assert "configs/train/smollm2_yarn.yaml sets" in note and "warmup_steps=2" in note
    assert "steps=4" not in note  # overridden by the flag
    assert cli_config.parse_command(TrainConfig, [], prog="p", description="", where="w")[1] is None


def test_eval_defaults_are_the_default_config():
    assert cli_config.load_config(EvalConfig, str(ROOT / "configs/eval/default.yaml")) == EvalConfig()


def test_the_yarn_jax_command_lists_its_verbs_and_helps_without_side_effects(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "YARN_JAX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "yarn_jax", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and all(v in out.stdout for v in ("eval", "train", "convert", "sweep", "aot"))
    assets = subprocess.run([sys.executable, "-m", "yarn_jax", "assets", "--help"], capture_output=True, text=True,
                            env=env)
    assert assets.returncode == 0 and "usage:" in assets.stdout
    assert not (tmp_path / "cache").exists()  # --help fetched nothing
    wrong = subprocess.run([sys.executable, "-m", "yarn_jax", "evaluate"], capture_output=True, text=True, env=env)
    assert wrong.returncode == 2 and "no verb 'evaluate'" in wrong.stderr


def test_no_verb_is_a_usage_error_and_flags_are_never_abbreviated(tmp_path):
    """`yarn-jax` alone prints the verbs and exits 2; `--length` is not taken for `--lengths` by any command."""
    env = {"PATH": "/usr/bin:/bin", "YARN_JAX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    bare = subprocess.run([sys.executable, "-m", "yarn_jax"], capture_output=True, text=True, env=env)
    assert bare.returncode == 2 and "yarn-jax eval" in bare.stderr and not bare.stdout
    for argv in (["eval", "--length", "2048"], ["train", "--step", "3"], ["convert", "a", "b", "--verify-tok", "8"],
                 ["sweep", "x.yaml", "--se", "a=1"], ["demo", "--tok", "8"], ["aot", "--topo", "v5e-4"]):
        out = subprocess.run([sys.executable, "-m", "yarn_jax", *argv], capture_output=True, text=True, env=env)
        assert out.returncode == 2, (argv, out.stderr[-500:])
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and ("unrecognized arguments" in last or "required" in last), (argv, last)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("verb", ["convert", "sweep", "aot", "demo", "assets"])
def test_every_valued_flag_of_the_other_verbs_shows_its_default(verb, tmp_path):
    """Besides eval and train (above), each verb's --help gives every flag that takes a value its default
    (or says in its text what happens when it is unset)."""
    env = {"PATH": "/usr/bin:/bin", "YARN_JAX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "COLUMNS": "1000"}  # one line per flag
    out = subprocess.run([sys.executable, "-m", "yarn_jax", verb, "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-1000:]
    entries: list[str] = []  # one per flag: its line and the help text continued below it
    for line in out.stdout.splitlines():
        if re.match(r"^  -", line):
            entries.append(line)
        elif entries and line.startswith("    ") and not line.startswith("  -"):
            entries[-1] += " " + line.strip()
        else:
            entries.append("")
    valued = [x for x in entries if re.match(r"^  --[\w-]+ [A-Z{]", x)]
    assert [x for x in valued if "default" not in x] == []
    assert valued or verb == "assets"


def test_the_demo_shows_whole_rope_specs_and_no_loading_bars(assets, tmp_path):
    """`yarn-jax demo` in a pipe: the transformers reference loads without its progress bars in the report,
    and a long rope spec stands whole in the table (not cut to fit)."""
    spec = "yarn:factor=4,original_max_position_embeddings=8192,beta_fast=16"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "yarn_jax", "demo", "--tokens", "64", "--rope", spec],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Loading weights" not in out.stderr and "it/s]" not in out.stderr, out.stderr[-2000:]
    row = next(x for x in out.stdout.splitlines() if spec in x)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[0] == spec and float(cells[1]) == pytest.approx(float(cells[2]), rel=1e-3)
