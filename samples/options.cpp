#include "options.hpp"

#include <charconv>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>

namespace serving_loop {
namespace {

template <typename T>
T parse_number(std::string_view name, std::string_view text, T min, T max) {
  T value{};
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size() || !(value >= min) ||
      !(value <= max)) {
    throw UsageError(std::string(name) + ": expected a number in [" + std::to_string(min) + ", " +
                     std::to_string(max) + "], got '" + std::string(text) + "'");
  }
  return value;
}

BackendChoice parse_backend(std::string_view text) {
  if (text == "auto") return BackendChoice::kAuto;
  if (text == "gpu") return BackendChoice::kGpu;
  if (text == "host") return BackendChoice::kHost;
  throw UsageError("--backend: expected auto, gpu or host, got '" + std::string(text) + "'");
}

}  // namespace

Options parse_options(int argc, char** argv) {
  constexpr int kMaxInt = std::numeric_limits<int>::max();
  Options options;
  bool layers_given = false;
  bool check_every_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view name = argv[i];
    std::string_view value;
    bool has_value = false;
    if (const auto equals = name.find('='); name.starts_with("--") && equals != name.npos) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
      has_value = true;
    }
    // The option's value: after '=', or the next argument.
    auto next = [&]() -> std::string_view {
      if (has_value) return value;
      if (i + 1 >= argc) throw UsageError(std::string(name) + ": missing value");
      return argv[++i];
    };
    auto flag = [&]() {
      if (has_value) throw UsageError(std::string(name) + ": takes no value");
    };

    if (name == "--help" || name == "-h") {
      flag();
      options.help = true;
    } else if (name == "--check") {
      flag();
      options.check_only = true;
    } else if (name == "--config") {
      options.config = next();
    } else if (name == "--backend") {
      options.backend = parse_backend(next());
    } else if (name == "--steps") {
      options.steps = parse_number(name, next(), 1, kMaxInt);
    } else if (name == "--seed") {
      options.seed =
          parse_number<std::uint32_t>(name, next(), 0, std::numeric_limits<std::uint32_t>::max());
    } else if (name == "--layers") {
      options.layers = parse_number(name, next(), 1, 1024);
      layers_given = true;
    } else if (name == "--check-every") {
      options.check_every = parse_number(name, next(), 0, kMaxInt);
      check_every_given = true;
    } else if (name == "--trace") {
      options.trace = next();
    } else if (name == "--rate") {
      options.arrival_rate = parse_number(name, next(), 1e-6, 1e6);
    } else if (name == "--token-budget") {
      options.token_budget = parse_number(name, next(), 1, kMaxInt);
    } else if (name == "--max-seqs") {
      options.max_seqs = parse_number(name, next(), 1, kMaxInt);
    } else if (name == "--json") {
      options.json = next();
    } else if (name == "--soak") {
      flag();
      options.soak = true;
    } else {
      throw UsageError("unknown option '" + std::string(argv[i]) + "'");
    }
  }
  if (options.soak) {  // explicit flags win, in whatever order they come
    if (!layers_given) options.layers = kSoakLayers;
    if (!check_every_given) options.check_every = kSoakCheckEvery;
  }
  return options;
}

}  // namespace serving_loop
