#!/usr/bin/env bash
# The whole GPU measurement in one run on a CUDA machine that has PyTorch and Triton but no network:
# the GPU tests, the SpikingJelly comparison table (train / inference img/s, ratios, peak memory,
# FLOP/s against the measured bf16 matmul peak), a profile of GPU time by kernel category, and the
# rest of the test suite if time is left.
#
#   bash benchmarks/gpu_run.sh OUTDIR
#
# Run it from the repository root. SpikingJelly 2.0.0 is installed (into a throwaway virtualenv,
# $SJ_VENV, default /tmp/sj-venv) from the wheels in benchmarks/.wheels, filled beforehand on a
# machine with network access:
#   pip download --no-deps spikingjelly==2.0.0 loguru -d benchmarks/.wheels
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       h5py -d benchmarks/.wheels        # only where the GPU machine's Python lacks h5py
# Phases, in this order: env (versions, GPU, clocks), tests (the GPU tests), compare (the table:
# --workloads gpu, A B A B), profile (GPU time by kernel category: ours on sdt_8_768 at 224, train and
# inference, and on spikformer_4_384_cifar; SpikingJelly fp32 on sdt_8_768), interpreter (the Triton
# interpreter test), suite (the whole default test suite, only with the time left).
# Environment: BUDGET (seconds for everything, default 500: every phase has a timeout inside it),
# PHASES (default "env tests compare profile interpreter suite"), PYTHON (default python3), ROUNDS (default 2),
# REPS (default 10). Writes env.txt, compare.{log,md,json}, tests.log, profile.log, suite.log
# into OUTDIR and prints the comparison table last.
set -u -o pipefail
OUT_DIR=${1:?usage: bash benchmarks/gpu_run.sh OUTDIR}
mkdir -p "$OUT_DIR"
BUDGET=${BUDGET:-500}
PHASES=${PHASES:-env tests compare profile interpreter suite}
PY=${PYTHON:-python3}
ROUNDS=${ROUNDS:-2}
REPS=${REPS:-10}
SJ_VENV=${SJ_VENV:-/tmp/sj-venv}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
has() { case " $PHASES " in *" $1 "*) return 0;; *) return 1;; esac; }
SUMMARY=""
note() { SUMMARY="$SUMMARY$1"$'\n'; echo "== $1 (at $(( $(date +%s) - START )) s)"; }
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 4")
PTIMEOUT=$($PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout=240")

if has env; then
  {
    date -u; uname -a; nproc
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv || true
    $PY -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    $PY -c "import triton; print('triton', triton.__version__)" || echo "no triton"
    $PY -c "import spikeformers.kernels as k; print(k.status())" || true
    $PY -m pip --version || true
    ls -la benchmarks/.wheels || echo "no benchmarks/.wheels: SpikingJelly cannot be installed offline"
  } > "$OUT_DIR/env.txt" 2>&1
  note "env: $(grep -m1 '^torch' "$OUT_DIR/env.txt")"
fi

if has tests; then
  # the GPU tests, and the tests that failed on a one-GPU machine before (two processes on one GPU)
  t=$(min 70 $(( $(left) - 10 )))
  timeout "$t" $PY -m pytest -q -p no:cacheprovider $XDIST $PTIMEOUT -rfEs tests/test_gpu_kernels.py \
      tests/test_train_data.py::test_two_processes_equal_one_process_with_accumulation \
      tests/test_train_data.py::test_from_rank0_makes_two_processes_agree \
      tests/test_energy_cli.py::test_device_option 2>&1 | tee "$OUT_DIR/tests.log" | tail -n 25
  note "tests: rc $? ($(tail -n 1 "$OUT_DIR/tests.log"))"
fi

if has compare; then
  # keep time for the phases after it; the script starts no round past its deadline and writes its
  # tables after every round, so a hard stop keeps the rounds already done
  reserve=10
  for p in profile interpreter; do has $p && reserve=$((reserve + 70)); done
  deadline=$(( $(left) - reserve ))
  [ "$deadline" -lt 60 ] && deadline=60   # one round at least, into the later phases' time
  timeout $(( deadline + 90 )) $PY benchmarks/compare_spikingjelly.py --device cuda --workloads gpu \
      --rounds "$ROUNDS" --reps "$REPS" --wheels benchmarks/.wheels --venv "$SJ_VENV" --deadline "$deadline" \
      --proc-timeout 240 --ours-fp32 sdt_8_768,qkformer_10_768 \
      --json "$OUT_DIR/compare.json" --md "$OUT_DIR/compare.md" 2>&1 | tee "$OUT_DIR/compare.log"
  note "compare: rc $? (deadline $deadline s)"
fi

if has profile; then
  t=$(min 70 $(( $(left) - 5 )))
  if [ "$t" -gt 20 ]; then
    {
      timeout "$t" $PY benchmarks/profile_gpu.py --workloads sdt_8_768:224:32:1000 --both --top 12
      t=$(min 30 $(( $(left) - 5 )))
      [ "$t" -gt 10 ] && timeout "$t" $PY benchmarks/profile_gpu.py --workloads spikformer_4_384_cifar:32:64:10 --top 8
      t=$(min 30 $(( $(left) - 5 )))
      if [ -x "$SJ_VENV/bin/python" ] && [ "$t" -gt 10 ]; then
        timeout "$t" "$SJ_VENV/bin/python" benchmarks/profile_gpu.py --spikingjelly --precision fp32 \
            --workloads sdt_8_768:224:32:1000 --top 12
      fi
    } > "$OUT_DIR/profile.log" 2>&1
    note "profile: $(grep -c 'ms per step unprofiled' "$OUT_DIR/profile.log") profiles"
  else
    note "profile: skipped, no time left"
  fi
fi

if has interpreter; then
  # the Triton kernels under Triton's CPU interpreter, on a machine with a GPU and Triton
  t=$(min 70 $(( $(left) - 5 )))
  if [ "$t" -gt 20 ]; then
    timeout "$t" $PY -m pytest -q -p no:cacheprovider -rfE tests/test_triton_interpreter.py 2>&1 \
        | tee -a "$OUT_DIR/tests.log" | tail -n 15
    note "interpreter test: rc $? ($(tail -n 1 "$OUT_DIR/tests.log"))"
  else
    note "interpreter test: skipped, no time left"
  fi
fi

if has suite; then
  t=$(( $(left) - 5 ))
  if [ "$t" -gt 60 ]; then
    timeout "$t" $PY -m pytest -q -p no:cacheprovider ${XDIST:+-n 12} $PTIMEOUT -rfE tests \
        > "$OUT_DIR/suite.log" 2>&1
    note "suite: rc $? ($(tail -n 1 "$OUT_DIR/suite.log"))"
  else
    note "suite: skipped, $t s left"
  fi
fi

echo
echo "$SUMMARY"
[ -f "$OUT_DIR/compare.md" ] && cat "$OUT_DIR/compare.md"
grep -E "ms per step unprofiled" "$OUT_DIR/profile.log" 2>/dev/null | cut -c1-300
exit 0
