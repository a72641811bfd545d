// Inference on the GPU (`linarch generate|serve|eval --device cuda`). A CUDA copy of a model in fp32 (the
// exact scans or, for heads of 64 or 128, the recurrent step kernels; the fp32 softmax kernels and the
// KV-cache decode kernel; HLA's fp32 chunkwise kernels) gives the CPU model's logits through a prefill and
// token-by-token decoding, for every preset at a test size. The engine on the GPU draws the CPU engine's
// tokens for greedy, temperature and top-k requests (the fused GPU sampler) and penalised ones (whole rows
// on the host), with the same log-probabilities; the evaluation's scorer gives the CPU's logits over a sequence
// longer than its pieces. Skipped (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/spec.hpp"
#include "eval/evaluate.hpp"
#include "infer/engine.hpp"
#include "model/language_model.hpp"
#include "support/gpu.hpp"
#include "support/models.hpp"
#include "support/testkit.hpp"

using namespace linarch;

namespace {

// fp32 on both devices, different summation orders: ~1e-6 relative on logits.
constexpr double kLogitTolerance = 1e-4;
constexpr int64_t kVocab = 64;

ModelSpec preset_at_test_size(const std::string& preset, const std::string& extra = "") {
    std::vector<std::string> overrides = {"model.d_model=64", "model.n_layers=2", "model.n_heads=2",
                                          "model.head_dim=32", "model.vocab_size=64"};
    for (const std::string& override : testkit::split_overrides(extra)) overrides.push_back(override);
    return testkit::load_preset(preset, overrides).model;
}

// The CPU model's parameters on a new GPU model.
std::unique_ptr<LanguageModel> on_gpu(const LanguageModel& cpu) {
    auto gpu = std::make_unique<LanguageModel>(cpu.spec(), DType::f32, Device::cuda);
    auto& to = gpu->parameters().all();
    const auto& from = cpu.parameters().all();
    EXPECT_EQ(to.size(), from.size());
    for (size_t i = 0; i < to.size(); ++i) to[i].value.copy_from(from[i].value);
    return gpu;
}

int32_t argmax(const Tensor& logits) {
    const std::vector<double> row = logits.to_vector();
    return int32_t(std::max_element(row.begin(), row.end()) - row.begin());
}

}  // namespace

TEST(CudaInference, PrefillAndDecodeGiveTheCpuLogitsForEveryPreset) {
    SKIP_WITHOUT_GPU();
    const std::vector<std::pair<std::string, std::string>> presets = {
        {"linear_attention", ""}, {"retnet", ""}, {"gla", ""},   {"deltanet", ""},
        {"gated_deltanet", ""},   {"mamba2", ""}, {"hgrn2", ""}, {"gated_deltanet", "model.mixer.rotation=rope"},
        {"fox", ""},              {"gated_attention", ""},       {"gated_deltanet_hybrid", "model.hybrid_every=2"},
        {"hla", ""},              {"hla", "model.mixer.hla_masked=false"}, {"hla", "model.mixer.decay=scalar"},
        {"gated_deltanet", "model.mixer.rotation=grape_planes"}, {"gla", "model.mixer.rotation=grape_mixture"},
        // Prompt and decoding fill 49 of the 64 cells (the decode step's state stays on the host).
        {"linear_attention",
         "model.mixer.decay=spatial model.mixer.grid_height=8 model.mixer.grid_width=8 data.seq_len=64"},
        // Heads of 64: decoding takes the recurrent step kernels (the others take the exact scans).
        {"linear_attention", "model.head_dim=64"}, {"retnet", "model.head_dim=64"}, {"gla", "model.head_dim=64"},
        {"deltanet", "model.head_dim=64"},         {"gated_deltanet", "model.head_dim=64"},
        {"hgrn2", "model.head_dim=64"}};
    uint64_t stream = 4100;
    for (const auto& [preset, extra] : presets) {
        SCOPED_TRACE(preset + " " + extra);
        LanguageModel cpu(preset_at_test_size(preset, extra));
        cpu.initialize(stream++);
        const auto gpu = on_gpu(cpu);
        auto cpu_state = cpu.new_decode_state();
        auto gpu_state = gpu->new_decode_state();
        // A prompt long enough for the chunkwise forms, then tokens one at a time.
        std::vector<int32_t> prompt(37);
        for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 29 + stream) % kVocab);
        Tensor cpu_logits = Tensor::empty({1, kVocab}, DType::f32);
        Tensor gpu_logits = Tensor::empty({1, kVocab}, DType::f32, Device::cuda);
        cpu.step(cpu_state, prompt, cpu_logits);
        gpu->step(gpu_state, prompt, gpu_logits);
        double worst = testkit::relative_error(gpu_logits.to(Device::cpu), cpu_logits);
        for (int t = 0; t < 12; ++t) {
            const int32_t token = argmax(cpu_logits);
            cpu.step(cpu_state, token, cpu_logits);
            gpu->step(gpu_state, token, gpu_logits);
            worst = std::max(worst, testkit::relative_error(gpu_logits.to(Device::cpu), cpu_logits));
        }
        EXPECT_LT(worst, kLogitTolerance);
    }
}

