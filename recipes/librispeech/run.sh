#!/usr/bin/env bash
# LibriSpeech recipes, staged and re-runnable. Usage:
#   bash recipes/librispeech/run.sh CONFIG [--stage N] [--stop-stage N] [--gpus N] [--data DIR] [--mirror URL]
#   bash recipes/librispeech/run.sh cpu-small --data-dir ../shared/data/librispeech_finetuning
#   ... -- section.key=value ...    (config overrides passed on to training, e.g. model.cell=gru)
# CONFIG is a name in recipes/librispeech/conf (mini, libri-light-10h, 100h, 460h, 960h, cpu-small, cpu-small-stream: cpu-small with streaming forward-only layers).
# Stages: 1 download + manifests (+ the official LMs), 2 train (normalisation stats first;
# resumes), 3 average the last 5 epochs, 4 evaluate on dev/test clean/other, greedy and (with an
# LM) beam search + LM tuned on the first eval set: the characters, and with a phone head also its
# phones through a pronunciation lexicon (espeak-ng + CMUdict); the better is kept. 5 write $exp/RESULTS.md.
# --data-dir DIR uses any LibriSpeech-layout folder instead: split by speaker into train/dev.
# --lm FILE decodes with that word LM (default with LibriSpeech: the official pruned 3-gram; with
# --data-dir: CMU Sphinx's US English trigram). Stage 4 stores the tuned LM settings beside the model.
# --extra DIR[:WEIGHT] (repeatable) mixes another corpus (LibriSpeech layout or a Kaldi data
# directory) into training with that weight (default 1; data.extra_train), with speed copies when
# the config trains on them.
# --books DIR builds the word LM from a folder of plain-text books in stage 4 (KenLM's lmplz:
# scripts/build_kenlm.sh), leaving out every book that shares a 10-word run with the eval sets,
# keeping the 200 k most frequent words, and decodes with it instead of --lm.
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: run.sh CONFIG [options]}; shift
stage=1; stop_stage=5; gpus=1; data=data/librispeech; mirror=""; data_dir=""; lm=""; user_overrides=()
extras=(); books=""
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; user_overrides=("$@"); break ;;
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --mirror) mirror="--mirror $2"; shift 2 ;;
    --data-dir) data_dir=$2; shift 2 ;;
    --lm) lm=$2; shift 2 ;;
    --extra) extras+=("$2"); shift 2 ;;
    --books) books=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
conf=recipes/librispeech/conf/$name.yaml
[ -f "$conf" ] || { echo "no such config: $conf" >&2; exit 2; }
bash scripts/setup.sh
source .venv/bin/activate
exp=$(python -c "import sys; from asr.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).train.out_dir)" \
  "$conf" "${user_overrides[@]}")

case $name in
  mini) train_sets="train-clean-5"; eval_sets="dev-clean-2" ;;
  libri-light-10h) train_sets="librilight-10h"; eval_sets="dev-clean dev-other test-clean test-other" ;;
  100h) train_sets="train-clean-100"; eval_sets="dev-clean dev-other test-clean test-other" ;;
  460h) train_sets="train-460"; eval_sets="dev-clean dev-other test-clean test-other" ;;
  *) train_sets="train-960"; eval_sets="dev-clean dev-other test-clean test-other" ;;
esac
overrides=()
# A config whose training manifest is *-sp.jsonl trains on speed-perturbed copies (0.9/1.0/1.1).
speed_perturb=$(python -c "from asr.config import load_config; print(int(load_config('$conf').data.train_manifest.endswith('-sp.jsonl')))")
if [ -n "$data_dir" ]; then
  data=$exp/data; eval_sets="dev"
  train_manifest=$data/manifests/train.jsonl
  [ "$speed_perturb" = 1 ] && train_manifest=$data/manifests/train-sp.jsonl
  overrides=(data.train_manifest=$train_manifest data.valid_manifest=$data/manifests/dev.jsonl)
else
  overrides=(data.train_manifest=$(python -c "from asr.config import load_config; print(load_config('$conf').data.train_manifest.replace('data/librispeech', '$data'))")
             data.valid_manifest=$data/manifests/$(echo $eval_sets | cut -d' ' -f1).jsonl)
fi

