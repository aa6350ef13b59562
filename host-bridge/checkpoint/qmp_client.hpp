#pragma once
// A small QMP (QEMU Machine Protocol) client over a Unix socket: reads the
// greeting, enters command mode with `qmp_capabilities`, and runs commands
// one at a time, each tagged with an id so its reply is told apart from the
// asynchronous events QEMU may send in between (those are skipped). Every
// read and write has a deadline, so a hung QEMU cannot hang the host side.

#include <chrono>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/error.hpp"

namespace quiesce::host {

class QmpClient {
 public:
  // Connects and negotiates capabilities; `timeout` bounds each step.
  [[nodiscard]] static Expected<QmpClient> connect(const std::string& socket_path,
                                                    std::chrono::milliseconds timeout);
  // The client of the QEMU listening on `socket_path`, or nothing when none
  // listens (no socket file, or nobody accepts). A QEMU that was just killed
  // can still hold its listening socket for a moment after its memory is
  // gone: the connect is accepted, then reset. That is QEMU going away, so it
  // is retried until the socket refuses. A QEMU that accepts and stays silent
  // (QMP serves one client at a time) is ErrorKind::conflict.
  [[nodiscard]] static Expected<std::optional<QmpClient>> connect_if_running(const std::string& socket_path,
                                                                            std::chrono::milliseconds timeout);
  ~QmpClient();
  QmpClient(QmpClient&& other) noexcept;
  QmpClient& operator=(QmpClient&& other) noexcept;
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Runs `command` and returns its "return" value. A QMP error reply
  // ({"error": {"class", "desc"}}) becomes ErrorKind::backend with
  // "<command>: <class>: <desc>"; a dead or silent QEMU becomes system.
  [[nodiscard]] Expected<nlohmann::json> execute(const std::string& command,
                                                 const nlohmann::json& arguments = nullptr);

  // `getfd`: hands QEMU a duplicate of `fd` (SCM_RIGHTS on the command's
  // bytes) under `name`, for commands that take "fd:<name>" (migrate,
  // migrate-incoming). The caller keeps its own `fd`.
  [[nodiscard]] Status pass_fd(const std::string& name, int fd);

 private:
  QmpClient(int fd, std::string socket_path, std::chrono::milliseconds timeout)
      : fd_(fd), socket_path_(std::move(socket_path)), timeout_(timeout) {}
  // One JSON message (QMP sends one per line).
  [[nodiscard]] Expected<nlohmann::json> read_message();
  [[nodiscard]] Status write_all(const std::string& data);
  // Runs an already tagged request and waits for the reply carrying `id`.
  [[nodiscard]] Expected<nlohmann::json> await_reply(const std::string& command, const std::string& id);

  int fd_ = -1;
  std::string socket_path_;
  std::chrono::milliseconds timeout_;
  std::string buffer_;  // bytes read past the last full line
  unsigned next_id_ = 1;
};

}  // namespace quiesce::host
