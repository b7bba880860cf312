#!/usr/bin/env bash
# The GPU check: run on a machine with an NVIDIA GPU and a CUDA build of PyTorch, from the checkout
# (no install needed: torch, click, tqdm and safetensors must be importable). In under 18 minutes it
#   1. runs the test suite with CUDA present (`--device auto` then picks the GPU), slow tests left out;
#   2. trains the d2l config (hidden 256, batch 32, seq_len 35, one-hot, SGD) for each cell and prints
#      tokens/s beside d2l's V100 figures (nn.RNN 268k, nn.GRU 301k, nn.LSTM 298k tokens/s);
#   3. trains the default model in fp32 and with bf16 autocast, same steps: tokens/s and loss;
#   4. loads the GPU-trained checkpoint on the CPU, generates and evaluates there, and times generation on the
#      GPU in fp32 and bf16 steps (scripts/bench_generate.py);
#   5. runs the CPU bench once, for the record;
#   6. trains nanoGPT's GPU recipe for shakespeare_char with the transformer (6 layers, 6 heads, 384 wide,
#      context 256, batch 64, dropout 0.2, 5000 steps; --epochs 82 so that the cosine runs over the
#      5000 steps as nanoGPT's does) in bf16 (flash attention through SDPA): its held-out loss and time
#      beside nanoGPT's 1.4697 in about 3 minutes on an A100.
# Every part has its own time limit; a part that fails is reported and the rest still run. The
# summary goes to stdout and, with everything else, to $OUT (default /tmp/charlm-gpu-check).
#
#     bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-/tmp/charlm-gpu-check}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
python=${PYTHON:-python3}
charlm() { "$python" -m charlm "$@"; }

if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible to $python; nothing to check" >&2
  exit 2
fi
say "== $("$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$summary"

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log, say how it ended
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local code=$?
  say "-- $name: exit $code in $((SECONDS - started)) s (log: $out/$name.log)"
  return $code
}

# 1. the tests, on a machine with CUDA
part tests 150 "$python" -m pytest -q -m "not slow" -x -p no:cacheprovider
tail -n 3 "$out/tests.log" | tee -a "$summary"

# 2. d2l's V100 figures at its config
work=$(mktemp -d)
for cell in rnn gru lstm; do
  part "d2l-$cell" 60 charlm train corpora/timemachine.txt --preprocess d2l --model "$cell" --hidden-size 256 \
    --num-layers 1 --embedding-size 0 --dropout 0 --batch-size 32 --seq-len 35 --optimizer sgd --lr 1 \
    --lr-schedule constant --max-steps 400 --eval-every 200 --device cuda --quiet --out "$work/d2l-$cell.safetensors"
  "$python" - "$work/d2l-$cell.metrics.jsonl" "$cell" <<'EOF' | tee -a "$summary"
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
reference = {"rnn": 268_000, "gru": 301_000, "lstm": 298_000}[sys.argv[2]]
rate = records[-1]["tokens_per_sec"]
print(f"   {sys.argv[2]}: {rate:,.0f} tokens/s = {rate / reference:.2f}x d2l's V100 ({reference:,})")
EOF
done

# 3. the default model, fp32 against bf16 autocast
for precision in fp32 bf16; do
  part "default-$precision" 90 charlm train corpora/timemachine.txt --preprocess d2l --precision "$precision" \
    --max-steps 300 --eval-every 300 --device cuda --quiet --out "$work/default-$precision.safetensors"
  "$python" - "$work/default-$precision.metrics.jsonl" "$precision" <<'EOF' | tee -a "$summary"
import json, sys
record = [json.loads(line) for line in open(sys.argv[1])][-1]
print(f"   {sys.argv[2]}: {record['tokens_per_sec']:,.0f} tokens/s, val loss {record['val_loss']:.4f} at step {record['step']}")
EOF
done

# 4. a GPU-trained checkpoint on the CPU
part cpu-generate 60 charlm generate --checkpoint "$work/default-bf16.safetensors" --device cpu --prefix "time " \
  --length 80 --seed 1
tail -n 2 "$out/cpu-generate.log" | tee -a "$summary"
part cpu-eval 60 charlm eval --checkpoint "$work/default-bf16.safetensors" --device cpu corpora/timemachine.txt
tail -n 1 "$out/cpu-eval.log" | tee -a "$summary"
# 4b. generation on the GPU in fp32 and bf16 steps, and what --precision auto takes there
part gpu-generate 60 "$python" scripts/bench_generate.py "$work/default-bf16.safetensors" --device cuda --rows 1 32 256 \
  --rounds 2
tail -n 4 "$out/gpu-generate.log" | tee -a "$summary"

# 5. the CPU bench, for the record of this machine's CPU
part bench 120 "$python" scripts/bench.py --repeats 2
tail -n 25 "$out/bench.log" >>"$summary"
# 6. nanoGPT's GPU recipe, through charlm's flags
part transformer-gpu 600 charlm train corpora/tinyshakespeare.txt --model transformer --num-layers 6 --num-heads 6 \
  --embedding-size 384 --seq-len 256 --batch-size 64 --dropout 0.2 --lr 1e-3 --warmup-steps 100 --weight-decay 0.1 \
  --epochs 82 --max-steps 5000 --eval-every 500 --precision bf16 --device cuda --quiet --no-cache \
  --out "$work/transformer-gpu.safetensors"
"$python" - "$work/transformer-gpu.metrics.jsonl" <<'EOF' | tee -a "$summary"
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
best = min(records, key=lambda record: record["val_loss"])
print(f"   transformer 6x384: best val loss {best['val_loss']:.4f} at step {best['step']}, {records[-1]['step']} steps "
      f"in {records[-1]['elapsed_s']:.0f} s, {records[-1]['tokens_per_sec']:,.0f} tokens/s "
      "(nanoGPT: 1.4697 in about 3 minutes on an A100)")
EOF
rm -rf "$work"
say "== done in $SECONDS s"
