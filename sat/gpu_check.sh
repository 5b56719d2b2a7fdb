#!/usr/bin/env bash
# Check a CUDA machine in one command (about 4-5 minutes of GPU work on an H100/H200):
#   bash sat/gpu_check.sh [OUTDIR]              the CUDA tests, then a quick full-size benchmark whose random
#                                               weights are made on the GPU (no checkpoint written)
#   bash sat/gpu_check.sh --dry-run [OUTDIR]    the same script on the CPU: tests in bf16, tiny benchmark
# Then one tiny sample_video.py run started by torchrun as one rank (NCCL; gloo on the CPU in --dry-run).
# Writes OUTDIR (default outputs/gpu_check): environment.txt, cuda_tests.log, cuda_tests.xml (numbers per test),
# benchmark.log, benchmark.json, torchrun.log (and its video under torchrun/), summary.txt. Installs nothing; needs torch, transformers, sentencepiece, numpy,
# imageio(-ffmpeg), matplotlib, tqdm, safetensors, pytest, SwissArmyTransformer, omegaconf, accelerate; a missing
# one stops it at once with one line naming them (docs/performance.md, "Machines without network").
set -u
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
OUTDIR=${1:-outputs/gpu_check}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
export GOMP_SPINCOUNT=1000 PYTHONUNBUFFERED=1
START=$(date +%s)

{ python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; } 2>&1 \
  | tee "$OUTDIR/environment.txt"
MISSING=$(python3 -c "import importlib.util as u; print(' '.join(m for m in ('transformers', 'sentencepiece', 'numpy',
'imageio', 'imageio_ffmpeg', 'matplotlib', 'tqdm', 'safetensors', 'pytest', 'sat', 'omegaconf', 'accelerate')
if u.find_spec(m) is None))")
if [ -n "$MISSING" ]; then
  echo "error: missing Python packages: $MISSING (docs/performance.md, 'Machines without network': the wheels" \
       "to bring)" >&2
  exit 2
fi

if [ $DRY_RUN = 1 ]; then
  export DITCTRL_TEST_DEVICE=cpu
  BENCHMARK=(--tiny --device cpu --steps 3 --repeats 1)
  RUN_DEVICE=cpu
else
  BENCHMARK=(--full --device cuda --dtype fp16 --steps 3 --repeats 2)
  RUN_DEVICE=cuda
fi

echo "== CUDA tests (tests/test_cuda.py)"
timeout 300 python3 -m pytest -q -m cuda tests/test_cuda.py -rs -p no:cacheprovider -o junit_family=legacy \
  --junitxml="$OUTDIR/cuda_tests.xml" 2>&1 | tee "$OUTDIR/cuda_tests.log"
TESTS_STATUS=${PIPESTATUS[0]}

echo "== benchmark (random weights made on the device)"
timeout 420 python3 sat/benchmark.py --gpu-check "${BENCHMARK[@]}" --out "$OUTDIR/benchmark.json" 2>&1 \
  | tee "$OUTDIR/benchmark.log"
BENCHMARK_STATUS=${PIPESTATUS[0]}

echo "== torchrun, one rank: tiny rose, 3 steps on $RUN_DEVICE"
rm -rf "$OUTDIR/torchrun"
timeout 120 torchrun --standalone --nproc_per_node=1 sat/sample_video.py --base configs/cogvideox_2b.yaml \
  configs/inference.yaml --custom-config inference_case_configs/multi_prompts/rose.yaml --tiny \
  args.device=$RUN_DEVICE model.sampler_config.params.num_steps=3 args.output_dir="$OUTDIR/torchrun" \
  > "$OUTDIR/torchrun.log" 2>&1
TORCHRUN_STATUS=$?
TORCHRUN_VIDEO=$(ls "$OUTDIR"/torchrun/*.mp4 2>/dev/null | head -1)
echo "torchrun exit $TORCHRUN_STATUS; video: ${TORCHRUN_VIDEO:-none written} (log: $OUTDIR/torchrun.log)"

python3 - "$OUTDIR" "$TESTS_STATUS" "$BENCHMARK_STATUS" "$(( $(date +%s) - START ))" "$TORCHRUN_STATUS" \
  "${TORCHRUN_VIDEO:-}" <<'PY' | tee "$OUTDIR/summary.txt"
import json, os, sys
import xml.etree.ElementTree as ET
outdir, tests_status, benchmark_status, seconds, torchrun_status, torchrun_video = sys.argv[1:]
print(f"== summary ({seconds} s; tests exit {tests_status}, benchmark exit {benchmark_status}, "
      f"torchrun exit {torchrun_status})")
print(f"torchrun one rank: {'wrote ' + torchrun_video if torchrun_video else 'no video written'}")
try:
    cases = list(ET.parse(os.path.join(outdir, "cuda_tests.xml")).iter("testcase"))
    outcome = lambda case: next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")
    counts = {}
    for case in cases:
        counts[outcome(case)] = counts.get(outcome(case), 0) + 1
    print("tests:", ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
    for case in cases:
        numbers = {p.get("name"): p.get("value") for p in case.iter("property")}
        note = case.find("skipped").get("message") if outcome(case) == "skipped" else numbers
        print(f"  {outcome(case):<7} {case.get('name')} {note}")
except (OSError, ET.ParseError) as error:
    print("tests: no report:", error)
try:
    with open(os.path.join(outdir, "benchmark.json")) as file:
        results = json.load(file)
    print("benchmark:", *results["summary"], sep="\n  ")
    print("  failed sections:", results["failures"] or "none")
except (OSError, ValueError, KeyError) as error:
    print("benchmark: no report:", error)
PY
[ "$TESTS_STATUS" = 0 ] && [ "$BENCHMARK_STATUS" = 0 ] && [ "$TORCHRUN_STATUS" = 0 ]
