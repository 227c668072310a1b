# Session-2 GPU check (b1), run from the repo root on the device: bash benchmarks/device_runs/b1.sh (writes under $OUT)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD ATTNLAB_BENCH_DIR=/tmp/res
mkdir -p /tmp/res
L=$OUT/log.txt
nvidia-smi --query-gpu=name --format=csv,noheader | tee $L
python -c "import torch,triton,transformers;print(torch.__version__,triton.__version__,transformers.__version__)" | tee -a $L
echo "== gpu tests" | tee -a $L
timeout 170 python -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -40 | tee -a $L
echo "== dsalt" | tee -a $L
timeout 80 python benchmarks/bench_dsalt.py --name dsalt_s2 2>&1 | tail -25 | tee -a $L
echo "== spectral" | tee -a $L
timeout 50 python benchmarks/bench_spectral.py --batch 1 8 --lengths 32768 --name spectral_s2 2>&1 | tail -12 | tee -a $L
echo "== train eager" | tee -a $L
timeout 60 python benchmarks/bench_train_step.py --mixers mha,mla,diff-mla,cmd-mla --name train_s2 2>&1 | tail -8 | tee -a $L
echo "== train compiled" | tee -a $L
timeout 120 python benchmarks/bench_train_step.py --compile --mixers mha,mla --name train_s2_compiled 2>&1 | tail -6 | tee -a $L
echo "== prof mla" | tee -a $L
timeout 40 python benchmarks/device_runs/prof_train.py mla 2>&1 | tail -32 | tee -a $L
tar czf $OUT/res.tgz -C /tmp/res .
