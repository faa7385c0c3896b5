#!/usr/bin/env bash
# One prepared GPU benchmark (sized for 8 minutes on one GPU: each script is cut at 300 s; no network): what the pipeline runs, timed
# beside the paper's reference regime, at the SmolLM2-135M and LLaMA-7B shapes with random weights.
#
#   bash bench/gpu_suite.sh            # on the GPU machine, from the repository root
#   bash bench/gpu_suite.sh --tiny     # CPU smoke run: the same code paths on a 2-layer model (timings meaningless)
#
# Training (bench/train_gpu.py): `reference` is GenRec's regime (micro-batch 4 padded to its longest sequence,
# logits on every position); `packed-sdpa` is what `genrec train` runs with train.format: sequence (documents
# packed with position ids restarting per document, no attention mask, so transformers builds the
# block-diagonal mask; LM head only where there is a loss); `packed` adds variable-length flash attention
# where torch has it. Evaluation (bench/eval_gpu.py): genrec's constrained batched beam search
# (genrec.decoding.beam_search.ranked_beams, what `genrec evaluate` runs with eval.device auto on a GPU) against HF
# `generate` one user at a time with 10 beams. Both scripts check their losses/lists before timing.
# Needs torch, transformers, peft (training) and this repository's src/; no trl, no data, no downloads.
# Targets on one H200: training >= 15,000 tok/s at the 7B shape and >= 150,000 at 135M; constrained evaluation
# >= 100 users/s at 7B and >= 500 at 135M.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
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
