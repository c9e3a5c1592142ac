#!/usr/bin/env bash
# The self-contained demo: synthesise a spoken corpus with espeak-ng, train a small BiLSTM-CTC
# on the CPU, evaluate it on held-out voices and transcribe a held-out file. No downloads
# beyond the Python packages. Each stage is skipped when its output exists, so re-running
# resumes; `--from N` restarts at stage N (1 synthesise, 2 prepare, 3 train, 4 evaluate).
# `--language es` runs it in Spanish (exp/espeak-es): the model's characters come from the
# transcripts (data.language es), the rest is the same recipe.
set -euo pipefail
cd "$(dirname "$0")/../.."
from_stage=1; language=en
while [ $# -gt 0 ]; do
  case $1 in
    --from) from_stage=$2; shift 2 ;;
    --language) language=$2; shift 2 ;;
    *) echo "usage: run.sh [--from N] [--language en|es]" >&2; exit 2 ;;
  esac
done
exp=exp/espeak; synth_args=(); train_args=()
if [ "$language" != en ]; then
  # Two Spanish accents give 14 training voices (English: 24), so each speaks more.
  exp=exp/espeak-$language; synth_args=(--language "$language" --utterances-per-speaker 200)
  train_args=(data.language=$language data.train_manifest=$exp/data/train.jsonl
              data.valid_manifest=$exp/data/dev.jsonl train.out_dir=$exp/model)
fi
start=$(date +%s)

bash scripts/setup.sh
bash scripts/ensure_espeak.sh
source .venv/bin/activate

if [ "$from_stage" -le 1 ] && [ ! -f $exp/corpus/.done ]; then
  echo "== stage 1: synthesise the corpus with espeak-ng"
  rm -rf $exp/corpus
  python recipes/espeak/synthesize.py $exp/corpus "${synth_args[@]}"
  touch $exp/corpus/.done
fi
if [ "$from_stage" -le 2 ]; then
  echo "== stage 2: manifests (2 training voices held out as dev; test voices are unseen variants)"
  asr prepare $exp/corpus/train $exp/data/train.jsonl --dev-out $exp/data/dev.jsonl --dev-speakers 2
  asr prepare $exp/corpus/test $exp/data/test.jsonl
fi
if [ "$from_stage" -le 3 ]; then
  echo "== stage 3: train (resumes from $exp/model/last.pt if present)"
  asr train recipes/espeak/conf/demo.yaml "${train_args[@]}"
fi
if [ "$from_stage" -le 4 ]; then
  echo "== stage 4: evaluate on held-out voices"
  asr evaluate $exp/model/best.pt $exp/data/test.jsonl --report $exp/test_report.txt --worst 5
  sample=$(python -c "import json; print(json.loads(open('$exp/data/test.jsonl').readline())['audio'])")
  echo "== transcribe a held-out file: $sample"
  echo "reference:  $(python -c "import json; print(json.loads(open('$exp/data/test.jsonl').readline())['text'])")"
  echo "hypothesis: $(asr transcribe $exp/model/best.pt "$sample")"
fi
echo "== done in $(( $(date +%s) - start )) s"
