"""Ahead-of-time compilation with the real TPU compiler (libtpu's XLA:TPU and Mosaic), no TPU attached:
the project's train step and eval scorer compile for small slices with every mesh preset and with splash
lowered through Mosaic; the compiler's memory figures against hand counts; out-of-memory as a verdict;
multi-slice collectives on the axis put across slices. Plus the HLO reader and the FLOP counts against
hand-computed values."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from yarn_jax.aot import hlo, roofline
from yarn_jax.aot.models import PRESETS, model_config
from yarn_jax.aot.programs import eval_program, train_program
from yarn_jax.aot.report import compile_report
from yarn_jax.aot.topology import CHIPS, TOPOLOGIES, topology
from yarn_jax.config import LlamaConfig
from yarn_jax.errors import ConfigError
from yarn_jax.evaluation.config import EvalConfig
from yarn_jax.model import Llama, model_params
from yarn_jax.sharding.mesh import MeshConfig
from yarn_jax.training.config import TrainConfig

from conftest import tiny_hf_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(head_dim=64, **kw) -> LlamaConfig:
    d = tiny_hf_dict(heads=4, kv_heads=2, head_dim=head_dim, hidden=256, vocab=512, max_pos=4096, **kw)
    d["intermediate_size"] = 512
    return LlamaConfig.from_hf_dict(d)


def _train_cfg(**kw) -> TrainConfig:
    base = dict(seq_len=1024, batch_size=4, dtype="bfloat16", attention_backend="splash", remat="full")
    return TrainConfig(**(base | kw))


# ---- the slice table --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, chips, kind", [("v4-8", 4, "TPU v4"), ("v5p-32", 16, "TPU v5"),
                                               ("v5e-4", 4, "TPU v5 lite"), ("v5e-256", 256, "TPU v5 lite"),
                                               ("v4-1024", 512, "TPU v4"), ("v6e-64", 64, "TPU v6 lite")])
def test_topology_devices_from_libtpu(name, chips, kind):
    """v4/v5p names count TensorCores (2 per chip, one megacore device each), v5e/v6e count chips."""
    devices = topology(name).devices()
    assert len(devices) == chips and devices[0].platform == "tpu" and devices[0].device_kind == kind
    assert len(topology(name).devices(num_slices=2)) == 2 * chips


def test_gpu_host_needs_the_cuda_plugin():
    """h100-8 compiles through the jax CUDA plugin (verified by hand: results/aot/README.md); without
    it the command names the install, in one line."""
    import importlib.util

    if importlib.util.find_spec("jax_cuda12_plugin") is not None:
        assert len(topology("h100-8").devices()) == 8
        return
    with pytest.raises(ConfigError, match=r'needs the jax CUDA plugin: pip install "jax\[cuda12\]==0.10.2"'):
        topology("h100-8").devices()


def test_topology_names_refused_with_the_list():
    with pytest.raises(ConfigError, match="v5p-3.*not known.*v5p-32"):
        topology("v5p-3")
    assert set(CHIPS) == {t.generation for t in TOPOLOGIES.values()}


# ---- the real programs, compiled for TPU ------------------------------------------------------------------

@pytest.mark.parametrize("topo", ["v5e-4", "v4-8"])
@pytest.mark.parametrize("mesh, axes", [("dp", {}), ("fsdp", {}), ("fsdp_tensor", {}), ("fsdp_sequence", {})])
def test_train_step_and_scorer_compile_with_mosaic_splash(topo, mesh, axes):
    """The whole train step (fwd, bwd, clip, AdamW, donation) and the eval scorer per preset: splash is a
    Mosaic custom call (never Pallas interpret loops, though the host is a CPU), and the programs fit."""
    cfg = _tiny()
    tcfg = _train_cfg(mesh=mesh, mesh_axes=axes)
    t = topology(topo)
    sharder = tcfg.sharder(t.devices())
    r = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, remat="full", keep_hlo=True)
    assert 'custom_call_target="tpu_custom_call"' in r["hlo_text"]
    assert r["kernels"]["kernel_calls"] > 0 and r["kernels"]["interpreted_kernel_loops"] == 0
    assert r["memory"]["fits"] and r["kernels"]["loops_without_trip_count"] == 0
    if mesh == "fsdp_tensor":  # 2 KV heads on tensor = 2 split; nothing here had to stay whole
        assert not any("heads" in k for k in r["replicated_where_not_divisible"])
    # gradients of sharded parameters are reduced over the axes that split the batch
    if mesh != "dp":
        assert any(set(c["axes"]) & {"fsdp"} for c in r["collectives"])
    # and eval.py's scorer under the same mesh
    ecfg = EvalConfig(mesh=mesh, mesh_axes=axes, dtype="bfloat16", attention_backend="splash", lengths=[1024])
    ev = compile_report(eval_program(cfg, ecfg, sharder, 1024), cfg, sharder, t)
    assert ev["memory"]["fits"] and ev["kernels"]["kernel_calls"] > 0 and ev["kernels"]["interpreted_kernel_loops"] == 0


def test_head_gradient_reduced_once_per_micro_batch():
    """The chunked loss head's [E, V] float32 gradient is summed across devices once per micro-batch,
    not once per block of 256 positions (XLA's own partitioning all-reduced it in every block)."""
    cfg = _tiny()
    tcfg = _train_cfg(mesh="fsdp_sequence", seq_len=2048, batch_size=4, accum=2)  # 8 blocks per micro-batch
    t = topology("v5e-4")
    sharder = tcfg.sharder(t.devices())
    text = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, keep_hlo=True)["hlo_text"]
    comps, entry = hlo.parse_computations(text)
    mult, _ = hlo.multiplicities(comps, entry)
    head = f"f32[{cfg.hidden_size},{cfg.vocab_size}]"
    reductions = sum(mult[c] for c, body in comps.items() for i in body
                     if i.opcode.startswith(("all-reduce", "reduce-scatter")) and i.shape.startswith(head))
    assert reductions == tcfg.accum


