#!/bin/bash
# One device call for the delta rule's chunkwise forward and backward (issue 6): its CUDA op tests and the other CUDA
# suites of test_ops as a control, bench/cuda_mixers (the mixers at issue 6's shapes next to the machine's
# GEMM rate and copy bandwidth), compute-sanitizer memcheck and racecheck on CudaDeltaRule.*, test_train's
# CudaTraining (the bf16 run of Gated DeltaNet takes the kernels) and train_step on a ~117M Gated DeltaNet
# in bf16 at the anchors' shape. Logs go under $OUT.
#
# Carry build-cuda-sample/carry.tar.xz, packed as dev/cuda/run_cuda_op_tests_on_device.sh says, with
# build-cuda-sample/bin/cuda_mixers copied (and stripped) into carry/ next to train_step; and, for the
# variant harness, build-cuda-sample/dev (its build line is in dev/cuda/delta_rule_chunkwise.cu).
set -o pipefail
source dev/cuda/device_env.sh
[ -x build-cuda-sample/dev/delta_rule_chunkwise ] && timeout 120 build-cuda-sample/dev/delta_rule_chunkwise 2>&1 | tee $OUT/harness.log
timeout 120 $C/test_ops --gtest_filter='CudaDeltaRule.*' 2>&1 | tee $OUT/test_delta_rule.log | grep -E "^T=|OK|FAIL|Failure|Which|Expected|actual|message" | head -90
timeout 150 $C/test_ops --gtest_filter='Cuda*:DenseOps.*:*.MixedDevicesAreRefused' 2>&1 | tee $OUT/test_ops.log | summary
timeout 150 $C/cuda_mixers 2>&1 | tee $OUT/cuda_mixers.log
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaDeltaRule.St*:CudaDeltaRule.Uns*:CudaDeltaRule.Mixed*' 2>&1 | tail -n 4 | tee $OUT/memcheck.log
timeout 150 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter='CudaDeltaRule.StateCarries*:CudaDeltaRule.Mixed*' 2>&1 | tail -n 4 | tee $OUT/racecheck.log
timeout 200 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
S="--set model.d_model=768 --set model.n_layers=12 --set model.n_heads=12 --set model.head_dim=64 --set model.vocab_size=32000 --set data.seq_len=2048 --set data.batch_size=8"
timeout 100 $C/train_step --device cuda --precision bf16 --config configs/presets/gated_deltanet.toml $S 2>&1 | tail -2 | tee $OUT/train_step.log