TEST(CudaInference, TheEngineOnTheGpuDrawsTheCpuTokens) {
    SKIP_WITHOUT_GPU();
    LanguageModel cpu(preset_at_test_size("gated_deltanet_hybrid", "model.hybrid_every=2"));
    cpu.initialize(4300);
    const auto gpu = on_gpu(cpu);
    std::vector<GenerationRequest> requests(5);
    for (size_t r = 0; r < requests.size(); ++r) {
        requests[r].prompt = {int32_t(r + 1), 7, 11, int32_t(20 + r)};
        requests[r].max_tokens = 14;
        requests[r].seed = 50 + r;
    }
    requests[1].sampling.temperature = 0.8;     // the fused sampler on both devices
    requests[2].sampling.top_k = 5;             // the fused sampler's filters on both devices
    requests[3].sampling.temperature = 0.7;
    requests[3].top_logprobs = 2;
    requests[4].sampling.temperature = 0;
    requests[4].sampling.repetition_penalty = 1.3;
    // Each request's tokens and log-probabilities, by request.
    auto run = [&](const LanguageModel& model) {
        Engine engine(model, nullptr, 8);
        for (const GenerationRequest& request : requests) engine.submit(request);
        std::map<int64_t, std::vector<TokenEvent>> events;
        while (!engine.idle())
            for (const TokenEvent& event : engine.step()) events[event.request].push_back(event);
        return events;
    };
    const auto on_cpu = run(cpu), on_device = run(*gpu);
    ASSERT_EQ(on_cpu.size(), requests.size());
    ASSERT_EQ(on_device.size(), requests.size());
    for (const auto& [id, expected] : on_cpu) {
        SCOPED_TRACE(id);
        const std::vector<TokenEvent>& got = on_device.at(id);
        ASSERT_EQ(got.size(), expected.size());
        for (size_t t = 0; t < got.size(); ++t) {
            EXPECT_EQ(got[t].token, expected[t].token) << t;
            ASSERT_EQ(got[t].logprobs.has_value(), expected[t].logprobs.has_value());
            if (got[t].logprobs) {
                EXPECT_NEAR(got[t].logprobs->logprob, expected[t].logprobs->logprob, 1e-4) << t;
            }
        }
    }
}

TEST(CudaInference, TheScorerOnTheGpuGivesTheCpuLogits) {
    SKIP_WITHOUT_GPU();
    LanguageModel cpu(preset_at_test_size("gated_deltanet_hybrid", "model.hybrid_every=2"));
    cpu.initialize(4400);
    const auto gpu = on_gpu(cpu);
    std::vector<int32_t> tokens(150);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 37 + 11) % kVocab);
    // Pieces of 64 tokens: the state carries across three of them.
    Tensor expected = Tensor::empty({150, kVocab}, DType::f32), got = Tensor::empty({150, kVocab}, DType::f32);
    ModelScorer(cpu, 64).score(tokens, expected);
    ModelScorer(*gpu, 64).score(tokens, got);
    EXPECT_LT(testkit::relative_error(got, expected), kLogitTolerance);
}
