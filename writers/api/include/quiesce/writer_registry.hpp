#pragma once
// Writer types known to the agent, passed explicitly (no static-init
// registry): the agent builds one with register_builtin_writers(), tests build
// their own with fakes.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "quiesce/writer.hpp"

namespace quiesce {

// Creates a writer from its spec. Throws FieldError (paths relative to the
// writer's "options" object) when the options are wrong.
using WriterFactory =
    std::function<std::unique_ptr<Writer>(const WriterSpec& spec, const WriterEnvironment& env)>;

struct WriterType {
  std::string type;
  Level default_level = Level::application;
  std::string description;
  WriterFactory create;
};

class WriterRegistry {
 public:
  void add(WriterType type);
  [[nodiscard]] const WriterType* find(std::string_view type) const;
  [[nodiscard]] std::vector<std::string> type_names() const;

 private:
  std::map<std::string, WriterType, std::less<>> types_;
};

// Registers every writer built into the agent (delay, fsfreeze, hooks, ...).
void register_builtin_writers(WriterRegistry& registry);

}  // namespace quiesce
