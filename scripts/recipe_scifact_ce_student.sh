#!/usr/bin/env bash
# The README's "cross-encoder student" table on SciFact: 2-layer students cut from the teacher,
# trained on the teacher's cached scores of the train queries' BM25 top 30, differing in which
# teacher layers they keep (--layer-choice), in a qrels term added to the loss, in epochs, in the
# tokens they read (--max-length), and in $TITLES or all title queries (a document's title as the query
# for it, scored by the teacher over its BM25 top $TITLE_K) learnt from beside the train queries, and
# in rounds of one epoch over all titles ($ROUNDS), each starting from the one before.
# All $VARIANTS rerank the valid split (the 70 held-out train queries) over BM25's top 100; the
# $TEST ones also rerank the test split's top 100 (to report, paired against $TEST_BASELINE) and
# the train queries' top 30 (in-sample).
# Needs a teacher ($TEACHER) and its test scores from a finished `distill evaluate` ($TEACHER_EVAL,
# ranker $TEACHER_RANKER; by default those of scripts/recipe_scifact_teacher.sh), passed on as a run file.
# On 2 CPU cores: 24 min of teacher scoring for the train queries, 26 min (one core) for 1,500 titles
# and 22 min for the other 3,683; 35 min of training per 186 steps (two students at a time, one core
# each; half that at --max-length 128), 66 min for the 741 steps over all titles (both cores), 3 min
# each on valid, 11 min each on test, 8 min each in-sample. On one H100 an epoch over all titles takes
# about 100 s (bf16), and evaluating five rounds on valid and test about 4 min.
#
#   DATA=../shared/data/scifact bash scripts/recipe_scifact_ce_student.sh
set -euo pipefail
SOURCE=${DATA:-../shared/data/scifact}
OUT=${OUT:-bench_out/scifact}
TEACHER=${TEACHER:-bench_out/teacher_objective/listnet}
TEACHER_EVAL=${TEACHER_EVAL:-bench_out/teacher_objective/eval}
TEACHER_RANKER=${TEACHER_RANKER:-teacher_listnet}
EXP=${EXP:-bench_out/ce_student}
ROUNDS="spread_titles_all_2nd spread_titles_all_3rd spread_titles_all_4th spread_titles_all_5th spread_titles_all_6th"
VARIANTS=${VARIANTS:-"spread first spread_listnet spread_e3 spread_titles spread_titles_len128 spread_titles_all $ROUNDS"}
TEST=${TEST:-"spread spread_e3 spread_titles spread_titles_len128 spread_titles_all $ROUNDS"}
TEST_BASELINE=${TEST_BASELINE:-spread_e3}  # the paired test on test: against the same steps without titles
TITLES=${TITLES:-1500}
TITLE_K=${TITLE_K:-10}
DATA=$OUT/data
TITLED=${OUT}_titles$TITLES  # the same split view plus the title queries (split train_titles)
ALL_TITLES=$(wc -l < "$SOURCE/corpus.jsonl")  # every document's title
ALL_TITLED=${OUT}_titles$ALL_TITLES
mkdir -p "$EXP" "$OUT/runs" "$TITLED/runs" "$ALL_TITLED/runs"

# the pipeline's split view and candidates (as scripts/bench_students.py), the teacher's scores in a cache of its own
distill split-view --data "$SOURCE" --out "$DATA"
for split_k in train:30 valid:100 test:100; do
  split=${split_k%:*}
  [ -f "$OUT/runs/$split.trec" ] || distill candidates --data "$DATA" --split "$split" --k "${split_k#*:}" \
    --out "$OUT/runs/$split.trec"
done
distill score-teacher --teacher "$TEACHER" --data "$DATA" --split train --run "$OUT/runs/train.trec" \
  --cache "$EXP/cache" --max-length 256
