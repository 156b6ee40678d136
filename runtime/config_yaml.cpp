// YAML -> DispatchConfig. This file checks the shape of the document (keys, types, syntax); the
// value rules live once, in validate() (config.cpp). Their messages name a key path, which is
// resolved here to the node it came from, so every error reads "FILE:LINE:COL: <key>: ...".
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "moe_dispatch/config.hpp"
#include "moe_dispatch/errors.hpp"

namespace moe_dispatch {
namespace {

// One key a mapping accepts, and what its value may be (for messages).
struct KeySpec {
  std::string_view name;
  bool required;
  std::string allowed;
};

std::string int_range(std::int64_t lo, std::int64_t hi) {
  return "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
}

const std::vector<KeySpec>& top_level_keys() {
  static const std::vector<KeySpec> keys = {
      {"num_experts", true, int_range(1, kMaxExperts)},
      {"top_k", true, "an integer in 1..min(" + std::to_string(kMaxTopK) + ", num_experts)"},
      {"block_size", true, int_range(1, kMaxBlockSize)},
      {"buckets", true, "a non-empty list of ascending, unique, positive integer token counts"},
      {"pad_sorted_ids", false, "true or false"},
      {"overflow", false, "error or eager"},
      {"capture", false, "eager or lazy"},
      {"fixed_count_graphs_up_to", false, int_range(0, kMaxFixedCountTokens)},
      {"device", false, "an integer >= 0 (a CUDA device ordinal)"},
      {"log", false, "true or false"},
      {"expert_map", false,
       "null, or a mapping with either experts: [ids] or rank and world_size, plus an optional "
       "mode: drop or map_after"},
      {"expert_parallel", false,
       "null, or a mapping with world_size, rank and hidden_size, plus optional placement "
       "(contiguous or a list of owner ranks) and hidden_type (bf16 or float32)"},
  };
  return keys;
}

const std::vector<KeySpec>& expert_map_keys() {
  static const std::vector<KeySpec> keys = {
      {"experts", false,
       "a list of num_experts integers, each -1 (expert on another rank) or a unique local id in "
       "0..num_experts-1"},
      {"rank", false, "an integer in 0..world_size-1"},
      {"world_size", false, "an integer in 1..num_experts"},
      {"mode", false, "drop or map_after"},
  };
  return keys;
}

const std::vector<KeySpec>& expert_parallel_keys() {
  static const std::vector<KeySpec> keys = {
      {"world_size", true,
       "an integer in 1.." + std::to_string(kMaxWorldSize) +
           " (at most num_experts for the contiguous placement)"},
      {"rank", true, "an integer in 0..world_size-1"},
      {"placement", false,
       "contiguous (the default), or a list of num_experts integers: the owner rank of each "
       "global expert, in 0..world_size-1"},
      {"hidden_size", true,
       "a positive integer up to " + std::to_string(kMaxHiddenSize) +
           ", elements per hidden row: a multiple of 8 for bf16, of 4 for float32"},
      {"hidden_type", false, "bf16 or float32"},
  };
  return keys;
}

std::string key_list(const std::vector<KeySpec>& keys) {
  std::string list;
  for (const KeySpec& key : keys) list.append(list.empty() ? "" : ", ").append(key.name);
  return list;
}

const KeySpec& spec_of(const std::vector<KeySpec>& keys, std::string_view name) {
  return *std::find_if(keys.begin(), keys.end(), [&](const KeySpec& k) { return k.name == name; });
}

// Builds the "FILE:LINE:COL: " prefix and throws. yaml-cpp marks are 0-based, or null (-1) where it
// has no position; those point at the start of the file.
class ErrorSink {
 public:
  explicit ErrorSink(std::string source) : source_(std::move(source)) {}

  std::string where(const YAML::Mark& mark) const {
    const int line = mark.is_null() ? 1 : mark.line + 1;
    const int column = mark.is_null() ? 1 : mark.column + 1;
    return source_ + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
  }

