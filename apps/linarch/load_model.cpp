#include <memory>

#include "backend/cuda/device.hpp"
#include "commands.hpp"
#include "train/checkpoint.hpp"

namespace linarch::cli {

std::unique_ptr<LanguageModel> load_model(const std::filesystem::path& checkpoint_dir, const std::string& device,
                                          const std::string& command, TrainerState* state) {
    const Device where = device == "cuda" ? Device::cuda : Device::cpu;
    if (where == Device::cuda) cuda::require_device(command + " --device cuda");
    auto model = std::make_unique<LanguageModel>(read_checkpoint_spec(checkpoint_dir).model, DType::f32, where);
    load_checkpoint(checkpoint_dir, *model, nullptr, state);
    return model;
}

}  // namespace linarch::cli
