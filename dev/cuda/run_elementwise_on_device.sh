#!/bin/bash
# One device call after the short-conv (sliding windows), RMSNorm (a warp per row) and gradient-norm (one
# synchronisation) rewrites: every CUDA op test and CudaTraining, train_step in bf16 at the anchors' shape
# (Gated DeltaNet, GLA), and the rewritten kernels' times by ncu in one Gated DeltaNet step.
# Carry build-cuda-sample/carry.tar.xz (test_ops, test_train, train_step, lib/).
set -o pipefail
source dev/cuda/device_env.sh
timeout 200 $C/test_ops --gtest_filter='Cuda*:DenseOps.*' 2>&1 | tee $OUT/test_ops.log | summary
timeout 200 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
S="--set model.d_model=768 --set model.n_layers=12 --set model.n_heads=12 --set model.head_dim=64 --set model.vocab_size=32000 --set data.seq_len=2048 --set data.batch_size=8"
timeout 60 $C/train_step --device cuda --precision bf16 --config configs/presets/gated_deltanet.toml $S 2>&1 | tail -1 | tee $OUT/train_step.log
G="--set model.d_model=768 --set model.n_layers=12 --set model.n_heads=6 --set model.head_dim=128 --set model.vocab_size=32000 --set data.seq_len=2048 --set data.batch_size=8"
timeout 60 $C/train_step --device cuda --precision bf16 --config configs/presets/gla.toml $G 2>&1 | tail -1 | tee -a $OUT/train_step.log
timeout 200 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base --launch-count 2500 \
  -k regex:'short_conv|rmsnorm|sum_squares|for_each_kernel' \
  $C/train_step --device cuda --precision bf16 --config configs/presets/gated_deltanet.toml $S > $OUT/ncu_step.csv 2> $OUT/ncu_err.log
wc -l $OUT/ncu_step.csv