  [[noreturn]] void fail(const YAML::Mark& at, std::string_view key, std::string_view problem,
                         std::string_view allowed) const {
    std::string message = where(at);
    message.append(key).append(": ").append(problem).append("; allowed: ").append(allowed);
    throw ConfigError(message);
  }

 private:
  std::string source_;
};

// A value to read: the node, where errors about it point, and its key path for messages.
struct Value {
  YAML::Node node;
  YAML::Mark mark;
  std::string key;
};

// One `key: value` pair of a mapping. A null value carries the mark of the token after it (often
// the next line), so errors about a missing value point at its key instead.
struct Entry {
  YAML::Node key;
  YAML::Node value;

  Value as_value(std::string path) const {
    return {value, value.IsNull() ? key.Mark() : value.Mark(), std::move(path)};
  }
};

using Entries = std::map<std::string, Entry, std::less<>>;

std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar: {
      constexpr std::size_t kMaxShown = 40;
      std::string text = node.Scalar();
      if (text.size() > kMaxShown) text = text.substr(0, kMaxShown) + "...";
      return (node.Tag() == "!" ? "the quoted string \"" : "\"") + text + "\"";
    }
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined value";
}

// Reads a mapping's entries, rejecting keys that are unknown, repeated or not plain names, and
// required keys that are missing. `prefix` is the mapping's key path ("" or "expert_map.").
Entries read_entries(const ErrorSink& errors, const YAML::Node& mapping, std::string_view prefix,
                     const std::vector<KeySpec>& keys) {
  const std::string allowed_keys = key_list(keys);
  Entries entries;
  for (auto it = mapping.begin(); it != mapping.end(); ++it) {
    // Copies: the iterator's pair is a temporary proxy, so a reference into it would dangle.
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    const std::string path = std::string(prefix) + (key.IsScalar() ? key.Scalar() : "?");
    if (!key.IsScalar()) {
      errors.fail(key.Mark(), path, "a key must be a plain name, got " + describe(key),
                  "the keys " + allowed_keys);
    }
    const auto known = std::find_if(keys.begin(), keys.end(),
                                    [&](const KeySpec& k) { return k.name == key.Scalar(); });
    if (known == keys.end())
      errors.fail(key.Mark(), path, "unknown key", "the keys " + allowed_keys);
    const auto [first, inserted] = entries.try_emplace(key.Scalar(), Entry{key, value});
    if (!inserted) {
      errors.fail(key.Mark(), path,
                  "repeated key (first given on line " +
                      std::to_string(first->second.key.Mark().line + 1) + ")",
                  "each key once");
    }
  }
  for (const KeySpec& key : keys) {
    if (key.required && !entries.contains(key.name)) {
      errors.fail(mapping.Mark(), std::string(prefix).append(key.name), "required key is missing",
                  key.allowed);
    }
  }
  return entries;
}

const Entry* find_entry(const Entries& entries, std::string_view name) {
  const auto it = entries.find(name);
  return it == entries.end() ? nullptr : &it->second;
}

// Plain decimal only: YAML 1.1 and 1.2 disagree on 0x10, 0o10, 010 and 1_000, and a configuration
// must mean the same thing to every tool that reads it. Quoted scalars are strings, not numbers.
int read_int(const ErrorSink& errors, const Value& value, std::string_view allowed) {
  const YAML::Node& node = value.node;
  const bool plain = node.Tag() == "?" || node.Tag() == "tag:yaml.org,2002:int";
  if (!node.IsScalar() || !plain) {
    errors.fail(value.mark, value.key, "expected an integer, got " + describe(node), allowed);
  }
  const std::string& text = node.Scalar();
  std::string_view digits = text;
  if (!digits.empty() && (digits.front() == '-' || digits.front() == '+')) digits.remove_prefix(1);
  const bool decimal = !digits.empty() && (digits.size() == 1 || digits.front() != '0') &&
                       std::all_of(digits.begin(), digits.end(), [](char c) {
                         return std::isdigit(static_cast<unsigned char>(c));
                       });
  if (!decimal) {
    errors.fail(value.mark, value.key, "expected a decimal integer, got " + describe(node),
                allowed);
  }
  const char* begin = text.data() + (text.front() == '+' ? 1 : 0);
  std::int64_t parsed = 0;
  const auto [end, ec] = std::from_chars(begin, text.data() + text.size(), parsed);
  if (ec != std::errc{} || parsed < std::numeric_limits<int>::min() ||
      parsed > std::numeric_limits<int>::max()) {
    errors.fail(value.mark, value.key, text + " does not fit in a 32-bit int", allowed);
  }
  return static_cast<int>(parsed);
}

bool read_bool(const ErrorSink& errors, const Value& value, std::string_view allowed) {
  const YAML::Node& node = value.node;
  if (node.IsScalar() && node.Tag() == "?") {
    const std::string& text = node.Scalar();
    if (text == "true" || text == "True" || text == "TRUE") return true;
    if (text == "false" || text == "False" || text == "FALSE") return false;
  }
  errors.fail(value.mark, value.key, "expected true or false, got " + describe(node), allowed);
}

// One of `options`, spelled as to_string() spells it.
template <typename Enum, std::size_t N>
Enum read_enum(const ErrorSink& errors, const Value& value, const std::array<Enum, N>& options,
               std::string_view allowed) {
  if (value.node.IsScalar()) {
    for (const Enum option : options) {
      if (value.node.Scalar() == to_string(option)) return option;
    }
  }
  errors.fail(value.mark, value.key, "unknown value " + describe(value.node), allowed);
}

template <typename T>
std::vector<T> read_int_list(const ErrorSink& errors, const Value& value,
                             std::string_view allowed) {
  const YAML::Node& list = value.node;
  if (!list.IsSequence()) {
    errors.fail(value.mark, value.key, "expected a list of integers, got " + describe(list),
                allowed);
  }
  std::vector<T> result;
  result.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const YAML::Node entry = list[i];
    // A null entry's own mark is the token after it; the list's mark is the closest true position.
    const Value item{entry, entry.IsNull() ? list.Mark() : entry.Mark(),
                     value.key + "[" + std::to_string(i) + "]"};
    result.push_back(static_cast<T>(read_int(errors, item, allowed)));
  }
  return result;
}

