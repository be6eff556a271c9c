#!/bin/bash
# Mip-NeRF and vanilla NeRF trained side by side on one GPU for the same minutes (lego at
# 200x200), both evaluated; activation sampling on the Mip-NeRF (issue 12).
# Usage (after benchmarks/gpu_bundle.py): bash benchmarks/gpu_mip_nerf.sh LOGDIR MINUTES DEVICE DOWNSCALE EVAL_EXTRA
set -u
OUTD=$1; MIN=$2; DEV=$3; DS=$4; EX=${5:-}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TURBONERF_LPIPS_DIR=$PWD/.gpu/lpips
PY=${PY:-python3}
W=${WORK:-/tmp/gpuwork2}; rm -rf $W; mkdir -p $W $OUTD
{ date -u; nvidia-smi -L 2>&1; } > $OUTD/env.txt 2>&1
for M in mip-nerf vanilla-nerf; do
  SET=""; [ $M = mip-nerf ] && SET="--set lr_delay_steps=0"
  ( $PY -m turbonerf train --method $M --data .gpu/lego400 --downscale $DS --out $W/$M --max-minutes $MIN --device $DEV --no-progress $SET ${TRAIN_EXTRA:-} > $OUTD/train_$M.log 2>&1; echo "rc=$?" >> $OUTD/train_$M.log ) &
done
wait
date -u >> $OUTD/env.txt
for M in mip-nerf vanilla-nerf; do
  $PY -m turbonerf eval --run $W/$M --no-lpips-vgg --device $DEV --no-progress $EX >> $OUTD/eval.log 2>&1; echo "eval $M rc=$?" >> $OUTD/eval.log
  cp $W/$M/eval/results.json $OUTD/${M}_results.json
done
$PY -m turbonerf eval --run $W/mip-nerf --sampler activation --layer 0 --fct std --no-lpips-vgg --device $DEV --no-progress $EX >> $OUTD/act.log 2>&1; echo "act rc=$?" >> $OUTD/act.log
cp $W/mip-nerf/eval/stats.json $OUTD/act_stats.json 2>/dev/null
$PY -m turbonerf eval --run $W/mip-nerf --sampler activation --layer 0 --fct std --upsample --no-lpips-vgg --device $DEV --no-progress $EX >> $OUTD/act.log 2>&1; echo "act ups rc=$?" >> $OUTD/act.log
cp $W/mip-nerf/eval/stats.json $OUTD/act_stats_ups.json 2>/dev/null
for M in mip-nerf vanilla-nerf; do tail -n 2 $W/$M/train_log.jsonl > $OUTD/${M}_log_tail.txt; done 2>/dev/null
date -u >> $OUTD/env.txt
