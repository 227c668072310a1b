# Session 6 lead check, call A (merged tree): every GPU-marked test of the repo, 12 pytest workers side by
# side (the Triton compiles are CPU bound; 16 cores). Run from the tree root:
#   bash benchmarks/device_runs/session6_lead_a.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
L=$OUT/lead_a.log
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $L
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a $L
timeout ${TESTS_S:-400} python -m pytest -m gpu -n 12 -p no:cacheprovider -q -rfE --tb=short tests/ 2>&1 \
  | grep -v -i "warning: \|warnings.warn" | tail -80 | tee -a $L
echo "== done rc=$? (t=$(( $(date +%s)-T0 ))s)" | tee -a $L
