// qemu-guest-agent framing: a stream of JSON objects split wherever the
// channel splits it, resynchronised by 0xFF and after errors, and bounded in
// memory whatever arrives.

#include <doctest/doctest.h>

#include "agent/qga/qga_framing.hpp"
#include "tests/unit/qga_test_rig.hpp"

using namespace quiesce;
using agent::qga::Frame;
using agent::qga::FramingLimits;
using agent::qga::JsonStreamSplitter;
using test::QgaRig;
using test::reply_lines;

namespace {

std::vector<Frame> split(std::string_view input, FramingLimits limits = {}) {
  JsonStreamSplitter splitter(limits);
  std::vector<Frame> frames;
  splitter.feed(input, frames);
  return frames;
}

const std::string kPing = R"({"execute":"guest-ping"})";

std::string sync(std::int64_t id) {
  return R"({"execute":"guest-sync","arguments":{"id":)" + std::to_string(id) + "}}";
}

std::string sync_delimited(std::int64_t id) {
  return "\xFF" R"({"execute":"guest-sync-delimited","arguments":{"id":)" + std::to_string(id) +
         "}}";
}

}  // namespace

TEST_CASE("qga framing: objects back to back, with or without whitespace, are split whole") {
  auto frames = split(kPing + kPing + "\n  \t" + R"({"a":[1,{"b":"}]\"{"}],"c":null})" + "\r\n");
  REQUIRE(frames.size() == 3);
  CHECK(frames[0].kind == Frame::Kind::value);
  CHECK(frames[0].text == kPing);
  CHECK(frames[1].text == kPing);
  CHECK(nlohmann::json::parse(frames[2].text)["a"][1]["b"] == "}]\"{");
}

TEST_CASE("qga framing: input split at every byte gives the same replies as one write") {
  QgaRig rig;
  const std::string input = sync(1) + kPing + R"({"execute":"guest-sync","arguments":{"id":-5},"id":"x"})" +
                            sync_delimited(9) + R"({"execute":"nope"})";
  auto whole = rig.service->connect("test", true)->feed(input);
  auto connection = rig.service->connect("test", true);
  std::string bytewise;
  for (char c : input) {
    auto output = connection->feed(std::string_view(&c, 1));
    CHECK_FALSE(output.close);
    bytewise += output.bytes;
  }
  CHECK(bytewise == whole.bytes);
  auto lines = reply_lines(whole.bytes);
  REQUIRE(lines.size() == 5);
  CHECK(lines[0] == R"({"return":1})");
  CHECK(lines[1] == R"({"return":{}})");
  CHECK(nlohmann::json::parse(lines[2]) == nlohmann::json::parse(R"({"return":-5,"id":"x"})"));
  CHECK(lines[3] == "\xFF" R"({"return":9})");
  CHECK(nlohmann::json::parse(lines[4])["error"]["class"] == "CommandNotFound");
}

TEST_CASE("qga framing: guest-sync-delimited and the next command in one write get both answers") {
  QgaRig rig;
  auto connection = rig.service->connect("proxmox", false);
  auto output = connection->feed(sync_delimited(123456) + R"({"execute":"guest-fsfreeze-status"})");
  CHECK(output.bytes == "\xFF{\"return\":123456}\n{\"return\":\"thawed\"}\n");
}

