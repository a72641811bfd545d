#!/bin/bash
# One device call for GLA's chunkwise forward and backward (issue 6): its CUDA op tests and the other CUDA
# suites of test_ops as a control, bench/cuda_mixers (issue 6's shapes next to the machine's GEMM rate and
# copy bandwidth), each GLA kernel's time by ncu, compute-sanitizer memcheck and racecheck on CudaGla.*,
# test_train's CudaTraining and train_step on GLA (Dk 64, Dv 128), RetNet and Gated DeltaNet models in bf16 at
# the anchors' shape.
# Logs go under $OUT.
#
# Carry build-cuda-sample/carry.tar.xz, packed as dev/cuda/run_cuda_op_tests_on_device.sh says, with
# build-cuda-sample/bin/cuda_mixers copied (and stripped) into carry/ next to train_step.
set -o pipefail
source dev/cuda/device_env.sh
timeout 120 $C/test_ops --gtest_filter='CudaGla.*' 2>&1 | tee $OUT/test_gla.log | grep -E "OK|FAIL|Failure|Which|Expected|actual|message" | head -40
[ "${GLA_ONLY:-0}" = 1 ] && exit 0
timeout 150 $C/test_ops --gtest_filter='Cuda*:DenseOps.*:*.MixedDevicesAreRefused' 2>&1 | tee $OUT/test_ops.log | summary
timeout 150 $C/cuda_mixers 2>&1 | tee $OUT/cuda_mixers.log
timeout 120 ncu --metrics gpu__time_duration.sum --csv --print-units base -k regex:gla --launch-count 12 \
    $C/cuda_mixers --repeats 1 --long 0 > $OUT/ncu_gla.csv 2>/dev/null
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaGla.St*:CudaGla.Uns*:CudaGla.Mixed*:CudaDeltaRule.St*:CudaLinearAttention.Fixed*' 2>&1 | tail -n 4 | tee $OUT/memcheck.log
timeout 150 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter='CudaGla.StateCarries*:CudaGla.Mixed*:CudaDeltaRule.StateCarries*' 2>&1 | tail -n 4 | tee $OUT/racecheck.log
timeout 200 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
S="--set model.d_model=768 --set model.n_layers=12 --set model.n_heads=6 --set model.head_dim=128 --set model.vocab_size=32000 --set data.seq_len=2048 --set data.batch_size=8"
timeout 60 $C/train_step --device cuda --precision bf16 --config configs/presets/gla.toml $S 2>&1 | tail -1 | tee $OUT/train_step.log
S="--set model.d_model=768 --set model.n_layers=12 --set model.n_heads=12 --set model.head_dim=64 --set model.vocab_size=32000 --set data.seq_len=2048 --set data.batch_size=8"
for preset in retnet gated_deltanet; do
  timeout 60 $C/train_step --device cuda --precision bf16 --config configs/presets/$preset.toml $S 2>&1 | tail -1 | tee -a $OUT/train_step.log
done