# Extra corpora: prepared in stage 1 into extra-N.jsonl, mixed in with their weights.
extra_mix=""
for i in "${!extras[@]}"; do
  weight=1; [[ "${extras[$i]}" == *:* ]] && weight=${extras[$i]##*:}
  extra_mix+="${extra_mix:+, }{manifest: $data/manifests/extra-$i.jsonl, weight: $weight}"
done
[ -n "$extra_mix" ] && overrides+=("data.extra_train=[$extra_mix]")

# A phone head (model.phone_ctc_weight > 0): trained on espeak-ng phones, and decoded in stage 4.
phones=$(python -c "import sys; from asr.config import load_config; print(int(load_config(sys.argv[1], sys.argv[2:]).model.phone_ctc_weight > 0))" \
  "$conf" "${user_overrides[@]}")

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  echo "== stage 1: data"
  if [ -n "$data_dir" ]; then
    sp_flag=""; [ "$speed_perturb" = 1 ] && sp_flag=--speed-perturb
    asr prepare "$data_dir" $train_manifest --dev-out $data/manifests/dev.jsonl --dev-speakers 2 --seed 0 $sp_flag
  else
    asr prepare librispeech --subsets $train_sets $eval_sets --dest $data --speed-perturb --lm $mirror
  fi
  # Extra corpora get the main manifest's speed copies, so a weight means the same for each.
  extra_sp=""; [ "$speed_perturb" = 1 ] && extra_sp=--speed-perturb
  for i in "${!extras[@]}"; do
    asr prepare "${extras[$i]%:*}" $data/manifests/extra-$i.jsonl $extra_sp
  done
fi
if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  echo "== stage 2: train ($gpus process(es))"
  # The phone CTC loss phonemises the training transcripts with espeak-ng.
  [ "$phones" = 1 ] && bash scripts/ensure_espeak.sh
  if [ "$gpus" -gt 1 ]; then
    torchrun --standalone --nproc_per_node "$gpus" -m asr train "$conf" "${overrides[@]}" "${user_overrides[@]}"
  else
    asr train "$conf" "${overrides[@]}" "${user_overrides[@]}"
  fi
fi
model=$exp/best.pt
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  # The last 5 epochs, or the second half of a run of fewer than 10 (more data in the same
  # budget means fewer epochs, and an early epoch drags the average down).
  last_epoch=$(ls $exp/epoch-*.pt 2>/dev/null | sed 's/.*epoch-\([0-9]*\)\.pt$/\1/' | sort -n | tail -1)
  count=$(( ${last_epoch:-0} / 2 )); [ $count -gt 5 ] && count=5
  echo "== stage 3: average the last $count epochs"
  if [ $count -ge 2 ] && [ "$(ls $exp/epoch-*.pt | wc -l)" -ge $count ]; then
    asr average $exp --last $count --out $exp/avg.pt
  else
    echo "fewer than 4 epochs (or their checkpoints): using best.pt"
  fi
fi
[ -f $exp/avg.pt ] && model=$exp/avg.pt
[ -z "$lm" ] && [ -z "$data_dir" ] && lm=$data/lm/3-gram.pruned.1e-7.arpa.gz
# --data-dir: CMU Sphinx's US English trigram (`asr lm english`), which holds no LibriSpeech text.
english_lm=$data/lm/en-us.arpa
[ -z "$lm" ] && [ -n "$data_dir" ] && lm=$english_lm
# The official LM: tune-lm's default grid; the English trigram: a grid measured to hold its best, and
# beam 200 (phones through the lexicon, dev WER held out: 67.9 % at beam 50, 66.2 at 100, 65.3 at 200).
tune_grid=()
[ "$lm" = "$english_lm" ] && tune_grid=(--lm-weights 0.5,1,1.5,2 --word-scores=-1,0,1 --beam 200)
# --books: a book-domain trigram in KenLM's binary format, its word list beside it (the lexicon).
[ -n "$books" ] && lm=$data/lm/books.bin && tune_grid=(--lm-weights 0.5,1,1.5,2 --word-scores=-1,0,1 --beam 200)
words=$lm; [ -f "$lm.words.txt" ] || [ -n "$books" ] && words=$lm.words.txt
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  echo "== stage 4: evaluate $model"
  for set in $eval_sets; do
    asr evaluate $model $data/manifests/$set.jsonl --greedy --report $exp/eval/$set.txt \
      --utterances $exp/eval/$set.jsonl --worst 5 > /dev/null
    echo "$set greedy: $(grep -E "^(WER|CER)" $exp/eval/$set.txt | cut -d'(' -f1 | tr -s ' ' | paste -sd' ')"
  done
  if [ -n "$books" ] && [ ! -f "$lm" ]; then
    # The books are read and normalised once (the slow part), without any book that holds an
    # eval sentence; the LM is built from that text.
    eval_manifests=(); for set in $eval_sets; do eval_manifests+=($data/manifests/$set.jsonl); done
    book_text=$data/lm/books.txt
    [ -f $book_text ] || asr lm text "$books" $book_text --exclude "${eval_manifests[@]}" | tee $exp/eval/books-text.txt
    asr lm build $book_text "$lm" --order 3 --prune 0 1 1 --vocab-size 200000 --oov "${eval_manifests[0]}" \
      | tee $exp/eval/books-lm.txt || echo "warning: could not build $lm; greedy only" >&2
  fi
  if [ "$lm" = "$english_lm" ] && [ ! -f "$lm" ]; then
    asr lm english "$lm" || echo "warning: could not write $lm (pip install pocketsphinx); greedy only" >&2
  fi
  if [ -n "$lm" ] && [ -f "$lm" ]; then
    tune_set=$(echo $eval_sets | cut -d' ' -f1)
    # How well the LM predicts the tuning set's words (KenLM's query, built with lmplz).
    asr lm perplexity "$lm" $data/manifests/$tune_set.jsonl | tee $exp/eval/$tune_set-perplexity.txt || true
    units=(--units chars); [ "$words" != "$lm" ] && units+=(--lexicon "$words")
    if [ "$phones" = 1 ]; then
      # The phone head decodes through a pronunciation lexicon of the LM's words: espeak-ng's
      # readings and CMUdict's (LibriSpeech's official lexicon when stage 1 fetched it), built
      # once (espeak-ng's output cached beside it).
      lexicon=$data/lm/$(basename "${lm%%.arpa*}").lexicon.txt
      cmudict=(); official_lexicon=$data/lm/librispeech-lexicon.txt
      [ -z "$data_dir" ] && [ -f $official_lexicon ] && cmudict=(--cmudict $official_lexicon)
      [ -f "$lexicon" ] || asr lm pronounce "$words" "$lexicon" --source both "${cmudict[@]}" \
        || echo "warning: could not write $lexicon; tuning the characters only" >&2
      [ -f "$lexicon" ] && units=(--units chars,phones --phone-lexicon "$lexicon" "${units[@]:2}")
    fi
    # Each output tuned on the same grid; the one better held out by speaker is stored beside the
    # model: `asr transcribe`/`evaluate`/`serve` decode with it from now on.
    asr tune-lm $model $data/manifests/$tune_set.jsonl --lm "$lm" "${units[@]}" "${tune_grid[@]}" \
      --emissions-cache $exp/eval/$tune_set.emissions.pt | tee $exp/eval/$tune_set-tune.txt
    chosen=$(sed -n 's/^chosen: units \([a-z]*\).*/\1/p' $exp/eval/$tune_set-tune.txt); chosen=${chosen:-chars}
    for set in $eval_sets; do
      asr evaluate $model $data/manifests/$set.jsonl --report $exp/eval/$set-lm.txt \
        --utterances $exp/eval/$set-lm.jsonl --worst 5 > /dev/null
      echo "$set beam+LM ($chosen): $(grep -E "^(WER|CER)" $exp/eval/$set-lm.txt | cut -d'(' -f1 | tr -s ' ' | paste -sd' ')"
    done
    # The tuning set is scored at settings chosen on it; "held out by speaker" scores each of its
    # speakers at the settings best on the others (the honest figure when dev both tunes and scores).
    grep -E "^(== units|held out by speaker|chosen)" $exp/eval/$tune_set-tune.txt || true
  else
    echo "no LM ($lm): greedy only"
    rm -f $exp/eval/*-lm.txt $exp/eval/*-lm.jsonl $exp/eval/*-tune.txt  # an earlier run's LM rows would mislead
  fi
fi
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  echo "== stage 5: $exp/RESULTS.md"
  python - "$exp" "$model" "$conf" $eval_sets <<'PY'
import json, sys, datetime
from pathlib import Path
exp, model, conf, sets = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
tune_log = exp / "eval" / f"{sets[0]}-tune.txt"
tuning = tune_log.read_text().splitlines() if tune_log.exists() else []
# tune-lm's "chosen: units X" line when it tuned both outputs (chars and the phone head).
chosen = "".join(f" ({line.split()[2]})" for line in tuning if line.startswith("chosen: units"))
lines = [f"# {conf} ({datetime.date.today()})", "", f"model: `{model}`", "",
         "| set | decoding | WER % | CER % |", "|---|---|---|---|"]
for name in sets:
    for suffix, decoding in (("", "greedy"), ("-lm", "beam + LM")):
        if not (exp / "eval" / f"{name}{suffix}.jsonl").exists():
            continue
        rows = [json.loads(l) for l in open(exp / "eval" / f"{name}{suffix}.jsonl")]
        w = sum(r["word"]["errors"] for r in rows) / max(1, sum(r["word"]["length"] for r in rows))
        c = sum(r["char"]["errors"] for r in rows) / max(1, sum(r["char"]["length"] for r in rows))
        lines.append(f"| {name} | {decoding}{chosen if suffix else ''} | {100 * w:.2f} | {100 * c:.2f} |")
units, held_out = "chars", []  # "== units X" heads each output's section when tune-lm tuned both
for line in tuning:
    units = line.split()[-1] if line.startswith("== units") else units
    if line.startswith("held out by speaker"):
        held_out.append(f"\n{sets[0]} beam + LM ({units}), {line}")
lines += held_out
history = [json.loads(l) for l in open(exp / "metrics.jsonl")]
lines += ["", "| epoch | train min | train loss | valid WER % | valid CER % |", "|---|---|---|---|---|"]
lines += [f"| {m['epoch']} | {m['train_minutes']:.1f} | {m['train_loss']:.3f} | {100 * m['valid_wer']:.2f} | "
          f"{100 * m['valid_cer']:.2f} |" for m in history if "valid_wer" in m]
(exp / "RESULTS.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[4 : lines.index("", 4)]))  # the per-set table
PY
fi
