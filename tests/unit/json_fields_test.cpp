// JsonFields, the reader behind every config file, writer option and
// request body: types, ranges, unknown keys, and secrets read from files.
#include <doctest/doctest.h>

#include <fstream>

#include "quiesce/json_fields.hpp"
#include "tests/support/temp_dir.hpp"

using quiesce::FieldError;
using quiesce::JsonFields;

namespace {

// The message of the FieldError `read` throws ("" when it throws none).
template <typename Read>
std::string error_of(Read&& read) {
  try {
    read();
  } catch (const FieldError& error) {
    return error.what();
  }
  return "";
}

}  // namespace

TEST_CASE("json fields: types and ranges are checked and errors carry the field's path") {
  const auto json = nlohmann::json{{"name", 5}, {"count", 70000}, {"flag", "yes"}};
  CHECK(error_of([&] { JsonFields(json, "options").string("name"); })
            .find("options.name") == 0);
  CHECK(error_of([&] { JsonFields(json, "options").integer("count", 1, 1, 65535); })
            .find("options.count") == 0);
  CHECK(error_of([&] { JsonFields(json, "options").boolean("flag"); }).find("options.flag") == 0);
  CHECK(error_of([&] { JsonFields(json, "options").string("missing"); })
            .find("options.missing") == 0);
}

TEST_CASE("json fields: a key nobody asked for is refused by name") {
  const auto json = nlohmann::json{{"socket", "/s"}, {"sokcet", "/typo"}};
  JsonFields fields(json, "options");
  CHECK(fields.string("socket") == "/s");
  const auto message = error_of([&] { fields.reject_unknown(); });
  CHECK(message.find("options.sokcet") != std::string::npos);
}

TEST_CASE("json fields: secret_file reads the file and drops the trailing newline") {
  quiesce::test::TempDir dir("json-fields");
  const auto path = (dir / "secret").string();
  std::ofstream(path) << "s3cret word\r\n\n";
  const auto json = nlohmann::json{{"password_file", path}};  // JsonFields keeps a pointer
  JsonFields fields(json, "options");
  CHECK(fields.secret_file("password_file") == std::optional<std::string>("s3cret word"));
  fields.reject_unknown();  // the key counts as used

  const auto none = nlohmann::json::object();
  JsonFields absent(none, "options");
  CHECK_FALSE(absent.secret_file("password_file").has_value());
}

TEST_CASE("json fields: secret_file refuses relative, missing and empty files, naming the field") {
  quiesce::test::TempDir dir("json-fields");
  const auto empty = (dir / "empty").string();
  std::ofstream(empty) << "\n";
  for (const auto& [path, expected] :
       std::vector<std::pair<std::string, std::string>>{{"relative/pw", "not an absolute path"},
                                                        {(dir / "missing").string(), "cannot read"},
                                                        {empty, "is empty"}}) {
    CAPTURE(path);
    const auto message = error_of([&] {
      JsonFields(nlohmann::json{{"password_file", path}}, "writers[0].options")
          .secret_file("password_file");
    });
    CHECK(message.find("writers[0].options.password_file") == 0);
    CHECK(message.find(expected) != std::string::npos);
  }
}
