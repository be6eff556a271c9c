#!/bin/bash
# One device call (issue 14): the 5.5-minute GPU pixelNeRF run (width 256) resumed to a longer
# budget, beside a paper-width (512) model trained from scratch for the same minutes; both
# evaluated on the held-out objects from 3 and 1 source views.
# Usage (after benchmarks/gpu_bundle.py, with the run to resume in .gpu/px_resume whose run.json
# names its data as .gpu/objects; the object set may travel as .gpu/objects.tgz, unpacked here: a
# tree of 20,000 small files costs the 64 MiB carry far more than its bytes): bash benchmarks/gpu_pixelnerf_more.sh OUTDIR TOTAL_MINUTES NEW_MINUTES DEVICE
# (TOTAL_MINUTES: the resumed run's whole budget; NEW_MINUTES: the fresh run's)
set -u
OUTD=$1; TOTAL=$2; NEW=$3; DEV=$4
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TURBONERF_LPIPS_DIR=$PWD/.gpu/lpips
PY=${PY:-python3}
W=${WORK:-/tmp/gpuwork3}; rm -rf $W; mkdir -p $W $OUTD
cp -r .gpu/px_resume $W/a
[ -d .gpu/objects ] || tar xzf .gpu/objects.tgz -C .gpu
{ date -u; nvidia-smi -L 2>&1; $PY -c "import torch;print(torch.__version__, torch.cuda.is_available())"; nproc; } > $OUTD/env.txt 2>&1
( $PY -m turbonerf train --resume --out $W/a --max-minutes $TOTAL --schedule budget --lr-final 0.1 --batch-rays 1024 --fp32 \
    --checkpoint-every 2000 --device $DEV --no-progress > $OUTD/a_train.log 2>&1; echo "a train rc=$?" >> $OUTD/a_train.log ) &
( $PY -m turbonerf train --method pixelnerf --data .gpu/objects --out $W/b --max-minutes $NEW --schedule budget --lr-final 0.1 \
    --batch-rays 1024 --fp32 --checkpoint-every 2000 --device $DEV --no-progress --set width=512 --set encoder_widths=32,64,64,128 \
    --set scenes_per_batch=8 --set n_coarse=32 --set n_fine=16 --set lr=5e-4 > $OUTD/b_train.log 2>&1; echo "b train rc=$?" >> $OUTD/b_train.log ) &
wait
date -u >> $OUTD/env.txt
for K in 3 1; do
  for R in a b; do
    ( $PY -m turbonerf eval --run $W/$R --source-views $K --every 7 --no-lpips-vgg --device $DEV --no-progress > $OUTD/${R}_eval$K.log 2>&1
      echo "rc=$?" >> $OUTD/${R}_eval$K.log; for d in $W/$R/eval*; do cp $d/results.json $OUTD/${R}_$(basename $d).json; done 2>/dev/null ) &
  done
  wait
done
for R in a b; do cp $W/$R/run.json $OUTD/${R}_run.json; tail -3 $W/$R/train_log.jsonl > $OUTD/${R}_trainlog_tail.txt; done 2>/dev/null
( cd $W/a && tar cf - run.json checkpoints/latest.safetensors | split -b 15M - ${CKPT_DIR:-$OUTD}/a_ckpt.tar. ) 2>/dev/null
ls -la $W/*/checkpoints >> $OUTD/env.txt 2>&1
date -u >> $OUTD/env.txt