TEST_CASE("qga framing: a 0xFF drops the partial object before it, with no reply") {
  QgaRig rig;
  auto connection = rig.service->connect("test", false);
  CHECK(connection->feed(R"({"execute":"guest-ping","arguments":{"x":"abc)").bytes.empty());
  auto output = connection->feed(sync_delimited(7));
  CHECK(output.bytes == "\xFF{\"return\":7}\n");
  // Inside a string too.
  CHECK(connection->feed(R"({"execute":"gu)" "\xFF" + kPing).bytes == "{\"return\":{}}\n");
}

TEST_CASE("qga framing: garbage gives one error reply, then the next command runs") {
  QgaRig rig;
  auto connection = rig.service->connect("test", false);
  SUBCASE("garbage, a newline, a sync") {
    auto output = connection->feed("this is not json at all !!! ]]] ::: \n" + sync(5));
    auto lines = reply_lines(output.bytes);
    REQUIRE(lines.size() == 2);
    CHECK(nlohmann::json::parse(lines[0])["error"]["class"] == "GenericError");
    CHECK(lines[1] == R"({"return":5})");
  }
  SUBCASE("garbage running straight into a command") {
    auto lines = reply_lines(connection->feed("xyz" + kPing).bytes);
    REQUIRE(lines.size() == 2);
    CHECK(nlohmann::json::parse(lines[0]).contains("error"));
    CHECK(lines[1] == R"({"return":{}})");
  }
  SUBCASE("a syntax error inside an object") {
    auto lines = reply_lines(connection->feed(R"({"execute" "guest-ping"})" "\n" + sync(6)).bytes);
    REQUIRE(lines.size() == 2);
    CHECK(nlohmann::json::parse(lines[0])["error"]["desc"].get<std::string>().find("expecting") !=
          std::string::npos);
    CHECK(lines[1] == R"({"return":6})");
  }
  SUBCASE("a scalar the splitter collects but the parser refuses") {
    auto lines = reply_lines(connection->feed(R"({"execute":"guest-ping","id":tru})" + sync(8)).bytes);
    REQUIRE(lines.size() == 2);
    CHECK(nlohmann::json::parse(lines[0])["error"]["desc"].get<std::string>().starts_with(
        "JSON parse error"));
    CHECK(lines[1] == R"({"return":8})");
  }
}

TEST_CASE("qga framing: a truncated object followed by a new command fails once, then runs it") {
  QgaRig rig;
  auto connection = rig.service->connect("libvirt", false);
  auto lines = reply_lines(connection->feed(R"({"execute":"guest-ping")" + sync(1700000000123)).bytes);
  REQUIRE(lines.size() == 2);
  CHECK(nlohmann::json::parse(lines[0])["error"]["class"] == "GenericError");
  CHECK(lines[1] == R"({"return":1700000000123})");
  // Cut in the middle of a string: the new command's quote chars are data
  // of the old string, so only a 0xFF resynchronises, as with qemu-ga.
  CHECK(connection->feed(R"({"execute":"guest-pi)").bytes.empty());
  CHECK(connection->feed(sync_delimited(2)).bytes == "\xFF{\"return\":2}\n");
}

TEST_CASE("qga framing: 100,000-deep nesting is refused without recursion or unbounded memory") {
  const std::string deep = std::string(100'000, '[') + std::string(100'000, ']');
  SUBCASE("the splitter: one limit error, the rest of the value skipped to its end") {
    JsonStreamSplitter splitter(FramingLimits{1024 * 1024, 64});
    std::vector<Frame> frames;
    splitter.feed(deep, frames);
    CHECK(splitter.buffered_bytes() == 0);
    splitter.feed(kPing, frames);
    REQUIRE(frames.size() == 2);
    CHECK(frames[0].kind == Frame::Kind::limit_exceeded);
    CHECK(frames[0].text.find("nesting") != std::string::npos);
    CHECK(frames[1].text == kPing);
  }
  SUBCASE("virtio-serial (cannot close): an error reply, then the channel works again") {
    QgaRig rig;
    auto connection = rig.service->connect("virtio-serial", false);
    auto output = connection->feed(R"({"execute":"guest-ping","arguments":{"a":)" + deep + "}}");
    CHECK_FALSE(output.close);
    auto lines = reply_lines(output.bytes);
    REQUIRE(lines.size() == 1);
    CHECK(nlohmann::json::parse(lines[0])["error"]["desc"].get<std::string>().find("nesting") !=
          std::string::npos);
    CHECK(connection->feed(sync_delimited(3)).bytes == "\xFF{\"return\":3}\n");
  }
  SUBCASE("a socket: an error reply and the connection is closed") {
    QgaRig rig;
    auto connection = rig.service->connect("unix", true);
    auto output = connection->feed(deep + kPing);
    CHECK(output.close);
    CHECK(reply_lines(output.bytes).size() == 1);
    CHECK(connection->feed(kPing).close);
  }
}

TEST_CASE("qga framing: 100 MB without a newline, fed in chunks, stays within the object limit") {
  constexpr std::size_t total = 100 * 1024 * 1024;
  constexpr std::size_t chunk_size = 64 * 1024;
  const FramingLimits limits{1024 * 1024, 64};
  SUBCASE("one string that never ends: one error, skipped up to its end") {
    QgaRig rig;
    auto connection = rig.service->connect("virtio-serial", false);
    std::string output = connection->feed(R"({"execute":"guest-sync","arguments":{"id":")").bytes;
    const std::string chunk(chunk_size, 'a');
    for (std::size_t sent = 0; sent < total; sent += chunk_size) {
      auto reply = connection->feed(chunk);
      CHECK_FALSE(reply.close);
      output += reply.bytes;
    }
    output += connection->feed("\"}}" + sync(4)).bytes;
    auto lines = reply_lines(output);
    REQUIRE(lines.size() == 2);
    CHECK(nlohmann::json::parse(lines[0])["error"]["desc"].get<std::string>().find("size limit") !=
          std::string::npos);
    CHECK(lines[1] == R"({"return":4})");
  }
  SUBCASE("the splitter never holds more than the object limit") {
    JsonStreamSplitter splitter(limits);
    std::vector<Frame> frames;
    splitter.feed(R"({"k":[)", frames);
    std::string chunk;
    while (chunk.size() < chunk_size) {
      chunk += "1234567,";
    }
    std::size_t peak = 0;
    for (std::size_t sent = 0; sent < total; sent += chunk.size()) {
      splitter.feed(chunk, frames);
      peak = std::max(peak, splitter.buffered_bytes());
    }
    CHECK(peak <= limits.max_object_bytes);
    REQUIRE(frames.size() == 1);
    CHECK(frames[0].kind == Frame::Kind::limit_exceeded);
  }
  SUBCASE("plain garbage: one error for all of it") {
    JsonStreamSplitter splitter(limits);
    std::vector<Frame> frames;
    const std::string chunk(chunk_size, 'z');
    for (std::size_t sent = 0; sent < total; sent += chunk_size) {
      splitter.feed(chunk, frames);
    }
    CHECK(splitter.buffered_bytes() == 0);
    CHECK(frames.size() == 1);
  }
}

TEST_CASE("qga framing: invalid UTF-8 is an error, valid UTF-8 passes through") {
  QgaRig rig;
  auto connection = rig.service->connect("test", false);
  for (const std::string bad : {"\xC3\x28", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                                "\xF8\x88\x80\x80\x80", "\x80"}) {
    CAPTURE(nlohmann::json(std::vector<int>(bad.begin(), bad.end())).dump());
    auto output = connection->feed(R"({"execute":"guest-ping","id":")" + bad + "\"}\n" + sync(1));
    auto lines = reply_lines(output.bytes);
    REQUIRE(lines.size() == 2);
    auto error = nlohmann::json::parse(lines[0]);
    CHECK(error["error"]["desc"].get<std::string>().find("UTF-8") != std::string::npos);
    CHECK(lines[1] == R"({"return":1})");
  }
  auto reply = test::call(*connection, {{"execute", "guest-ping"}, {"id", "caf\xC3\xA9 \xF0\x9F\x98\x80"}});
  CHECK(reply["id"] == "caf\xC3\xA9 \xF0\x9F\x98\x80");
}

TEST_CASE("qga framing: a top-level value that is not an object is refused as qemu-ga does") {
  QgaRig rig;
  auto connection = rig.service->connect("test", false);
  auto reply = nlohmann::json::parse(connection->feed("[1,2]").bytes);
  CHECK(reply["error"]["desc"] == "QMP input must be a JSON object");
  auto stray = reply_lines(connection->feed("42\n" + kPing).bytes);
  REQUIRE(stray.size() == 2);
  CHECK(stray[1] == R"({"return":{}})");
}
