#include "infer/lookahead.hpp"

#include <algorithm>
#include <deque>
#include <map>

#include "core/error.hpp"

namespace linarch {

namespace {

// N-grams keyed by their first token: the continuations (N − 1 tokens each), most recent first,
// without duplicates, at most `limit` per key.
class NgramPool {
public:
    NgramPool(int64_t n, int64_t limit) : n_(n), limit_(limit) {}
    void add(std::span<const int32_t> ngram) {
        auto& list = pool_[ngram[0]];
        std::vector<int32_t> continuation(ngram.begin() + 1, ngram.end());
        std::erase(list, continuation);
        list.push_front(std::move(continuation));
        if (int64_t(list.size()) > limit_) list.pop_back();
    }
    // Every n-gram of `tokens` that ends at or after index `from`.
    void add_from(const std::vector<int32_t>& tokens, size_t from) {
        for (size_t end = std::max(from, size_t(n_ - 1)); end < tokens.size(); ++end)
            add(std::span(tokens).subspan(end + 1 - size_t(n_), size_t(n_)));
    }
    const std::deque<std::vector<int32_t>>* find(int32_t token) const {
        auto it = pool_.find(token);
        return it == pool_.end() ? nullptr : &it->second;
    }

private:
    int64_t n_, limit_;
    std::map<int32_t, std::deque<std::vector<int32_t>>> pool_;
};

// The sampling rule of the engine for one position: penalties over what was generated so far, then
// one draw from the request's stream.
int32_t draw(std::span<const float> logits_row, const GenerationRequest& request,
             const std::vector<int32_t>& generated, RngStream& rng) {
    std::vector<float> logits(logits_row.begin(), logits_row.end());
    penalize_logits(logits, generated, request.sampling);
    return sample_token(logits, request.sampling, rng);
}

}  // namespace

std::vector<int32_t> lookahead_generate(const LanguageModel& model, const GenerationRequest& request,
                                        const LookaheadOptions& options, LookaheadStats* stats) {
    LINARCH_CHECK(options.ngram >= 2, "lookahead: ngram must be ≥ 2, got {}", options.ngram);
    LINARCH_CHECK(options.window >= 0 && options.candidates >= 1,
                  "lookahead: window must be ≥ 0 and candidates ≥ 1, got {} and {}", options.window, options.candidates);
    LINARCH_CHECK(!request.prompt.empty() && request.max_tokens >= 1,
                  "lookahead: needs a prompt and max_tokens ≥ 1");
    check_sampling_options(request.sampling);
    const int64_t vocab = model.spec().vocab_size, n = options.ngram;
    const DType dtype = model.parameters().dtype();
    LookaheadStats local;
    LookaheadStats& st = stats ? *stats : local;
    st = {};
    RngStream rng(request.seed, stream_id("generate"));  // the engine's stream for this request
    NgramPool pool(n, options.candidates);
    std::vector<int32_t> history = request.prompt;  // prompt + generated: what the pool learns from
    pool.add_from(history, 0);

    // Prefill all but the last prompt token; the last one is fed with the first step's branches.
    auto committed = model.new_decode_state();
    if (request.prompt.size() > 1) {
        Tensor logits = Tensor::empty({1, vocab}, dtype);
        model.step(committed, std::span(request.prompt).first(request.prompt.size() - 1), logits);
        st.model_tokens += int64_t(request.prompt.size()) - 1;
    }
    int32_t last = request.prompt.back();
    std::vector<int32_t> generated;
    // Jacobi guesses: levels[0] oldest; each of W tokens for the positions after `last`.
    std::deque<std::vector<int32_t>> levels;
    auto fresh_guesses = [&]() {
        std::vector<int32_t> guesses(static_cast<size_t>(options.window));
        for (size_t i = 0; i < guesses.size(); ++i) guesses[i] = history[(i * 7919) % history.size()];
        return guesses;
    };

    auto stopped = [&](int32_t token) {
        return std::find(request.stop_tokens.begin(), request.stop_tokens.end(), token) != request.stop_tokens.end();
    };
    while (int64_t(generated.size()) < request.max_tokens) {
        ++st.steps;
        // 1. Lookahead branch: [last, guesses...] from a fork; the argmax after each prefix is the
        //    next level's guess one position further.
        if (options.window > 0) {
            if (levels.empty()) levels.push_back(fresh_guesses());
            std::vector<int32_t> branch{last};
            branch.insert(branch.end(), levels.back().begin(), levels.back().end() - 1);
            auto fork = committed.clone();
            Tensor logits = Tensor::empty({int64_t(branch.size()), vocab}, dtype);
            model.step(fork, branch, logits);
            st.model_tokens += int64_t(branch.size());
            const Tensor rows = logits.to(DType::f32);
            std::vector<int32_t> next(branch.size());
            for (size_t i = 0; i < branch.size(); ++i) {
                const float* row = rows.data<float>() + int64_t(i) * vocab;
                next[i] = int32_t(std::max_element(row, row + vocab) - row);
            }
            levels.push_back(std::move(next));
            while (int64_t(levels.size()) > n - 1) levels.pop_front();
            // Diagonals through the kept levels: one n-gram per column (preceded by `last` at level 0).
            if (int64_t(levels.size()) == n - 1)
                for (size_t column = 0; column + size_t(n - 1) <= size_t(options.window); ++column) {
                    std::vector<int32_t> ngram{column == 0 ? last : levels[0][column - 1]};
                    for (size_t level = 0; level < levels.size(); ++level) ngram.push_back(levels[level][column + level]);
                    pool.add(ngram);
                }
        }
        // 2. Verification branch: candidates continuing `last`, each on its own fork.
        struct Branch {
            std::vector<int32_t> tokens;  // [last, c_1 .. c_{N−1}]
            LanguageModel::DecodeState state;
            Tensor logits;  // f32 [N, V]: after each token
        };
        std::vector<Branch> branches;
        if (const auto* found = pool.find(last))
            for (const auto& continuation : *found) {
                Branch b{{last}, committed.clone(), {}};
                b.tokens.insert(b.tokens.end(), continuation.begin(), continuation.end());
                branches.push_back(std::move(b));
            }
        if (branches.empty()) branches.push_back({{last}, committed.clone(), {}});  // ordinary decoding
        // Branches of one length go through the model together (one read of the weights for all).
        std::map<size_t, std::vector<size_t>> by_length;
        for (size_t j = 0; j < branches.size(); ++j) by_length[branches[j].tokens.size()].push_back(j);
        for (const auto& [length, members] : by_length) {
            std::vector<LanguageModel::DecodeState*> states;
            std::vector<int32_t> tokens;
            for (size_t j : members) {
                states.push_back(&branches[j].state);
                tokens.insert(tokens.end(), branches[j].tokens.begin(), branches[j].tokens.end());
            }
            Tensor logits = Tensor::empty({int64_t(tokens.size()), vocab}, dtype);
            model.step_sequences(states, tokens, logits);
            st.model_tokens += int64_t(tokens.size());
            const Tensor rows = logits.to(DType::f32);
            for (size_t m = 0; m < members.size(); ++m)
                branches[members[m]].logits = rows.narrow(0, int64_t(m * length), int64_t(length)).contiguous();
        }
        // 3. Draw position by position from a branch whose tokens so far agree with the draws.
        size_t chosen = 0, accepted = 0;  // branch, and how many of its continuation tokens were drawn
        std::vector<int32_t> emitted;
        while (int64_t(generated.size() + emitted.size()) < request.max_tokens) {
            const Branch& b = branches[chosen];
            const float* row = b.logits.data<float>() + int64_t(accepted) * vocab;
            std::vector<int32_t> so_far = generated;
            so_far.insert(so_far.end(), emitted.begin(), emitted.end());
            const int32_t token = draw(std::span(row, size_t(vocab)), request, so_far, rng);
            emitted.push_back(token);
            if (stopped(token)) break;
            // Continue while some branch's next guessed token is the drawn one (same prefix so far).
            size_t next = branches.size();
            for (size_t j = 0; j < branches.size() && next == branches.size(); ++j) {
                const auto& t = branches[j].tokens;
                if (accepted + 1 < t.size() && t[accepted + 1] == token &&
                    std::equal(t.begin(), t.begin() + std::ptrdiff_t(accepted) + 1, branches[chosen].tokens.begin()))
                    next = j;
            }
            if (next == branches.size()) break;
            chosen = next;
            ++accepted;
        }
        // 4. Advance the committed state over [last, the accepted guesses].
        Branch& b = branches[chosen];
        if (accepted + 1 == b.tokens.size()) {
            committed = std::move(b.state);
        } else {
            Tensor logits = Tensor::empty({1, vocab}, dtype);
            model.step(committed, std::span(b.tokens).first(accepted + 1), logits);
            st.model_tokens += int64_t(accepted) + 1;
        }
        const size_t before = history.size();
        generated.insert(generated.end(), emitted.begin(), emitted.end());
        history.insert(history.end(), emitted.begin(), emitted.end());
        pool.add_from(history, before);
        st.tokens += int64_t(emitted.size());
        last = emitted.back();
        if (stopped(last)) break;
        // The Jacobi window moves with the committed tokens: drop the positions now decided.
        for (auto& level : levels) {
            const size_t drop = std::min(level.size(), emitted.size());
            level.erase(level.begin(), level.begin() + std::ptrdiff_t(drop));
            const auto fill = fresh_guesses();
            level.insert(level.end(), fill.begin(), fill.begin() + std::ptrdiff_t(drop));
        }
    }
    return generated;
}

}  // namespace linarch
