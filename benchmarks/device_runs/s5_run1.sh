# Session 5, issue 3, device call 1 (run from the carry dir; noise_once_s4.py = git show 9803b85:attnlab/ops/diff_attention/noise_once.py)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi -L
timeout 250 python benchmarks/device_runs/s5_run1.py noise_once_s4.py 2>&1 | tee $OUT/s5_run1.log
timeout 90 python -m pytest -x -v -m gpu tests/test_diff_noise_once.py -k "replay_equals or (bf16_gpu and not variants)" 2>&1 | tee $OUT/s5_run1_tests.log
