#!/usr/bin/env bash
# One prepared GPU benchmark (sized for 8 minutes on one GPU: each script is cut at 300 s; no network): what the pipeline runs, timed
# beside the paper's reference regime, at the SmolLM2-135M and LLaMA-7B shapes with random weights.
#
#   bash bench/gpu_suite.sh            # on the GPU machine, from the repository root
#   bash bench/gpu_suite.sh --tiny     # CPU dry run (2-layer model, timings meaningless): every branch that runs
#                                      # without CUDA, in the GPU's precision; it lists the CUDA-only ones
#
# Interpreter: the repository's .venv/bin/python when it exists, else $PYTHON, else python3 (printed first).
#
# Training (bench/train_gpu.py): `reference` is GenRec's regime (micro-batch 4 padded to its longest sequence,
# logits on every position); `packed-sdpa` is what `genrec train` runs with train.format: sequence (documents
# packed with position ids restarting per document, no attention mask, so transformers builds the
# block-diagonal mask; LM head only where there is a loss); `packed` adds variable-length flash attention
# where torch has it. Evaluation (bench/eval_gpu.py): genrec's constrained batched beam search
# (genrec.decoding.beam_search.ranked_beams, what `genrec evaluate` runs with eval.device auto on a GPU) against HF
# `generate` one user at a time with 10 beams. Both scripts check their losses/lists before timing.
# Needs torch, transformers, peft (training) and this repository's src/; no trl, no data, no downloads.
# Targets: each script's TARGETS (bench/train_gpu.py: tok/s, bench/eval_gpu.py: users/s, on one H200), printed
# beside each measured row; they are written nowhere else.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY="${PYTHON:-python3}"
fi
echo "# interpreter: $PY ($("$PY" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")' 2>&1 | tail -1))"
if [ "${1:-}" = "--tiny" ]; then
  TRAIN=(--tiny --steps 2 --warmup 1) EVAL=(--tiny) LIMIT=600
else
  TRAIN=(--steps 8 --warmup 2 --regimes reference,packed,packed-sdpa) EVAL=(--batch-sizes 64,128 --users 512) LIMIT=300
fi
status=0
echo "## training: non-padding tokens/s (bench/train_gpu.py ${TRAIN[*]})"
timeout "$LIMIT" "$PY" bench/train_gpu.py "${TRAIN[@]}" || { echo "train_gpu.py: exit $?"; status=1; }
echo
echo "## evaluation: users/s (bench/eval_gpu.py ${EVAL[*]})"
timeout "$LIMIT" "$PY" bench/eval_gpu.py "${EVAL[@]}" || { echo "eval_gpu.py: exit $?"; status=1; }
exit $status