def test_interpret_mode_is_what_the_target_decides():
    """The same program on CPU devices (the host) interprets the kernel: while loops, no Mosaic call."""
    cfg = _tiny()
    tcfg = _train_cfg(mesh="fsdp")
    sharder = tcfg.sharder(jax.devices()[:4])
    lowered = train_program(cfg, tcfg, sharder)
    text = lowered.jitted.lower(*lowered.args).compile().as_text()
    assert "tpu_custom_call" not in text
    assert hlo.collectives(text, sharder.mesh)[1]["interpreted_kernel_loops"] > 0


def test_remat_policies_change_the_compiled_program():
    """What the compiler keeps and recomputes per policy: `dots` saves the projections (more temporaries
    than `full`, and the layers' matmuls are not run again: about the FLOPs of `none`). Before the
    projections carried checkpoint names, `dots` compiled to exactly the program of `full`."""
    cfg = _tiny()
    t = topology("v5e-4")
    got = {}
    for remat in ("none", "full", "dots"):
        tcfg = _train_cfg(mesh="fsdp", seq_len=2048, remat=remat)
        sharder = tcfg.sharder(t.devices())
        r = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, remat=remat)
        got[remat] = (r["compiler_cost"]["flops_per_chip"], r["memory"]["temp_bytes"])
    assert got["full"][0] > 1.15 * got["dots"][0]  # full reruns the layer matmuls
    assert got["dots"][0] == pytest.approx(got["none"][0], rel=0.02)
    assert got["dots"][1] > got["full"][1]  # and dots keeps their outputs instead


def test_attention_remat_keeps_the_ring_forward_out_of_the_backward():
    """Ring attention (blockwise tiles, K/V passed with ppermute) under `attention` remat, compiled for
    v5e-4: the compiler's FLOPs drop by about one attention forward of the layers and the program holds
    fewer collective-permutes than under `full` (the backward does not run the ring's hops again)."""
    cfg = _tiny()
    t = topology("v5e-4")
    got = {}
    for remat in ("full", "attention"):
        tcfg = _train_cfg(mesh="fsdp_sequence", context_parallel="ring", load_balance="dual_chunk", remat=remat)
        sharder = tcfg.sharder(t.devices())
        r = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, remat=remat, keep_hlo=True)
        assert r["memory"]["fits"]
        got[remat] = (r["compiler_cost"]["flops_per_chip"], r["hlo_text"].count("collective-permute-start"),
                      r["analytic"]["hardware_flops_per_chip"])
    attention_fwd = roofline.flops(cfg, 1024, 4, train=False)["attention_flops"] / 4  # per chip
    assert got["full"][0] - got["attention"][0] == pytest.approx(attention_fwd, rel=0.1), (got, attention_fwd)
    assert got["attention"][1] < got["full"][1], got
    assert got["full"][2] - got["attention"][2] == pytest.approx(attention_fwd)  # and the model knows it


