#!/bin/bash
# One device call for softmax attention's CUDA kernels and packed sequences on the bf16 chunkwise kernels
# (issue 6): their op tests, every other CUDA op test as a control, compute-sanitizer memcheck and
# racecheck on the new suites, test_train's CudaTraining (now with the softmax presets), bench/cuda_mixers,
# and train_step on the softmax presets at the anchors' shape. Logs go under $OUT.
#
# Two calls fit the 10-minute limit: STAGE=tests (the op tests and the sanitizers), then STAGE=runs (the
# benchmark and the training runs).
# Carry build-cuda-sample/carry.tar.xz, packed as dev/cuda/run_cuda_op_tests_on_device.sh says, with
# build-cuda-sample/bin/cuda_mixers copied (and stripped) into carry/ next to train_step.
set -o pipefail
source dev/cuda/device_env.sh
if [ "${STAGE:-tests}" = tests ]; then
timeout 120 $C/test_ops --gtest_filter='CudaSoftmax*:CudaPacked*' 2>&1 | tee $OUT/test_new.log | summary
timeout 200 $C/test_ops --gtest_filter='Cuda*:DenseOps.*:*.MixedDevicesAreRefused' 2>&1 | tee $OUT/test_ops.log | summary
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaSoftmax*:CudaPacked*' 2>&1 | tail -n 4 | tee $OUT/memcheck.log
timeout 150 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter='CudaSoftmax*' 2>&1 | tail -n 4 | tee $OUT/racecheck.log
else
timeout 150 $C/cuda_mixers --long 0 2>&1 | tee $OUT/cuda_mixers.log
timeout 240 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
S="--set model.d_model=768 --set model.n_layers=12 --set model.n_heads=12 --set model.head_dim=64 --set model.vocab_size=32000 --set data.seq_len=2048 --set data.batch_size=8"
for preset in gated_attention gated_deltanet_hybrid; do
  timeout 90 $C/train_step --device cuda --precision bf16 --config configs/presets/$preset.toml $S 2>&1 | tail -1 | tee -a $OUT/train_step.log
done
fi
