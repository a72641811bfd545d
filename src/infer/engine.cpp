#include "infer/engine.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "ops/dense.hpp"
#include "ops/fused_sampling.hpp"

namespace linarch {

Engine::Engine(const LanguageModel& model, const Tokenizer* tokenizer, int64_t max_batch)
    : model_(model), tokenizer_(tokenizer), max_batch_(max_batch) {
    LINARCH_CHECK(max_batch >= 1, "engine: max_batch must be ≥ 1, got {}", max_batch);
}

int64_t Engine::submit(GenerationRequest request) {
    const int64_t vocab = model_.spec().vocab_size;
    LINARCH_CHECK(!request.prompt.empty(), "request: prompt: at least one token is needed");
    for (int32_t token : request.prompt)
        LINARCH_CHECK(token >= 0 && token < vocab, "request: prompt: token {} is outside the vocabulary [0, {})",
                      token, vocab);
    for (int32_t token : request.stop_tokens)
        LINARCH_CHECK(token >= 0 && token < vocab, "request: stop_tokens: token {} is outside the vocabulary [0, {})",
                      token, vocab);
    LINARCH_CHECK(request.max_tokens >= 1, "request: max_tokens must be ≥ 1, got {}", request.max_tokens);
    LINARCH_CHECK(request.stop_strings.empty() || tokenizer_ != nullptr,
                  "request: stop_strings need a tokenizer to decode the text");
    check_sampling_options(request.sampling);
    const int64_t id = next_id_++;
    const uint64_t seed = request.seed;
    waiting_.push_back(Sequence{id, std::move(request), model_.new_decode_state(), RngStream(seed, stream_id("generate")),
                                {}, {}});
    return id;
}

void Engine::cancel(int64_t request) {
    std::erase_if(waiting_, [&](const Sequence& s) { return s.id == request; });
    std::erase_if(active_, [&](const Sequence& s) { return s.id == request; });
}

TokenEvent Engine::emit(Sequence& s, std::span<float> logits) {
    penalize_logits(logits, s.generated, s.request.sampling);
    const int32_t token = sample_token(logits, s.request.sampling, s.rng);
    std::optional<TokenLogprobs> logprobs;
    if (s.request.top_logprobs >= 0) logprobs = token_logprobs(logits, token, s.request.top_logprobs);
    return record(s, token, std::move(logprobs));
}

TokenEvent Engine::record(Sequence& s, int32_t token, std::optional<TokenLogprobs> logprobs) {
    TokenEvent event;
    event.request = s.id;
    event.token = token;
    event.logprobs = std::move(logprobs);
    s.generated.push_back(event.token);
    if (tokenizer_) {
        // Decoding the whole suffix keeps multi-token characters whole; the event gets the new text.
        const std::string text = tokenizer_->decode(s.generated);
        event.text = text.substr(std::min(text.size(), s.text.size()));
        s.text = text;
    }
    const auto& stops = s.request.stop_tokens;
    const bool stop_token = std::find(stops.begin(), stops.end(), event.token) != stops.end();
    bool stop_string = false;
    for (const std::string& stop : s.request.stop_strings) stop_string = stop_string || s.text.find(stop) != std::string::npos;
    if (stop_token || stop_string)
        event.finish = FinishReason::stop;
    else if (int64_t(s.generated.size()) >= s.request.max_tokens)
        event.finish = FinishReason::length;
    return event;
}

namespace {
// Rows `rows` of hidden [n, d] as a [rows, d] tensor on its device.
Tensor gather_rows(const Tensor& hidden, const std::vector<size_t>& rows) {
    Tensor out = Tensor::empty({int64_t(rows.size()), hidden.size(1)}, hidden.dtype(), hidden.device());
    for (size_t i = 0; i < rows.size(); ++i) out.narrow(0, int64_t(i), 1).copy_from(hidden.narrow(0, int64_t(rows[i]), 1));
    return out;
}

// Logits on the host in f32, for the samplers that need whole rows.
Tensor host_rows(const Tensor& logits) { return logits.to(Device::cpu).to(DType::f32); }
}  // namespace

std::vector<TokenEvent> Engine::draw_active(const Tensor& hidden) {
    const int64_t vocab = model_.spec().vocab_size;
    const Tensor& weight = model_.lm_head_weight();
    const size_t n = active_.size();
    std::vector<int32_t> tokens(n);
    std::vector<std::optional<TokenLogprobs>> logprobs(n);
    // Sequences whose penalties or top-n logprobs need the whole row: their logits, one GEMM.
    std::vector<size_t> plain;
    // The others, grouped by sampling options (one fused call per group).
    std::vector<std::pair<SamplingOptions, std::vector<size_t>>> fused;
    for (size_t b = 0; b < n; ++b) {
        const GenerationRequest& request = active_[b].request;
        if (request.sampling.penalized() || request.top_logprobs > 0) {
            plain.push_back(b);
            continue;
        }
        auto group = std::ranges::find_if(fused, [&](const auto& g) { return g.first == request.sampling; });
        if (group == fused.end()) group = fused.insert(fused.end(), {request.sampling, {}});
        group->second.push_back(b);
    }
    std::vector<TokenEvent> events(n);
    if (!plain.empty()) {
        Tensor logits = Tensor::empty({int64_t(plain.size()), vocab}, hidden.dtype(), hidden.device());
        ops::lm_head_logits(logits, gather_rows(hidden, plain), weight);
        Tensor rows = host_rows(logits);
        for (size_t i = 0; i < plain.size(); ++i)
            events[plain[i]] = emit(active_[plain[i]], std::span(rows.data<float>() + int64_t(i) * vocab, size_t(vocab)));
    }
    for (const auto& [options, members] : fused) {
        std::vector<RngStream> rngs;
        for (size_t b : members) rngs.push_back(active_[b].rng);
        std::vector<int32_t> drawn(members.size());
        Tensor chosen_logprobs = Tensor::empty({int64_t(members.size())}, hidden.dtype(), hidden.device());
        ops::lm_head_sample(drawn, &chosen_logprobs, gather_rows(hidden, members), weight, options, rngs);
        chosen_logprobs = chosen_logprobs.to(Device::cpu);
        for (size_t i = 0; i < members.size(); ++i) {
            Sequence& s = active_[members[i]];
            s.rng = rngs[i];
            std::optional<TokenLogprobs> logprob;
            if (s.request.top_logprobs == 0) logprob = TokenLogprobs{chosen_logprobs.flat(int64_t(i)), {}};
            events[members[i]] = record(s, drawn[i], std::move(logprob));
        }
    }
    return events;
}

std::vector<TokenEvent> Engine::step() {
    std::vector<TokenEvent> events;
    const int64_t vocab = model_.spec().vocab_size;
    // Decode one token for every sequence admitted in an earlier round.
    if (!active_.empty()) {
        const int64_t n = int64_t(active_.size());
        std::vector<LanguageModel::DecodeState*> states;
        std::vector<int32_t> tokens;
        for (Sequence& s : active_) {
            states.push_back(&s.state);
            tokens.push_back(s.generated.back());
        }
        Tensor hidden = Tensor::empty({n, model_.spec().d_model}, model_.parameters().dtype(),
                                      model_.parameters().device());
        model_.step_batch_hidden(states, tokens, hidden);
        events = draw_active(hidden);
    }
    // Admit waiting requests: prefill, then their first token.
    std::vector<Sequence> admitted;
    while (!waiting_.empty() && int64_t(active_.size() + admitted.size()) < max_batch_) {
        Sequence s = std::move(waiting_.front());
        waiting_.pop_front();
        Tensor logits = Tensor::empty({1, vocab}, model_.parameters().dtype(), model_.parameters().device());
        model_.step(s.state, s.request.prompt, logits);
        Tensor row_logits = host_rows(logits);
        events.push_back(emit(s, std::span(row_logits.data<float>(), size_t(vocab))));
        admitted.push_back(std::move(s));
    }
    for (Sequence& s : admitted) active_.push_back(std::move(s));
    // Finished sequences leave.
    std::erase_if(active_, [&](const Sequence& s) {
        for (const TokenEvent& e : events)
            if (e.request == s.id && e.finish != FinishReason::none) return true;
        return false;
    });
    return events;
}

}  // namespace linarch
