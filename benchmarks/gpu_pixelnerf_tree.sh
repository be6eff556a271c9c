#!/bin/bash
# One device call: pixelNeRF (wider model) trained on the GPU in the background while an
# Instant-NGP lego (400x400) trains, is baked and its tree timed with the torch marcher.
# Usage (after benchmarks/gpu_bundle.py): bash benchmarks/gpu_pixelnerf_tree.sh OUTDIR PX_MINUTES NGP_MINUTES DEVICE
# (env PX_EXTRA, NGP_EXTRA, BAKE_EXTRA, TREE_EXTRA: extra options of each step; CKPT_DIR: where the
# pixelNeRF checkpoint goes, as a tar in 15 MB parts)
set -u
OUTD=$1; PXMIN=$2; NGPMIN=$3; DEV=$4
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TURBONERF_LPIPS_DIR=$PWD/.gpu/lpips
PY=${PY:-python3}
W=${WORK:-/tmp/gpuwork}; rm -rf $W; mkdir -p $W $OUTD
{ date -u; nvidia-smi -L 2>&1; $PY -c "import torch,numba;print(torch.__version__, numba.__version__, torch.cuda.is_available())"; nproc; } > $OUTD/env.txt 2>&1
PXSET="--set width=256 --set encoder_widths=32,64,64,128 --set scenes_per_batch=8 --set n_coarse=32 --set n_fine=16 --set lr=5e-4"
( $PY -m turbonerf train --method pixelnerf --data .gpu/objects --out $W/px --max-minutes $PXMIN --schedule budget --lr-final 0.1 \
    --batch-rays 1024 --fp32 --checkpoint-every 2000 --device $DEV --no-progress $PXSET ${PX_EXTRA:-} > $OUTD/px_train.log 2>&1
  echo "px train rc=$?" >> $OUTD/px_train.log ) &
PXPID=$!
{ $PY -m turbonerf train --method instant-ngp --data .gpu/lego400 --out $W/ngp --max-minutes $NGPMIN --device $DEV --no-progress ${NGP_EXTRA:-}; echo "ngp rc=$?";
  $PY -m turbonerf bake --run $W/ngp --device $DEV --no-progress ${BAKE_EXTRA:-}; echo "bake rc=$?"; ls -la $W/ngp/baked; } > $OUTD/ngp.log 2>&1
wait $PXPID
{ $PY benchmarks/tree_gpu.py --run $W/ngp --tree $W/ngp/baked/nerftree.safetensors --device $DEV ${TREE_EXTRA:-}; echo "tree_gpu rc=$?"; } > $OUTD/tree_gpu.log 2>&1
for K in 3 1; do
  $PY -m turbonerf eval --run $W/px --source-views $K --every 7 --no-lpips-vgg --device $DEV --no-progress >> $OUTD/px_eval.log 2>&1; echo "px eval $K rc=$?" >> $OUTD/px_eval.log
done
for d in $W/px/eval*; do cp $d/results.json $OUTD/px_$(basename $d).json; done 2>/dev/null
{ $PY -m turbonerf eval --run $W/ngp --no-lpips-vgg --device $DEV --no-progress;
  $PY -m turbonerf eval --run $W/ngp --baked --no-lpips-vgg --device $DEV --no-progress; } > $OUTD/ngp_eval.log 2>&1
for d in $W/ngp/eval*; do cp $d/results.json $OUTD/ngp_$(basename $d).json; done 2>/dev/null
cp $W/px/run.json $OUTD/px_run.json; tail -3 $W/px/train_log.jsonl > $OUTD/px_trainlog_tail.txt 2>/dev/null
( cd $W/px && tar cf - run.json checkpoints/latest.safetensors | split -b 15M - ${CKPT_DIR:-$OUTD}/px_ckpt.tar. ) 2>/dev/null
ls -la $W/px/checkpoints >> $OUTD/env.txt 2>&1
date -u >> $OUTD/env.txt