// An expert map given as rank + world_size; resolved with split_experts() once num_experts is
// known to be valid.
struct ExpertSplit {
  int rank = 0;
  int world_size = 1;
  ExpertMapMode mode = ExpertMapMode::kDrop;
};

struct ExpertMapSource {
  std::optional<ExpertMap> explicit_map;
  std::optional<ExpertSplit> split;
};

ExpertMapSource read_expert_map(const ErrorSink& errors, const Entry& entry) {
  const std::vector<KeySpec>& keys = expert_map_keys();
  const std::string& allowed_map = spec_of(top_level_keys(), "expert_map").allowed;
  if (entry.value.IsNull()) return {};
  if (!entry.value.IsMap()) {
    errors.fail(entry.value.Mark(), "expert_map",
                "expected a mapping, got " + describe(entry.value), allowed_map);
  }
  const Entries fields = read_entries(errors, entry.value, "expert_map.", keys);
  const Entry* experts = find_entry(fields, "experts");
  const Entry* rank = find_entry(fields, "rank");
  const Entry* world_size = find_entry(fields, "world_size");
  const Entry* mode = find_entry(fields, "mode");

  ExpertMapMode map_mode = ExpertMapMode::kDrop;
  if (mode != nullptr) {
    constexpr std::array kModes = {ExpertMapMode::kDrop, ExpertMapMode::kMapAfter};
    map_mode =
        read_enum(errors, mode->as_value("expert_map.mode"), kModes, spec_of(keys, "mode").allowed);
  }
  if (experts != nullptr && (rank != nullptr || world_size != nullptr)) {
    // Point at whichever of the two forms the document gives second.
    const Entry* split_key = rank != nullptr ? rank : world_size;
    const Entry* later = split_key->key.Mark().pos > experts->key.Mark().pos ? split_key : experts;
    errors.fail(later->key.Mark(), "expert_map." + later->key.Scalar(),
                "experts and rank/world_size are two ways to give the map; give one", allowed_map);
  }
  if (experts != nullptr) {
    ExpertMap map;
    map.mode = map_mode;
    map.global_to_local = read_int_list<std::int32_t>(
        errors, experts->as_value("expert_map.experts"), spec_of(keys, "experts").allowed);
    return {std::move(map), std::nullopt};
  }
  if (rank == nullptr && world_size == nullptr) {
    errors.fail(entry.value.Mark(), "expert_map", "gives neither experts nor rank and world_size",
                allowed_map);
  }
  if (rank == nullptr || world_size == nullptr) {
    const std::string_view missing = rank == nullptr ? "rank" : "world_size";
    errors.fail(entry.value.Mark(), "expert_map." + std::string(missing),
                "required key is missing (rank and world_size go together)",
                spec_of(keys, missing).allowed);
  }
  ExpertSplit split;
  split.rank = read_int(errors, rank->as_value("expert_map.rank"), spec_of(keys, "rank").allowed);
  split.world_size = read_int(errors, world_size->as_value("expert_map.world_size"),
                              spec_of(keys, "world_size").allowed);
  split.mode = map_mode;
  return {std::nullopt, split};
}

