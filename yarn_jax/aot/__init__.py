"""Ahead-of-time compilation for TPU pods from any machine: the project's real train step and eval
scorer, compiled by libtpu's XLA:TPU and Mosaic for a named slice (`v5p-32`, `v5e-256`, ...; several
slices over DCN), with no TPU attached. `yarn-jax aot --config CONFIG --topology NAME`.

topology (names, devices, published chip figures) -> programs (abstract inputs on the mesh) -> report
(compile; memory verdict, FLOPs, collectives from hlo; modeled step time from roofline).
"""