def test_smollm2_shaped_train_and_eval_compile_for_tpu():
    """SmolLM2-135M's real shapes (head_dim 64, 9 query / 3 KV heads) at 4k: train step and the eval
    scorer, sequence-parallel splash on v5e-4."""
    cfg, _ = model_config("smollm2", "smollm2")
    t = topology("v5e-4")
    tcfg = _train_cfg(mesh="fsdp_sequence", seq_len=4096, batch_size=2)
    sharder = tcfg.sharder(t.devices())
    train = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, remat="full")
    ecfg = EvalConfig(mesh="fsdp_sequence", dtype="bfloat16", lengths=[8192])
    ev = compile_report(eval_program(cfg, ecfg, sharder, 8192), cfg, sharder, t)
    for r in (train, ev):
        assert r["memory"]["fits"] and r["kernels"]["kernel_calls"] > 0
        assert r["kernels"]["interpreted_kernel_loops"] == 0
    # 30 layers: the layer loop's trip count multiplies the per-layer K/V all-gathers over the sequence axis
    gathers = [c for c in ev["collectives"] if c["kind"] == "all-gather" and c["axes"] == ["sequence"]]
    assert gathers and sum(c["count_per_step"] for c in gathers) >= 2 * 30


def test_memory_analysis_matches_hand_counted_parameter_bytes():
    """Eval scorer arguments are the float32 parameters (+ a few hundred bytes of ids and rope): the full
    count on every chip when replicated, 1/4 of the sharded matrices (norms stay whole) under fsdp = 4.
    Shapes are multiples of TPU tiles, so no padding: within 0.5 %."""
    cfg = _hand_countable()
    params = model_params(nnx.eval_shape(lambda: Llama(cfg)))
    total = sum(4 * math.prod(v.shape) for v in params.values())
    norms = sum(4 * math.prod(v.shape) for k, v in params.items() if "norm" in "/".join(k))
    t = topology("v5e-4")
    got = {}
    for mesh in ("dp", "fsdp"):
        ecfg = EvalConfig(mesh=mesh, dtype="bfloat16", lengths=[2048])
        sharder = ecfg.sharder(t.devices())
        got[mesh] = compile_report(eval_program(cfg, ecfg, sharder, 2048), cfg, sharder, t)["memory"]["argument_bytes"]
    assert got["dp"] == pytest.approx(total, rel=5e-3)
    assert got["fsdp"] == pytest.approx((total - norms) / 4 + norms, rel=5e-3)


def _hand_countable():
    return LlamaConfig.from_hf_dict(dict(vocab_size=8192, hidden_size=1024, intermediate_size=2048,
                                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                                         head_dim=128, max_position_embeddings=4096))


@pytest.mark.parametrize("preset, dcn", [("fsdp_sequence", {"fsdp": 2}), ("fsdp_sequence", {"data": 2})])
def test_two_slices_put_only_the_dcn_axis_across_slices(preset, dcn):
    """Two v5e-4 slices joined over DCN: the axis put across slices is the only one whose devices differ
    in slice, and the slices exchange what that axis needs — fsdp across slices all-gathers weights and
    reduces gradients over DCN; data across slices (replicas) only all-reduces gradients, and each
    slice's own collectives stay on its ICI."""
    cfg = _tiny()
    t = topology("v5e-4")
    axes = {"sequence": 2} | ({"data": 2} if "data" in dcn else {})
    tcfg = _train_cfg(mesh=preset, mesh_axes=axes, mesh_dcn=dcn)
    sharder = tcfg.sharder(t.devices(num_slices=2))
    axis = next(iter(dcn))
    slices = np.vectorize(lambda d: d.slice_index)(sharder.mesh.devices)
    for a, name in enumerate(sharder.mesh.axis_names):
        assert (np.diff(slices, axis=a) != 0).any() == (name == axis)
    r = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, remat="full")
    crossing = [c for c in r["collectives"] if c["crosses_slices"]]
    assert crossing and all(c["axes"] == [axis] and c["group_size"] == 2 for c in crossing)
    kinds = {c["kind"] for c in crossing}
    assert kinds == ({"all-reduce"} if axis == "data" else {"all-gather", "all-reduce"})
    assert all(c["group_size"] <= 4 for c in r["collectives"] if not c["crosses_slices"])
    assert r["modeled"]["dcn_s"] > 0