# the train queries' top $TITLE_K are in the cache already, and the $TITLES titles' pairs are among all titles':
# only pairs not scored yet are scored
for view in "$TITLED:$TITLES" "$ALL_TITLED:$ALL_TITLES"; do
  dir=${view%:*}
  distill split-view --data "$SOURCE" --out "$dir/data" --title-queries "${view##*:}"
  [ -f "$dir/runs/train_titles.trec" ] || distill candidates --data "$dir/data" --split train_titles \
    --k "$TITLE_K" --out "$dir/runs/train_titles.trec"
  distill score-teacher --teacher "$TEACHER" --data "$dir/data" --split train_titles \
    --run "$dir/runs/train_titles.trec" --cache "$EXP/cache" --max-length 256
done

STUDENT=(train-student --student cross-encoder --cache "$EXP/cache" --loss MarginMSE --negatives 7)
CUT="--init-from-teacher --layers 2 --teacher $TEACHER --seed 42 --lr 2e-4"
TRAIN="$CUT --data $DATA --split train --max-length 256"
WITH_TITLES="$CUT --data $TITLED/data --split train_titles --epochs 1"
ALL_TITLES_EPOCH="--data $ALL_TITLED/data --split train_titles --epochs 1 --checkpoint-steps 50 --max-length 256"
# spread_e3 and spread_titles take the same number of steps (739 queries x 3 epochs, 739 + 1,500 x 1);
# spread_titles_len128 reads half the tokens of each (query, document) pair
declare -A ARGS=(
  [spread]="$TRAIN --layer-choice spread --epochs 2"
  [first]="$TRAIN --layer-choice first --epochs 2"
  [spread_listnet]="$TRAIN --layer-choice spread --epochs 2 --hard-label-weight 1 --hard-label-kind listnet"
  [spread_e3]="$TRAIN --layer-choice spread --epochs 3"
  [spread_titles]="$WITH_TITLES --layer-choice spread --max-length 256"
  [spread_titles_len128]="$WITH_TITLES --layer-choice spread --max-length 128"
  [spread_titles_all]="$CUT $ALL_TITLES_EPOCH --layer-choice spread"
)
# $ROUNDS: one more epoch over all titles each, starting from the one before (--init), with fresh negatives
# (the next seed) and half the peak lr
prev=spread_titles_all seed=43
for name in $ROUNDS; do
  ARGS[$name]="--init $EXP/$prev --seed $seed --lr 1e-4 $ALL_TITLES_EPOCH"
  prev=$name seed=$((seed + 1))
done
VALID=(--ranker bm25=bm25)
for name in $VARIANTS; do
  resume=()  # a student stopped mid-training continues from its last checkpoint
  if compgen -G "$EXP/$name.checkpoints/checkpoint-*" > /dev/null; then resume=(--resume); fi
  # shellcheck disable=SC2086  # ARGS values are word lists
  [ -d "$EXP/$name" ] || distill "${STUDENT[@]}" ${ARGS[$name]} "${resume[@]}" --out "$EXP/$name"
  VALID+=(--ranker "$name=$EXP/$name")
done
distill evaluate --data "$DATA" --split valid --run "$OUT/runs/valid.trec" --k 100 "${VALID[@]}" \
  --baseline bm25 --out "$EXP/eval_valid"

python "$(dirname "$0")/export_runs.py" "$TEACHER_EVAL" "$EXP/test_runs" "$TEACHER_RANKER"
TESTED=(--ranker bm25=bm25)
for name in $TEST; do TESTED+=(--ranker "$name=$EXP/$name"); done
distill evaluate --data "$DATA" --split test --run "$OUT/runs/test.trec" --k 100 "${TESTED[@]}" \
  --ranker teacher="$EXP/test_runs/$TEACHER_RANKER.trec" --baseline "$TEST_BASELINE" --teacher teacher \
  --out "$EXP/eval_test"
distill evaluate --data "$DATA" --split train --run "$OUT/runs/train.trec" --k 30 "${TESTED[@]}" \
  --baseline bm25 --out "$EXP/eval_train"