// The contiguous placement is an empty list in ExpertParallelSection; an empty list in the YAML is
// no placement at all, so it is refused here rather than read as contiguous.
std::vector<std::int32_t> read_placement(const ErrorSink& errors, const Value& value,
                                         std::string_view allowed) {
  if (value.node.IsScalar() && value.node.Scalar() == "contiguous") return {};
  if (!value.node.IsSequence()) {
    errors.fail(value.mark, value.key,
                "expected contiguous or a list of owner ranks, got " + describe(value.node),
                allowed);
  }
  if (value.node.size() == 0) errors.fail(value.mark, value.key, "the list is empty", allowed);
  return read_int_list<std::int32_t>(errors, value, allowed);
}

std::optional<ExpertParallelSection> read_expert_parallel(const ErrorSink& errors,
                                                          const Entry& entry) {
  const std::vector<KeySpec>& keys = expert_parallel_keys();
  if (entry.value.IsNull()) return std::nullopt;
  if (!entry.value.IsMap()) {
    errors.fail(entry.value.Mark(), "expert_parallel",
                "expected a mapping, got " + describe(entry.value),
                spec_of(top_level_keys(), "expert_parallel").allowed);
  }
  const Entries fields = read_entries(errors, entry.value, "expert_parallel.", keys);
  const auto value_of = [&](std::string_view name) {
    return fields.at(std::string(name)).as_value("expert_parallel." + std::string(name));
  };
  const auto allowed = [&](std::string_view name) -> const std::string& {
    return spec_of(keys, name).allowed;
  };
  ExpertParallelSection ep;
  ep.world_size = read_int(errors, value_of("world_size"), allowed("world_size"));
  ep.rank = read_int(errors, value_of("rank"), allowed("rank"));
  if (fields.contains("placement")) {
    ep.placement = read_placement(errors, value_of("placement"), allowed("placement"));
  }
  ep.hidden_size = read_int(errors, value_of("hidden_size"), allowed("hidden_size"));
  if (fields.contains("hidden_type")) {
    constexpr std::array kTypes = {HiddenType::kBFloat16, HiddenType::kFloat32};
    ep.hidden_type = read_enum(errors, value_of("hidden_type"), kTypes, allowed("hidden_type"));
  }
  return ep;
}

