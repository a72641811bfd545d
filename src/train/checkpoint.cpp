#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/safetensors.hpp"

namespace linarch {

namespace fs = std::filesystem;

namespace {
void fsync_directory(const fs::path& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

std::vector<fs::path> checkpoint_dirs(const fs::path& root) {
    std::vector<fs::path> dirs;
    if (!fs::exists(root)) return dirs;
    for (const auto& entry : fs::directory_iterator(root))
        if (entry.is_directory() && entry.path().filename().string().rfind("step-", 0) == 0) dirs.push_back(entry.path());
    std::sort(dirs.begin(), dirs.end());
    return dirs;
}

// Checks that `file` holds every tensor of `expected` with its shape, before anything is copied.
void check_tensors(const SafetensorsFile& file, const std::vector<std::pair<std::string, Shape>>& expected) {
    for (const auto& [name, shape] : expected) {
        LINARCH_CHECK(file.contains(name), "checkpoint {}: tensor \"{}\" is missing", file.path.string(), name);
        const Tensor& t = file.at(name);
        LINARCH_CHECK(t.shape() == shape, "checkpoint {}: tensor \"{}\" has shape {}, but the spec's model needs {}",
                      file.path.string(), name, shape_string(t.shape()), shape_string(shape));
        LINARCH_CHECK(t.dtype() == DType::f32, "checkpoint {}: tensor \"{}\" is {}, expected F32", file.path.string(),
                      name, dtype_name(t.dtype()));
    }
    LINARCH_CHECK(file.tensors.size() == expected.size(),
                  "checkpoint {}: holds {} tensors, the spec's model has {} (a different model?)", file.path.string(),
                  file.tensors.size(), expected.size());
}
}  // namespace

fs::path save_checkpoint(const fs::path& run_dir, const Spec& spec, const LanguageModel& model,
                         const AdamW& optimizer, const TrainerState& state, int keep) {
    const fs::path root = run_dir / "checkpoints";
    fs::create_directories(root);
    const std::string name = fmt::format("step-{:08}", state.step);
    const fs::path final_dir = root / name;
    const fs::path temp_dir = root / fmt::format(".tmp-{}-{}", name, ::getpid());
    fs::remove_all(temp_dir);
    fs::create_directories(temp_dir);

    std::vector<NamedTensor> weights, moments;
    size_t i = 0;
    for (const Parameter& p : model.parameters().all()) {
        // A GPU run's tensors are written from host copies: the files do not depend on the device.
        weights.push_back({p.name, p.value.to(Device::cpu)});
        moments.push_back({"m." + p.name, optimizer.first_moments()[i].to(Device::cpu)});
        moments.push_back({"v." + p.name, optimizer.second_moments()[i].to(Device::cpu)});
        ++i;
    }
    save_safetensors(temp_dir / "model.safetensors", weights, {{"format", "linarch"}, {"step", std::to_string(state.step)}});
    save_safetensors(temp_dir / "optimizer.safetensors", moments);
    write_file_atomic(temp_dir / "spec.toml", spec_to_toml(spec));
    const nlohmann::json trainer = {{"step", state.step},
                                    {"tokens_seen", state.tokens_seen},
                                    {"best_val_loss", state.best_val_loss},
                                    {"optimizer_steps", optimizer.steps_taken()},
                                    {"data", {{"epoch", state.data.epoch}, {"batch", state.data.batch}}},
                                    {"seed", spec.run.seed}};
    write_file_atomic(temp_dir / "trainer.json", trainer.dump(2) + "\n");
    fsync_directory(temp_dir);

    // A checkpoint of the same step (a resumed run saving again) is replaced only once the new one
    // is complete.
    if (fs::exists(final_dir)) {
        const fs::path old = root / fmt::format(".old-{}-{}", name, ::getpid());
        fs::rename(final_dir, old);
        fs::rename(temp_dir, final_dir);
        fs::remove_all(old);
    } else {
        fs::rename(temp_dir, final_dir);
    }
    fsync_directory(root);
    write_file_atomic(root / "latest", name + "\n");

    const auto dirs = checkpoint_dirs(root);
    for (size_t d = 0; d + size_t(keep) < dirs.size(); ++d)
        if (dirs[d] != final_dir) fs::remove_all(dirs[d]);
    return final_dir;
}

fs::path resolve_checkpoint(const fs::path& path) {
    if (fs::exists(path / "model.safetensors")) return path;
    const fs::path latest = path / "checkpoints" / "latest";
    LINARCH_CHECK(fs::exists(latest), "\"{}\" is neither a checkpoint directory (no model.safetensors) nor a run "
                  "directory (no checkpoints/latest)", path.string());
    std::string name = read_file(latest, "checkpoint pointer");
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    const fs::path dir = path / "checkpoints" / name;
    LINARCH_CHECK(fs::exists(dir / "model.safetensors"), "{} names checkpoint \"{}\", which has no model.safetensors",
                  latest.string(), name);
    return dir;
}

Spec read_checkpoint_spec(const fs::path& checkpoint_dir) {
    return load_spec((checkpoint_dir / "spec.toml").string());
}

void load_checkpoint(const fs::path& checkpoint_dir, LanguageModel& model, AdamW* optimizer, TrainerState* state) {
    auto& params = model.parameters().all();
    const SafetensorsFile weights = load_safetensors(checkpoint_dir / "model.safetensors");
    std::vector<std::pair<std::string, Shape>> expected;
    for (const Parameter& p : params) expected.emplace_back(p.name, p.value.shape());
    check_tensors(weights, expected);

    SafetensorsFile moments;
    nlohmann::json trainer;
    if (optimizer) {
        moments = load_safetensors(checkpoint_dir / "optimizer.safetensors");
        std::vector<std::pair<std::string, Shape>> expected_moments;
        for (const Parameter& p : params) {
            expected_moments.emplace_back("m." + p.name, p.value.shape());
            expected_moments.emplace_back("v." + p.name, p.value.shape());
        }
        check_tensors(moments, expected_moments);
    }
    if (state) {
        const fs::path trainer_path = checkpoint_dir / "trainer.json";
        trainer = nlohmann::json::parse(read_file(trainer_path, "trainer state"), nullptr, false);
        LINARCH_CHECK(!trainer.is_discarded() && trainer.contains("step") && trainer.contains("optimizer_steps"),
                      "checkpoint {}: trainer.json is not valid trainer state", trainer_path.string());
        const auto data = trainer.find("data");
        LINARCH_CHECK(data != trainer.end() && data->is_object() && data->contains("epoch") && data->contains("batch"),
                      "checkpoint {}: trainer.json has no data position (\"data\": {{\"epoch\", \"batch\"}}); it was "
                      "written by an older linarch and cannot be resumed exactly", trainer_path.string());
    }
    // Everything validated: only now is the model changed.
    for (Parameter& p : params) p.value.copy_from(weights.at(p.name));
    if (optimizer) {
        size_t i = 0;
        for (const Parameter& p : params) {
            optimizer->first_moments()[i].copy_from(moments.at("m." + p.name));
            optimizer->second_moments()[i].copy_from(moments.at("v." + p.name));
            ++i;
        }
        optimizer->set_steps_taken(trainer.value("optimizer_steps", int64_t(0)));
    }
    if (state) {
        state->step = trainer["step"].get<int64_t>();
        state->tokens_seen = trainer.value("tokens_seen", int64_t(0));
        state->best_val_loss = trainer.value("best_val_loss", 0.0);
        state->data = {trainer["data"]["epoch"].get<int64_t>(), trainer["data"]["batch"].get<int64_t>()};
    }
}

}  // namespace linarch
