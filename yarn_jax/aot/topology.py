"""Target hardware for ahead-of-time compilation: TPU slice names (MaxText's / gcloud's accelerator
types), their devices from libtpu without a TPU attached, and the published per-chip figures the
roofline uses.

`v4-N` / `v5p-N` count TensorCores (2 per chip, one megacore device per chip), `v5e-N` / `v6e-N` count
chips. Every figure in CHIPS is the vendor's public specification (`source`); everything computed from
them is a model, labelled as such.
"""

from __future__ import annotations

import dataclasses
import os

from yarn_jax.errors import ConfigError

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's published figures: HBM capacity, peak bf16 FLOP/s, HBM bandwidth, ICI bandwidth
    (bidirectional, per chip) and data-center network (DCN) bandwidth per chip, in bytes and seconds."""

    name: str
    hbm_bytes: float
    peak_bf16_flops: float
    hbm_bandwidth: float
    ici_bandwidth: float
    dcn_bandwidth: float
    source: str


CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1200e9, 1.1e15 / 4096, 25e9 / 8,
               "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s; ICI = the pod's "
               "1.1 PB/s all-reduce bandwidth / 4096 chips; DCN not published: v5e's 25 Gb/s per chip assumed"),
    "v5e": Chip("TPU v5e", 16e9, 197e12, 819e9, 400e9, 6.4e12 / 8 / 256,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, ICI 400 GB/s "
                "bidirectional per chip, DCN 6.4 Tb/s per 256-chip pod"),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9, 1200e9, 50e9 / 8,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, ICI 1200 GB/s "
                "bidirectional per chip, DCN 50 Gb/s per chip"),
    "v6e": Chip("TPU v6e", 32e9, 918e12, 1638e9, 800e9, 25e9 / 8,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM at 1638 GB/s, ICI 800 GB/s "
                "bidirectional per chip; DCN not published: v5e's 25 Gb/s per chip assumed"),
}

# chips -> (libtpu topology, wrap-around links): MaxText's accelerator_to_spec_map, in our words
_SHAPES_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice type: `name` as users write it (v5p-32), the libtpu topology string and chip count."""

    name: str
    generation: str
    topology: str
    chips: int

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def platform(self) -> str:
        return "tpu"

    def _libtpu_args(self, num_slices: int) -> dict:
        megacore = self.generation in ("v4", "v5p")
        full_torus = self.chips >= (64 if megacore else 256)
        wrap = (True, True, True) if megacore and full_torus else (
            (True, True, False) if full_torus else (False, self.chips == 128 and not megacore, False))
        prefix = {"v4": "v4", "v5p": "v5", "v5e": "v5e", "v6e": "v6e"}[self.generation]
        return dict(platform="tpu", topology_name=f"{prefix}:{self.topology}",
                    chip_config_name="megacore" if megacore else "default", chips_per_host_bounds=(2, 2, 1),
                    num_slices=num_slices, wrap=wrap)

    def devices(self, num_slices: int = 1) -> list:
        """The slice's (or slices') TPU devices, described by libtpu; no TPU needed."""
        # a compile-only client needs no exclusive hold on the (absent) chips: let several processes load libtpu
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        devices = _describe(f"topology {self.name} ({num_slices} slice(s)): libtpu could not describe it",
                            "; is libtpu installed (the tpu extra: pip install -e '.[tpu]')?",
                            **self._libtpu_args(num_slices))
        if len(devices) != self.chips * num_slices:
            raise ConfigError(f"topology {self.name}: libtpu described {len(devices)} devices, expected "
                              f"{self.chips * num_slices}")
        return devices


# An NVIDIA H100 SXM (80 GB HBM3) as XLA:GPU's compiler sees it (its TargetConfig text proto: the
# device's published properties) — for compiling without a GPU through the jax CUDA plugin.
_H100_TARGET = """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

CHIPS["h100"] = Chip("NVIDIA H100 SXM", 80e9, 989e12, 3350e9, 900e9, 400e9 / 8,
                     "nvidia.com H100 datasheet: 989 TFLOP/s dense bf16 (SXM), 80 GB HBM3 at 3.35 TB/s, NVLink "
                     "900 GB/s per GPU; DCN = one 400 Gb/s NIC per GPU (assumed)")


@dataclasses.dataclass(frozen=True)
class GpuTopology:
    """One host of N H100s (`h100-8`), compiled for through the jax CUDA plugin with no GPU attached
    (needs `jax[cuda12]`; docs/pods.md "Compiling for a GPU host")."""

    name: str
    chips: int
    generation: str = "h100"

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def platform(self) -> str:
        return "gpu"

    def devices(self, num_slices: int = 1) -> list:
        if num_slices != 1:
            raise ConfigError(f"topology {self.name}: one GPU host only (--num-slices 1)")
        import importlib.util

        if importlib.util.find_spec("jax_cuda12_plugin") is None:
            raise ConfigError(f"topology {self.name} needs the jax CUDA plugin: pip install \"jax[cuda12]==0.10.2\" "
                              "(several GB; no GPU needed)")
        # describe, never open, a GPU: without these the plugin fails at cuInit on a machine without one
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        return _describe(f"topology {self.name}: the CUDA plugin could not describe it", "", platform="cuda",
                         target_config=_H100_TARGET, topology=f"1x1x{self.chips}")


def _describe(failure: str, hint: str, **kwargs) -> list:
    """jax's description of a target's devices; a refusal becomes one line (`failure (reason)hint`)."""
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(**kwargs).devices)
    except Exception as e:  # plugin missing or refusing the shape
        raise ConfigError(f"{failure} ({' '.join(str(e).split())[:300]}){hint}") from None


def _table() -> dict:
    out = {}
    for gen, shapes, per_chip in (("v4", _SHAPES_3D, 2), ("v5p", _SHAPES_3D, 2), ("v5e", _SHAPES_2D, 1),
                                  ("v6e", _SHAPES_2D, 1)):
        for chips, shape in shapes.items():
            out[f"{gen}-{chips * per_chip}"] = Topology(f"{gen}-{chips * per_chip}", gen, shape, chips)
    for n in (1, 2, 4, 8):
        out[f"h100-{n}"] = GpuTopology(f"h100-{n}", n)
    return out


TOPOLOGIES = _table()


def topology(name: str) -> "Topology | GpuTopology":
    """A slice type by name (v4-8 ... v4-1024, v5p-8 ... v5p-1024, v5e-4 ... v5e-256, v6e-4 ... v6e-256,
    h100-1 ... h100-8)."""
    if name not in TOPOLOGIES:
        raise ConfigError(f"topology {name!r} is not known; choose from {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def ring_seconds(kind: str, nbytes: float, group: int, bandwidth: float) -> float:
    """Modeled time of one collective over `group` devices on links of `bandwidth` bytes/s per device
    (bandwidth-optimal ring/torus algorithms; latency ignored): all-gather / reduce-scatter move
    (n-1)/n of the full buffer, all-reduce twice that, all-to-all (n-1)/n, a permute the buffer once."""
    if group <= 1:
        return 0.0
    share = (group - 1) / group
    factor = {"all-gather": share, "reduce-scatter": share, "all-reduce": 2 * share, "all-to-all": share,
              "collective-permute": 1.0}[kind]
    return factor * nbytes / bandwidth


__all__ = ["Chip", "CHIPS", "Topology", "TOPOLOGIES", "topology", "ring_seconds", "GiB"]