// The node a rule's key path names ("buckets[3]", "expert_map.experts"), or the deepest node on
// the path that exists.
YAML::Mark mark_of_path(const YAML::Node& root, std::string_view path) {
  YAML::Node node(root);
  while (!path.empty()) {
    const std::size_t end = path.find_first_of(".[");
    const std::string_view segment = path.substr(0, end);
    path = end == std::string_view::npos ? std::string_view{} : path.substr(end);
    YAML::Node next;
    if (!segment.empty()) {
      if (!node.IsMap()) break;
      for (auto it = node.begin(); it != node.end(); ++it) {
        if (it->first.IsScalar() && it->first.Scalar() == segment) next.reset(it->second);
      }
    } else if (path.front() == '.') {
      path.remove_prefix(1);
      continue;
    } else {  // "[index]"
      std::size_t index = 0;
      const auto [after, ec] = std::from_chars(path.data() + 1, path.data() + path.size(), index);
      path = path.substr(static_cast<std::size_t>(after - path.data()) + 1);
      if (ec != std::errc{} || !node.IsSequence() || index >= node.size()) break;
      next.reset(std::as_const(node)[index]);
    }
    if (!next.IsDefined() || next.IsNull()) break;
    node.reset(next);  // reset(), not operator=: assignment would overwrite the document's node
  }
  return node.Mark();
}

// Runs a rule check from config.cpp; re-throws its "config: <key>: ..." error at the key's node,
// with the key spelled as the YAML spells it.
template <typename Rules>
auto at_yaml_nodes(const ErrorSink& errors, const YAML::Node& root, Rules&& rules) {
  try {
    return std::forward<Rules>(rules)();
  } catch (const ConfigError& error) {
    constexpr std::string_view kPrefix = "config: ";
    std::string_view message = error.what();
    if (message.starts_with(kPrefix)) message.remove_prefix(kPrefix.size());
    std::string key(message.substr(0, message.find(": ")));
    const std::string_view rest = message.substr(key.size());
    constexpr std::string_view kCodeName = "expert_map.global_to_local";
    if (key.starts_with(kCodeName)) key.replace(0, kCodeName.size(), "expert_map.experts");
    throw ConfigError(errors.where(mark_of_path(root, key)) + key + std::string(rest));
  }
}

// yaml-cpp 0.7 (Debian 12) never returns from LoadAll() on some invalid inputs, "," alone among
// them (jbeder/yaml-cpp#1040, fixed upstream after 0.8.0 by #1319): the parser reports a document
// without consuming a token, and LoadAll() appends null documents until memory runs out. This pass
// walks the documents with events only and stops at one that starts where the previous one did.
class DocumentStarts : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { start = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  YAML::Mark start = YAML::Mark::null_mark();
};

// Throws YAML::ParserException where a document makes no progress.
void check_documents_advance(const std::string& text) {
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts events;
  int previous = -1;
  while (parser.HandleNextDocument(events)) {
    if (events.start.pos == previous) {
      throw YAML::ParserException(events.start, "unexpected token outside any collection");
    }
    previous = events.start.pos;
  }
}

// The one document of the text, which must be a mapping. Empty documents (a file of comments, a
// stray "---") count as absent.
YAML::Node load_root(const ErrorSink& errors, std::string_view text) {
  const std::string allowed = "one YAML mapping with the keys " + key_list(top_level_keys()) +
                              " (num_experts, top_k, block_size and buckets required)";
  std::vector<YAML::Node> parsed;
  try {
    const std::string owned(text);
    check_documents_advance(owned);
    parsed = YAML::LoadAll(owned);
  } catch (const YAML::Exception& error) {
    errors.fail(error.mark, "YAML syntax error", error.msg, allowed);
  }
  // Copied, not erased in place: erasing would shift nodes with YAML::Node::operator=, which
  // rewrites the node assigned to instead of rebinding it.
  std::vector<YAML::Node> documents;
  for (const YAML::Node& document : parsed) {
    if (!document.IsNull()) documents.push_back(document);
  }
  if (documents.empty()) {
    errors.fail(YAML::Mark::null_mark(), "(document)", "the configuration is empty", allowed);
  }
  if (documents.size() > 1) {
    errors.fail(documents[1].Mark(), "(document)", "a second YAML document follows the first",
                allowed);
  }
  const YAML::Node& root = documents.front();
  if (!root.IsMap()) {
    errors.fail(root.Mark(), "(document)", "the top level is " + describe(root), allowed);
  }
  return root;
}

}  // namespace

