#!/bin/bash
# One device call: every CUDA op test and CudaTraining (after the kernels' launches moved to check.cuh's
# launch_with_shared_memory), then each kernel's time in a bf16 training step of a ~117M Gated DeltaNet at
# the anchors' shape (train_step under ncu, one metric: gpu__time_duration; the first ~2500 launches, which
# cover the warm-up step), for the MFU study in bench/NOTES.md. Aggregate $OUT/ncu_step.csv by kernel name
# afterwards. Carry build-cuda-sample/carry.tar.xz (test_ops, test_train, train_step, lib/).
set -o pipefail
source dev/cuda/device_env.sh
timeout 200 $C/test_ops --gtest_filter='Cuda*:DenseOps.*' 2>&1 | tee $OUT/test_ops.log | summary
timeout 200 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
S="--set model.d_model=768 --set model.n_layers=12 --set model.n_heads=12 --set model.head_dim=64 --set model.vocab_size=32000 --set data.seq_len=2048 --set data.batch_size=8"
timeout 60 $C/train_step --device cuda --precision bf16 --config configs/presets/gated_deltanet.toml $S 2>&1 | tail -1 | tee $OUT/train_step.log
timeout 330 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base --launch-count 2500 \
  $C/train_step --device cuda --precision bf16 --config configs/presets/gated_deltanet.toml $S > $OUT/ncu_step.csv 2> $OUT/ncu_err.log
wc -l $OUT/ncu_step.csv; tail -2 $OUT/ncu_err.log
