"""Mesh construction from config: presets, -1 auto-fill, errors naming the problem, Auto axis types."""

import jax
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from yarn_jax.errors import ConfigError
from yarn_jax.sharding import MeshConfig, Sharder, make_mesh


@pytest.mark.parametrize("preset, expected", [
    ("dp", {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1}),
    ("fsdp", {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}),
    ("fsdp_tensor", {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 2}),
    ("fsdp_sequence", {"data": 1, "fsdp": 4, "sequence": 2, "tensor": 1}),
])
def test_presets_fill_the_devices(preset, expected):
    assert MeshConfig(preset=preset).sizes(8) == expected
    mesh = make_mesh(MeshConfig(preset=preset))
    assert dict(mesh.shape) == expected
    assert all(t == AxisType.Auto for t in mesh.axis_types)  # not jax.make_mesh's Explicit default


def test_axes_override_the_preset():
    assert MeshConfig(preset="fsdp", axes={"tensor": 4}).sizes(8) == {"data": 1, "fsdp": 2, "sequence": 1,
                                                                       "tensor": 4}
    # an override's -1 replaces the preset's
    assert MeshConfig(preset="fsdp", axes={"data": -1, "fsdp": 2}).sizes(8)["data"] == 4
    assert MeshConfig(axes={"data": 2, "sequence": 2, "tensor": 2}).sizes(8)["fsdp"] == 1


@pytest.mark.parametrize("axes, message", [
    ({"tensor": 3}, "not divisible"),
    ({"fsdp": 2, "tensor": 2}, "needs 4 devices"),
    ({"pipeline": 2}, "unknown mesh axes"),
    ({"fsdp": -1, "data": -1}, "at most one axis"),
])
def test_bad_meshes_fail_naming_the_problem(axes, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        MeshConfig(preset="fsdp" if "tensor" in axes else "none", axes=axes).sizes(8)


def test_rules_map_logical_names_and_fall_back_when_not_divisible():
    sharder = Sharder(make_mesh(MeshConfig(preset="fsdp_tensor")))
    assert sharder.spec(("layers", "embed", "heads", "head_dim"), (2, 64, 4, 16)) == P(None, "fsdp", "tensor", None)
    assert sharder.spec(("batch", "length", None), (8, 32, 64)) == P("fsdp", None, None)  # data=1 dropped
    # SmolLM2's 3 KV heads do not split over tensor=2: replicated there, and recorded
    assert sharder.spec(("embed", "kv_heads", "head_dim"), (576, 3, 64), what="k_proj") == P("fsdp", None, None)
    assert "k_proj" in sharder.fallbacks
    # a mesh axis is used once per array
    both = Sharder(make_mesh(MeshConfig(axes={"data": 2, "fsdp": 4})), rules=(("batch", ("data", "fsdp")),
                                                                               ("embed", "fsdp")))
    assert both.spec(("batch", "embed"), (8, 64)) == P(("data", "fsdp"), None)
    with pytest.raises(KeyError, match="no sharding rule for logical axis 'mystery'"):
        sharder.spec(("mystery",), (4,))


def test_eight_virtual_devices():
    assert jax.device_count() == 8


def test_rules_from_config_override_the_defaults():
    sharder = MeshConfig(preset="fsdp_tensor", rules={"mlp": None, "embed": ["fsdp"]}).sharder()
    assert sharder.spec(("embed", "mlp"), (64, 80)) == P("fsdp", None)
    assert sharder.spec(("heads",), (4,)) == P("tensor")  # untouched rules stay
    with pytest.raises(ValueError, match="no logical axis"):
        MeshConfig(rules={"widths": "fsdp"})
    with pytest.raises(ValueError, match="mesh axes must be among"):
        MeshConfig(rules={"embed": ["fsdp", "pipeline"]})