DispatchConfig parse_config(std::string_view yaml_text, const std::string& source_name) {
  const ErrorSink errors(source_name);
  const YAML::Node root = load_root(errors, yaml_text);
  const std::vector<KeySpec>& keys = top_level_keys();
  const Entries entries = read_entries(errors, root, "", keys);
  const auto value_of = [&](std::string_view name) {
    return entries.at(std::string(name)).as_value(std::string(name));
  };
  const auto allowed = [&](std::string_view name) -> const std::string& {
    return spec_of(keys, name).allowed;
  };
  const auto has = [&](std::string_view name) { return entries.contains(name); };

  DispatchConfig cfg;
  cfg.num_experts = read_int(errors, value_of("num_experts"), allowed("num_experts"));
  cfg.top_k = read_int(errors, value_of("top_k"), allowed("top_k"));
  cfg.block_size = read_int(errors, value_of("block_size"), allowed("block_size"));
  cfg.buckets = read_int_list<int>(errors, value_of("buckets"), allowed("buckets"));
  if (has("pad_sorted_ids")) {
    cfg.pad_sorted_ids = read_bool(errors, value_of("pad_sorted_ids"), allowed("pad_sorted_ids"));
  }
  if (has("overflow")) {
    constexpr std::array kPolicies = {OverflowPolicy::kError, OverflowPolicy::kEager};
    cfg.overflow = read_enum(errors, value_of("overflow"), kPolicies, allowed("overflow"));
  }
  if (has("capture")) {
    constexpr std::array kModes = {CaptureMode::kEager, CaptureMode::kLazy};
    cfg.capture = read_enum(errors, value_of("capture"), kModes, allowed("capture"));
  }
  if (has("fixed_count_graphs_up_to")) {
    cfg.fixed_count_graphs_up_to =
        read_int(errors, value_of("fixed_count_graphs_up_to"), allowed("fixed_count_graphs_up_to"));
  }
  if (has("device")) cfg.device = read_int(errors, value_of("device"), allowed("device"));
  if (has("log")) cfg.log = read_bool(errors, value_of("log"), allowed("log"));
  ExpertMapSource expert_map;
  if (const Entry* entry = find_entry(entries, "expert_map")) {
    expert_map = read_expert_map(errors, *entry);
  }
  cfg.expert_map = std::move(expert_map.explicit_map);
  if (const Entry* entry = find_entry(entries, "expert_parallel")) {
    cfg.expert_parallel = read_expert_parallel(errors, *entry);
  }

  at_yaml_nodes(errors, root, [&] { validate(cfg); });
  if (const std::optional<ExpertSplit>& split = expert_map.split) {
    // After validate(): split_experts() trusts num_experts, and its own errors name rank or
    // world_size. The map it returns is valid by construction, but expert_parallel allows no
    // map at all, which validate() can only see now.
    cfg.expert_map = at_yaml_nodes(errors, root, [&] {
      return split_experts(cfg.num_experts, split->rank, split->world_size, split->mode);
    });
    if (cfg.expert_parallel) at_yaml_nodes(errors, root, [&] { validate(cfg); });
  }
  return cfg;
}

DispatchConfig load_config(const std::filesystem::path& path) {
  const std::string name = path.string();
  const auto cannot_open = [&](std::string_view why) {
    throw ConfigError(name + ":1:1: cannot open the configuration file: " + std::string(why) +
                      "; allowed: a readable YAML file");
  };
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) cannot_open("no such file");
  if (std::filesystem::is_directory(status)) cannot_open("it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) cannot_open(std::generic_category().message(errno));
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) cannot_open("reading it failed");
  return parse_config(text, name);
}

}  // namespace moe_dispatch
