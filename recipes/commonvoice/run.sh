#!/usr/bin/env bash
# One Common Voice language on the CPU, from scratch or fine-tuned from a trained model. Usage:
#   bash recipes/commonvoice/run.sh LANG --data-dir DIR [--init MODEL] [--minutes N] [--config FILE]
#        [--name NAME] [--stage N] [--exp DIR] [-- section.key=value ...]
# DIR is a Common Voice release (DIR/LANG/clips/*.mp3 beside DIR/LANG/validated.tsv, ...) or the
# language folder itself. Stages: 1 manifests: the release's train.tsv/test.tsv when it has them,
# else validated.tsv with 20 % of the clips held out by speaker (client_id) as a test set;
# 2 train on the CPU for N minutes (default 10; optim.schedule: budget anneals within them),
# resuming from exp/commonvoice/LANG/NAME/last.pt when there is one; with --init, starting from
# MODEL (train.init_from: a checkpoint or model folder of the config's network shape);
# 3 CER/WER of the final model on the test set, written to exp/commonvoice/LANG/NAME/test_report.txt.
# NAME defaults to "scratch", or "finetuned" with --init; --exp moves exp/commonvoice elsewhere.
# Overrides after -- go to training. Run inside an activated virtual environment it uses that one,
# else it sets up .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
lang=${1:?usage: run.sh LANG --data-dir DIR [--init MODEL] [--minutes N]}; shift
data_dir=""; init=""; minutes=10; conf=recipes/commonvoice/conf/small.yaml; name=""; stage=1; root=exp/commonvoice
user_overrides=()
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; user_overrides=("$@"); break ;;
    --data-dir) data_dir=$2; shift 2 ;;
    --init) init=$2; shift 2 ;;
    --minutes) minutes=$2; shift 2 ;;
    --config) conf=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --exp) root=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$data_dir" ] || { echo "give the Common Voice folder: --data-dir DIR" >&2; exit 2; }
corpus=$data_dir/$lang
[ -d "$corpus/clips" ] || corpus=$data_dir  # DIR is the language folder itself
[ -d "$corpus/clips" ] || { echo "no Common Voice folder (clips/ and *.tsv) at $data_dir/$lang or $data_dir" >&2; exit 2; }
[ -n "$name" ] || name=$([ -n "$init" ] && echo finetuned || echo scratch)
data=$root/$lang/data
exp=$root/$lang/$name
start=$(date +%s)

if [ -z "${VIRTUAL_ENV:-}" ]; then
  bash scripts/setup.sh
  source .venv/bin/activate
fi

if [ "$stage" -le 1 ]; then
  echo "== stage 1: manifests of $corpus ($lang)"
  if [ -f "$corpus/train.tsv" ] && [ -f "$corpus/test.tsv" ]; then  # the release's speaker-disjoint split
    asr prepare "$corpus" $data/train.jsonl --split train --language "$lang"
    asr prepare "$corpus" $data/test.jsonl --split test --language "$lang"
  else
    asr prepare "$corpus" $data/train.jsonl --language "$lang" --dev-out $data/test.jsonl --dev-share 0.2 --seed 0
  fi
fi
if [ "$stage" -le 2 ]; then
  echo "== stage 2: train $exp for $minutes min on the CPU${init:+, starting from $init}"
  overrides=(data.train_manifest=$data/train.jsonl data.language="$lang" train.out_dir=$exp train.max_minutes=$minutes
             train.device=cpu)
  [ -z "$init" ] || overrides+=(train.init_from="$init")
  asr train "$conf" "${overrides[@]}" "${user_overrides[@]}"
fi
if [ "$stage" -le 3 ]; then
  echo "== stage 3: evaluate $exp/best.pt (the final model: no validation set) on the held-out speakers"
  # Exit code 1: some references were skipped (a character the training clips never had) or some clips
  # failed; the report lists them and scores the rest.
  asr evaluate $exp/best.pt $data/test.jsonl --greedy --report $exp/test_report.txt --worst 3 || [ $? -eq 1 ]
  echo "$lang $name: $(grep -E "^(WER|CER)" $exp/test_report.txt | cut -d'(' -f1 | tr -s ' ' | paste -sd' ')"
fi
echo "== done in $(( $(date +%s) - start )) s"
