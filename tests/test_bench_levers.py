"""bench/decoding_levers.py: each variant changes exactly what its name says."""

from __future__ import annotations

import importlib.util

from genrec.config.params import load_params


def load_bench(root):
    spec = importlib.util.spec_from_file_location("decoding_levers", root / "bench" / "decoding_levers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_use_the_assistant_only_when_named(root):
    bench = load_bench(root)
    params = load_params(root / "params.yaml", [])
    assert params.eval.assistant_weight > 0  # the assisted stage's default must not leak into plain variants
    plain = bench.variant_params(params, "hf")
    assert plain.eval.assistant_weight == 0.0 and plain.eval.split == "valid"
    assert plain.eval.ghost_threshold is None and params.eval.ghost_threshold is not None
    ghost = bench.variant_params(params, "ghost-0.5")
    assert ghost.eval.ghost_threshold == 0.5 and ghost.eval.assistant_weight == 0.0
    both = bench.variant_params(params, "ghost-0.9+sasrec-3.0")
    assert both.eval.ghost_threshold == 0.9 and both.eval.assistant_weight == 3.0
    assert bench.variant_params(params, "lp-0").eval.length_penalty == 0.0
