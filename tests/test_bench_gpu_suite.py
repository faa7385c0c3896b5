"""bench/gpu_suite.sh: its CPU dry run passes and names what only CUDA runs; its targets live in one place."""

from __future__ import annotations

import os
import re
import subprocess


def test_tiny_dry_run_passes_and_lists_the_cuda_only_branches(root):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(["bash", "bench/gpu_suite.sh", "--tiny"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.startswith("# interpreter: ")
    assert out.count("not run without CUDA:") == 2 and "varlen_attn" in out
    assert "bf16 autocast: same-batch losses" in out  # the GPU's precision, on CPU
    assert "tiny packed: out of memory, retrying with 1024 tokens per step" in out  # the retry ran


def test_the_targets_are_written_only_in_the_scripts(root):
    """Numbers like '>= 15,000' or '≥ 500' appear in neither the suite's header nor the docs."""
    target = re.compile(r"(>=|≥)\s*[\d,]+\s*(tok|users)")
    for path in ["bench/gpu_suite.sh", "docs/benchmarks.md", "docs/gpus.md", "README.md"]:
        assert not target.search((root / path).read_text(encoding="utf-8")), path
    assert "TARGETS = {" in (root / "bench/train_gpu.py").read_text()
    assert "TARGETS = {" in (root / "bench/eval_gpu.py").read_text()
