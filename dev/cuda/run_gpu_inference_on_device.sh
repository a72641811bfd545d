#!/bin/bash
# One device call for inference on the GPU (`linarch generate|serve|eval --device cuda`): the CUDA inference,
# softmax-attention (decode included) and strided-copy tests, compute-sanitizer memcheck on them, then the
# CLI end to end — train a small model on synthetic data, generate from it on the CPU and on the GPU
# (greedy: the same text), serve it from the GPU and ask over HTTP — and the decode speed of a ~125M Gated
# DeltaNet through `linarch generate` on both devices. Logs go under $OUT.
#
# Carry build-cuda-sample/carry.tar.xz: as dev/cuda/run_cuda_op_tests_on_device.sh packs it, plus
# test_infer, test_core and bin/linarch (stripped) next to test_ops.
set -o pipefail
source dev/cuda/device_env.sh
timeout 120 $C/test_infer --gtest_filter='Cuda*' 2>&1 | tee $OUT/test_infer.log | summary
timeout 60 $C/test_ops --gtest_filter='CudaSoftmax*' 2>&1 | tee $OUT/test_softmax.log | summary
timeout 60 $C/test_core --gtest_filter='CudaDevice*' 2>&1 | tee $OUT/test_core.log | summary
timeout 200 compute-sanitizer --tool memcheck $C/test_infer --gtest_filter='CudaInference.TheEngine*' 2>&1 | tail -n 4 | tee $OUT/memcheck.log
timeout 60 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaSoftmaxAttention.Decode*' 2>&1 | tail -n 3 | tee -a $OUT/memcheck.log
# The CLI end to end on a small MQAR model.
L=$C/linarch
R=/tmp/run
timeout 120 $L train --config configs/presets/gated_deltanet_hybrid.toml --out $R --steps 30 --set data.task=mqar \
  --set model.vocab_size=259 --set data.task_vocab_size=64 --set data.seq_len=128 --set data.batch_size=8 \
  --set run.eval_every=0 --set run.checkpoint_every=30 --device cuda 2>&1 | tail -2 | tee $OUT/cli.log
for device in cpu cuda; do
  timeout 60 $L generate --checkpoint $R --prompt "the lord" --max-tokens 48 --temperature 0 --device $device > $OUT/generate_$device.txt 2>&1
done
cmp $OUT/generate_cpu.txt $OUT/generate_cuda.txt && echo "generate: cpu and cuda greedy texts are identical" | tee -a $OUT/cli.log
for device in cpu cuda; do
  timeout 120 $L eval --checkpoint $R --suite mqar --mqar-lengths 64,128 --mqar-pairs 4 --mqar-examples 64 \
    --device $device --json $OUT/eval_$device.json > /dev/null 2>&1
done
python3 -c "import json,sys; a,b=(json.load(open(f'$OUT/eval_{d}.json')) for d in ('cpu','cuda')); \
ra,rb=a['results'],b['results']; print('eval mqar cpu vs cuda:', [(x['metric'],x.get('seq_len'),x['value'],y['value']) for x,y in zip(ra,rb)])" | tee -a $OUT/cli.log
(timeout 60 $L serve --checkpoint $R --port 18080 --device cuda > $OUT/serve.log 2>&1 &)
sleep 4
curl -s http://127.0.0.1:18080/v1/completions -H 'Content-Type: application/json' \
  -d '{"prompt": "the lord", "max_tokens": 24, "temperature": 0, "n": 2}' | tee $OUT/serve_reply.json; echo
pkill -f "serve --checkpoint $R" || true
# Decode speed: a ~125M Gated DeltaNet (1 training step for a checkpoint), 256 tokens greedy.
B=/tmp/big
timeout 120 $L train --config configs/presets/gated_deltanet.toml --out $B --steps 1 --set data.task=mqar \
  --set model.d_model=768 --set model.n_layers=12 --set model.n_heads=12 --set model.head_dim=64 \
  --set model.vocab_size=32000 --set data.task_vocab_size=64 --set data.seq_len=128 --set data.batch_size=2 \
  --set run.eval_every=0 --set run.checkpoint_every=1 --device cuda 2>&1 | tail -1
for device in cuda cpu; do
  /usr/bin/time -f "$device: %e s wall" timeout 200 $L generate --checkpoint $B --prompt "x" --max-tokens 256 \
    --temperature 0 --tokenizer byte --device $device > /dev/null 2>> $OUT/decode_speed.log
done
cat $OUT/decode_speed.log
