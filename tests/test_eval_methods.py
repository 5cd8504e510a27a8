from __future__ import annotations

import pytest

from yarn_jax.errors import ConfigError
from yarn_jax.evaluation.methods import parse_method, parse_methods


def test_named_methods_at_a_scale():
    assert parse_method("yarn", 2, 8192).rope == {"rope_type": "yarn", "factor": 2.0,
                                                  "original_max_position_embeddings": 8192}
    assert parse_method("yarn", 2, 8192).label == "yarn x2"
    assert parse_method("linear", 4, 8192).rope == {"rope_type": "linear", "factor": 4.0}
    assert parse_method("ntk", 2.5, 4096).label == "ntk x2.5"
    assert parse_method("none", 8, 8192).rope is None


def test_full_specs_are_used_as_given():
    m = parse_method("yarn:factor=4,original_max_position_embeddings=4096,beta_fast=16", 2, 8192)
    assert m.rope == {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 4096, "beta_fast": 16}
    assert m.label == "yarn x4 (beta_fast=16)"
    j = parse_method('{"rope_type": "linear", "factor": 3}', 2, 8192)
    assert j.rope == {"rope_type": "linear", "factor": 3}


def test_named_methods_with_parameters_are_scaled_like_the_bare_name():
    """`yarn:temperature=0.07` (no factor): every scale, from L0, the parameter added and in the label."""
    ms = parse_methods(["yarn:temperature=0.07", "dynamic_yarn:temperature=0,beta_fast=16"], [2, 4], 8192)
    assert [m.label for m in ms] == ["yarn x2 (temperature=0.07)", "yarn x4 (temperature=0.07)",
                                     "dynamic_yarn x2 (beta_fast=16, temperature=0)",
                                     "dynamic_yarn x4 (beta_fast=16, temperature=0)"]
    assert ms[1].rope == {"rope_type": "yarn", "temperature": 0.07, "factor": 4.0,
                          "original_max_position_embeddings": 8192}
    with pytest.raises(ConfigError, match="scale"):
        parse_method("yarn:temperature=0.07", 0.5, 8192)


def test_grid_expands_named_methods_over_scales_once_for_the_rest():
    ms = parse_methods(["none", "yarn", "linear:factor=2"], [2, 4], 8192)
    assert [m.label for m in ms] == ["none", "yarn x2", "yarn x4", "linear x2"]


def test_bad_specs_name_the_problem():
    with pytest.raises(ConfigError, match="key=value"):
        parse_method("yarn:factor", 2, 8192)
    with pytest.raises(ConfigError, match="scale"):
        parse_method("yarn", 0.5, 8192)
