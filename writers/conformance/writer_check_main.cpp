// quiesce-writer-check: runs one writer through the protocol's edge cases
// (writers/conformance/conformance.hpp) and prints a pass/fail table.
//   quiesce-writer-check --type TYPE [--options JSON | --options-file F]
//                        [--level L] [--name N] [--json] [--verbose]
//                        [--call-timeout-ms N] [--short-deadline-ms N] [--stop-bound-ms N]
// Exit status: 0 every check passed, 1 some failed, 2 usage or config error.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "platform/broken_pipe.hpp"
#include "platform/scratch_directory.hpp"
#include "quiesce/json_fields.hpp"
#include "quiesce/writer_registry.hpp"
#include "writers/conformance/conformance.hpp"

namespace {

constexpr const char* usage_text =
    "usage: quiesce-writer-check --type TYPE [--options JSON | --options-file FILE]\n"
    "                            [--level application|database|filesystem] [--name NAME]\n"
    "                            [--json] [--verbose] [--call-timeout-ms N]\n"
    "                            [--short-deadline-ms N] [--stop-bound-ms N]\n"
    "Runs a writer (built-in, exec or plugin) through the writer protocol and its edge\n"
    "cases and prints a pass/fail table. Exit status: 0 all passed, 1 a check failed,\n"
    "2 usage or configuration error.\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "quiesce-writer-check: " << message << "\n" << usage_text;
  std::exit(2);
}

std::chrono::milliseconds parse_millis(std::string_view flag, const std::string& text) {
  try {
    std::size_t used = 0;
    long long value = std::stoll(text, &used);
    if (used != text.size() || value < 1 || value > 3600 * 1000) {
      throw std::out_of_range(text);
    }
    return std::chrono::milliseconds(value);
  } catch (const std::exception&) {
    usage_error(std::string(flag) + ": expected milliseconds (1..3600000), got '" + text + "'");
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Writers write to pipes (exec children); a child gone must be an error
  // return, not the end of this process.
  quiesce::platform::make_broken_pipe_an_error();

  std::string type;
  std::string options_text;
  std::string options_file;
  std::string level_text;
  std::string name = "check";
  bool json_output = false;
  bool verbose = false;
  quiesce::conformance::CheckLimits limits;

  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        usage_error(std::string(arg) + " needs a value");
      }
      return argv[++i];
    };
    if (arg == "--type") {
      type = value();
    } else if (arg == "--options") {
      options_text = value();
    } else if (arg == "--options-file") {
      options_file = value();
    } else if (arg == "--level") {
      level_text = value();
    } else if (arg == "--name") {
      name = value();
    } else if (arg == "--json") {
      json_output = true;
    } else if (arg == "--verbose" || arg == "-v") {
      verbose = true;
    } else if (arg == "--call-timeout-ms") {
      limits.call_timeout = parse_millis(arg, value());
    } else if (arg == "--short-deadline-ms") {
      limits.short_deadline = parse_millis(arg, value());
    } else if (arg == "--stop-bound-ms") {
      limits.stop_bound = parse_millis(arg, value());
    } else if (arg == "--help" || arg == "-h") {
      std::cout << usage_text;
      return 0;
    } else {
      usage_error("unknown argument '" + std::string(arg) + "'");
    }
  }
  if (type.empty()) {
    usage_error("--type is required");
  }
  if (!options_text.empty() && !options_file.empty()) {
    usage_error("give --options or --options-file, not both");
  }
  if (!options_file.empty()) {
    std::ifstream in(options_file);
    if (!in) {
      usage_error("cannot read --options-file '" + options_file + "'");
    }
    std::ostringstream text;
    text << in.rdbuf();
    options_text = text.str();
  }

  quiesce::WriterRegistry registry;
  quiesce::register_builtin_writers(registry);
  const auto* writer_type = registry.find(type);
  if (writer_type == nullptr) {
    std::string known;
    for (const auto& t : registry.type_names()) {
      known += (known.empty() ? "" : ", ") + t;
    }
    usage_error("unknown writer type '" + type + "' (known: " + known + ")");
  }

  quiesce::WriterSpec spec;
  spec.type = type;
  spec.name = name;
  spec.level = writer_type->default_level;
  if (!level_text.empty()) {
    auto level = quiesce::parse_level(level_text);
    if (!level) {
      usage_error("--level: expected application, database or filesystem, got '" + level_text +
                  "'");
    }
    spec.level = *level;
  }
  if (!options_text.empty()) {
    spec.options = nlohmann::json::parse(options_text, nullptr, false);
    if (spec.options.is_discarded() || !spec.options.is_object()) {
      usage_error("the writer options are not a JSON object");
    }
  }

  // Writer log lines go to stderr, so --json output on stdout stays clean.
  auto logger = std::make_shared<spdlog::logger>(
      "writer", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_level(verbose ? spdlog::level::debug : spdlog::level::warn);
  logger->set_pattern("[%l] %v");

  std::error_code ec;
  std::filesystem::path scratch_dir;
  try {
    scratch_dir = quiesce::platform::make_scratch_directory("quiesce-writer-check");
  } catch (const std::exception& e) {
    std::cerr << "quiesce-writer-check: " << e.what() << "\n";
    return 2;
  }
  std::filesystem::create_directories(scratch_dir / "run", ec);
  std::filesystem::create_directories(scratch_dir / "state", ec);
  quiesce::WriterEnvironment env{logger, (scratch_dir / "run").string(),
                                 (scratch_dir / "state").string()};

  // Refuse bad options once, clearly, instead of failing every check.
  try {
    [[maybe_unused]] auto probe = writer_type->create(spec, env);
  } catch (const quiesce::FieldError& e) {
    std::filesystem::remove_all(scratch_dir, ec);
    std::cerr << "quiesce-writer-check: bad writer options: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::filesystem::remove_all(scratch_dir, ec);
    std::cerr << "quiesce-writer-check: cannot create the writer: " << e.what() << "\n";
    return 2;
  }

  auto report = quiesce::conformance::run_checks(*writer_type, spec, env, limits);
  if (json_output) {
    auto json = report.to_json();
    json["type"] = type;
    json["level"] = quiesce::to_string(spec.level);
    std::cout << json.dump(2) << "\n";
  } else {
    std::cout << "quiesce-writer-check: type " << type << ", level "
              << quiesce::to_string(spec.level) << "\n\n"
              << report.to_table();
  }
  std::cout.flush();
  std::filesystem::remove_all(scratch_dir, ec);
  const int code = report.all_passed() ? 0 : 1;
  if (report.hung) {
    // A writer call is still running on a detached thread; returning from
    // main would destroy what it uses.
    std::_Exit(code);
  }
  return code;
}
