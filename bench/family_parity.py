"""Max |Δlogit| of every family against transformers' own class, per rope and attention backend.

The tests assert a bound (1e-4); this prints the measured figures the README and notes quote. The models
are the tests' tiny random ones (tests/test_families.py: built and saved by transformers, float32, L0 = 32,
windows of 24 keys), at T = 20 and T = 80 (2.5 × L0). splash and gpu_flash run in Pallas interpret mode
(no TPU/GPU here); gpu_flash on head_dim-16 variants (its kernel needs a power of two; not Phi-3, whose
test longrope factors fit head_dim 12).

    python bench/family_parity.py [--out bench/results/family_parity.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from report import report  # noqa: E402
from test_families import FAMILY_CASES, YARN, _families, hf_model, logits  # noqa: E402

import yarn_jax  # noqa: E402

BACKENDS = ("reference", "blockwise", "splash", "gpu_flash")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "family_parity.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILY_CASES:
            for rope_name, rope in (("default", None), ("yarn", YARN)):
                row = {"family": family, "rope": "longrope" if family.startswith("phi3") and rope else rope_name}
                for backend in BACKENDS:
                    gpu = backend == "gpu_flash"
                    if gpu and family.startswith("phi3"):  # head_dim 12 (its longrope factors fit 3 pairs)
                        row[backend] = None
                        continue
                    pow2 = {"hidden_size": 64, **({"head_dim": 16} if "head_dim" in _families()[family][2] else {})}
                    model, path = hf_model(family, rope, Path(tmp) / f"{family}-{rope_name}-{gpu}",
                                           **(pow2 if gpu else {}))
                    ours = yarn_jax.from_pretrained(path, attention_backend=backend)
                    errs = []
                    for length in (20, 80):
                        ids = np.random.default_rng(length).integers(0, 97, (2, length))
                        errs.append(float(np.abs(np.asarray(ours.logits(ids)) - logits(model, ids)).max()))
                    row[backend] = max(errs)
                print(row, flush=True)
                rows.append(row)
    table = [{k: ("—" if v is None else f"{v:.1e}" if isinstance(v, float) else v) for k, v in r.items()}
             for r in rows]
    report(args.out, rows, table, [("family", "{family}"), ("rope", "{rope}")] + [(b, f"{{{b}}}") for b in BACKENDS])


if __name__ == "__main__":
    main()