def test_slice_axes_checked():
    mc = MeshConfig(preset="fsdp_sequence", dcn={"fsdp": 2})
    with pytest.raises(ConfigError, match="one slice"):
        mc.dcn_sizes(mc.sizes(8), 1)
    with pytest.raises(ConfigError, match="spans 2 slices, the devices form 4"):
        mc.dcn_sizes(mc.sizes(16), 4)
    with pytest.raises(ValueError, match="sequence and tensor need the in-slice"):
        MeshConfig(dcn={"sequence": 2})
    # default: the outermost of data/fsdp the slice count divides
    assert MeshConfig(preset="fsdp").dcn_sizes({"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}, 2)["fsdp"] == 2


# ---- the command ------------------------------------------------------------------------------------------

def _aot(*args, cwd=ROOT):
    env = dict(os.environ)
    env.pop("JAX_PLATFORMS", None)  # the command keeps jax off a (non-existent) TPU itself
    return subprocess.run([sys.executable, "-m", "yarn_jax.aot", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_command_oversized_model_reports_oom_with_numbers(tmp_path):
    """An 8.6 GB float32 embedding replicated (mesh dp), with its gradient and two Adam moments, on a
    16 GB v5e chip: the compiler's out-of-memory is the verdict — exit 1, the numbers, no traceback,
    the JSON written."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(PRESETS["smollm2-135m"], vocab_size=2_097_152, hidden_size=1024,
                                      num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=8)))
    out = tmp_path / "r.json"
    p = _aot("--job", "train", "--topology", "v5e-4", "--model-config", str(config), "--mesh", "dp",
             "--seq-len", "256", "--batch-size", "4", "--remat", "none", "--out", str(out))
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "E0000" not in p.stderr
    assert "OOM by" in p.stdout and "GiB needed" in p.stdout
    r = json.loads(out.read_text())["programs"][0]
    assert not r["memory"]["fits"] and r["memory"]["over_by_bytes"] > 0
    assert r["memory"]["total_bytes"] > r["memory"]["capacity_bytes"] > 14 * 2 ** 30


def test_command_prints_verdict_flops_collectives_and_model(tmp_path):
    out = tmp_path / "r.json"
    p = _aot("--job", "eval", "--topology", "v4-8", "--model-config", "smollm2", "--mesh", "fsdp_sequence",
             "--dtype", "bfloat16", "--lengths", "4096", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "FITS" in p.stdout and "compiled kernel calls per step" in p.stdout and "modeled (not measured)" in p.stdout
    assert "all-gather" in p.stdout and p.stderr.count("\n") <= 3, p.stderr
    rec = json.loads(out.read_text())
    assert rec["topology"] == "v4-8" and rec["programs"][0]["mesh"]["sequence"] == 2
    # a file that is not a report is never overwritten
    other = tmp_path / "mine.json"
    other.write_text("{}")
    p = _aot("--job", "eval", "--topology", "v4-8", "--model-config", "smollm2", "--out", str(other))
    assert p.returncode == 2 and "not a yarn_jax.aot report" in p.stderr and other.read_text() == "{}"


def test_command_bad_settings_one_line():
    p = _aot("--job", "train", "--topology", "v9-8")
    assert p.returncode == 2 and p.stderr.strip().startswith("error: topology 'v9-8' is not known")
    p = _aot("--job", "train", "--topology", "v5e-4", "--model-config", "gpt-5")
    assert p.returncode == 2 and "neither a preset" in p.stderr
    p = _aot("--job", "train", "--topology", "v5e-4", "--splash-blocks", "{block_q: 100}")
    assert p.returncode == 2 and "block_q=100 must be a positive multiple of 128" in p.stderr


def test_model_config_from_preset_name_of_an_absent_path():
    cfg, source = model_config(None, "/data/llama-2-7b-hf")
    assert cfg.hidden_size == 4096 and "preset llama-2-7b" in source and "not on this machine" in source
    cfg, _ = model_config(None, "/nowhere/Llama-2-13b-chat")
    assert cfg.num_hidden_layers == 40
    with pytest.raises(ConfigError, match="matches no preset"):
        model_config(None, "/data/mistral-7b")


# ---- the HLO reader and the FLOP model, against hand-computed values ------------------------------------

_HLO = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.1 = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p.1), index=1
  %ag = f32[32]{0} all-gather(%x), channel_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %ar = f32[8]{0} all-reduce(%x), channel_id=2, replica_groups={{0,4},{1,5},{2,6},{3,7}}, to_apply=%add
  %tok = token[] after-all()
  %dcn = (f32[8]{0}, u32[], token[]) send(%ar, %tok), channel_id=4, is_host_transfer=true, frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %ar)
}

%b0 (x0: f32[8]) -> f32[8] {
  %x0 = f32[8]{0} parameter(0)
  ROOT %k0 = f32[8]{0} custom-call(%x0), custom_call_target="tpu_custom_call"
}

%b1 (x1: f32[8]) -> f32[8] {
  %x1 = f32[8]{0} parameter(0)
  ROOT %k1 = f32[8]{0} custom-call(%x1), custom_call_target="tpu_custom_call"
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %idx = s32[] constant(0)
  %sw = f32[8]{0} conditional(%idx, %a, %a), branch_computations={%b0, %b1}
  %w = (s32[], f32[8]{0}) while(%t0), condition=%cond, body=%body
  %rs = bf16[2]{0} reduce-scatter(%a), channel_id=3, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}
  ROOT %r = f32[8]{0} get-tuple-element(%w), index=1
}
"""


def _fake_mesh(slice_of):
    class Mesh:
        devices = np.array([type("D", (), {"slice_index": slice_of(i)})() for i in range(8)]).reshape(2, 4)
        axis_names = ("x", "y")

    return Mesh


def test_hlo_collectives_counted_per_step_with_their_axes():
    """A 12-trip loop around an all-gather over groups of 4 consecutive devices and an all-reduce over
    pairs {i, i+4}; one reduce-scatter outside in the mesh spelling. On a (2, 4) mesh of axes (x, y):
    consecutive ids vary y, pairs {i, i+4} vary x."""
    stats, totals = hlo.collectives(_HLO, _fake_mesh(lambda i: 0))
    by = {s.kind: s for s in stats if not s.crosses_slices}
    assert by["all-gather"].count == 12 and by["all-gather"].bytes == 12 * 32 * 4
    assert by["all-gather"].axes == ("y",) and by["all-gather"].group_size == 4
    assert by["all-reduce"].axes == ("x",) and by["all-reduce"].count == 12 and by["all-reduce"].group_size == 2
    assert by["reduce-scatter"].count == 1 and by["reduce-scatter"].axes == ("y",)
    assert by["reduce-scatter"].bytes == 8 * 4  # the full operand, not the scattered result
    assert totals["loops_without_trip_count"] == 0
    assert totals["kernel_calls"] == 1  # a switch runs one of its two kernel branches per device


def test_hlo_collectives_between_slices():
    """Two slices along x (a per-slice program: groups use slice-local ids 0..3, all along y); the
    MegaScale send in the loop is a DCN all-reduce over x, 12 per step."""
    stats, _ = hlo.collectives(_HLO, _fake_mesh(lambda i: i // 4))
    dcn = [s for s in stats if s.crosses_slices]
    assert len(dcn) == 1 and dcn[0].kind == "all-reduce" and dcn[0].axes == ("x",) and dcn[0].count == 12
    assert dcn[0].bytes == 12 * 8 * 4 and dcn[0].group_size == 2


def test_analytic_flops_hand_counted():
    """Per token: 2 FLOPs per matmul parameter; per layer and sequence: causal attention 2 T^2 H D;
    training x3, full remat adds one forward of the layers."""
    cfg = _tiny(layers=2)
    e, h, k, d, f, v = 256, 4, 2, 64, 512, 512
    layer = e * h * d + 2 * e * k * d + h * d * e + 3 * e * f
    # the same count from the model's own parameters (minus norms and the input embedding)
    params = model_params(nnx.eval_shape(lambda: Llama(cfg)))
    counted = sum(math.prod(x.shape) for p, x in params.items()
                  if "norm" not in "/".join(p) and p[0] != "embed_tokens")
    assert counted == 2 * layer + e * v == sum(roofline.matmul_params(cfg))
    t, n = 1024, 3
    fl = roofline.flops(cfg, t, n, train=True, remat="full")
    attn = 2 * 2 * h * d * t * t * n
    assert fl["model_flops"] == 3 * (2 * (2 * layer + e * v) * t * n + attn)
    assert fl["hardware_flops"] == fl["model_flops"] + 2 * 2 * layer * t * n + attn
    assert roofline.flops(cfg, t, n, train=False)["model_flops"] == 2 * (2 * layer + e * v) * t * n + attn


def test_commands_keep_jax_off_an_absent_tpu():
    """libtpu is installed (for these compiles) but no TPU is attached: a command's jax starts on the CPU,
    single-process, without libtpu's initialisation errors (jax alone tries the TPU first and prints them)."""
    import importlib.util

    assert importlib.util.find_spec("libtpu") is not None  # the test setup installs it
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = ("from yarn_jax.platforms import skip_absent_tpu; skip_absent_tpu(); import jax; "
            "from yarn_jax.sharding.distributed import initialize; print(initialize(), jax.devices())")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # and `--distributed auto` does not take an installed libtpu for a TPU pod (it did: eval.py then tried
    # jax.distributed.initialize on a CPU machine)
    assert p.returncode == 0 and p.stdout.startswith("False") and "CpuDevice" in p.stdout, p.stderr
    assert "TPU_WORKER_HOSTNAMES" not in p.stderr and "E0000" not in p.stderr, p.stderr


def test_windowed_layers_compile_with_mosaic_local_masks():
    """OLMo 3's pattern — sliding-window layers (splash LocalMask) and full ones (CausalMask), picked per layer
    by lax.switch inside the scan, with a rope per layer type — compiles for TPU under a sequence-sharded
    mesh: both masks' kernels are Mosaic custom calls, none interpreted, and the program fits."""
    import dataclasses

    from yarn_jax.rope import parse_rope_config

    base = _tiny(layers=2)
    sliding = dataclasses.replace(base, sliding_window=256, layer_types=("sliding_attention", "full_attention"),
                                  sliding_rope=parse_rope_config(None, head_dim=64, max_position_embeddings=4096,
                                                                 rope_theta=5000.0))
    t = topology("v5e-4")
    tcfg = _train_cfg(mesh="fsdp_sequence", seq_len=2048)
    sharder = tcfg.sharder(t.devices())
    reports = {}
    for name, cfg in (("full", base), ("sliding", sliding)):
        r = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, remat="full", keep_hlo=True)
        assert r["kernels"]["kernel_calls"] > 0 and r["kernels"]["interpreted_kernel_loops"] == 0, name
        assert r["memory"]["fits"], name
        reports[name] = r
    # the program holds the LocalMask kernels besides the causal ones (a branch each: per step, as many run)
    kernels = {name: r["hlo_text"].count('custom_call_target="tpu_custom_call"') for name, r in reports.items()}
    assert kernels["sliding"] > kernels["full"], kernels


@pytest.mark.parametrize("context_parallel, load_balance, collective", [
    ("ulysses", "dual_chunk", "all-to-all"), ("ring", "dual_chunk", "collective-permute"),
    ("all_gather", "striped", "all-gather")])
def test_context_parallel_modes_compile_for_tpu(context_parallel, load_balance, collective):
    """The train step with Ulysses (splash inside, whole sequences), ring attention (blockwise tiles, K/V
    passed with ppermute) or all-gather over stripes (splash evaluating its mask at each device's strided
    positions, Mosaic) on a load-balanced sequence axis compiles with XLA:TPU for v5e-4 and fits; the mode's
    collective is in the program."""
    cfg = _tiny()
    t = topology("v5e-4")
    tcfg = _train_cfg(mesh="fsdp_sequence", context_parallel=context_parallel, load_balance=load_balance)
    sharder = tcfg.sharder(t.devices())
    assert sharder.context_parallel == context_parallel and sharder.sequence_order(1024) is not None
    r = compile_report(train_program(cfg, tcfg, sharder), cfg, sharder, t, remat="full", keep_hlo=True)
    assert r["memory"]["fits"] and r["kernels"]["interpreted_kernel_loops"] == 0
    assert collective in r["hlo_text"]
    assert r["modeled"]["attention_imbalance"] == pytest.approx(1.0, abs=1e-3)

