#include "tests/db/postgres_server.hpp"

#include <libpq-fe.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <thread>

#include <doctest/doctest.h>

#include "tests/support/processes.hpp"

namespace quiesce::test::postgres {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const fs::path bin_dir = "/usr/lib/postgresql/15/bin";

std::string bin(const std::string& name) { return (bin_dir / name).string(); }

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

// A postgresql.conf line; the value is a quoted string, quotes doubled.
std::string conf_line(const std::string& setting) {
  const auto eq = setting.find('=');
  std::string value = setting.substr(eq + 1);
  std::string quoted;
  for (char c : value) {
    quoted += c;
    if (c == '\'') {
      quoted += '\'';
    }
  }
  return setting.substr(0, eq) + " = '" + quoted + "'\n";
}

void must(const std::vector<std::string>& argv, bool as_postgres = false) {
  std::string output;
  const int code = as_postgres ? run_as_postgres(argv, &output) : run_command(argv, &output);
  std::string command;
  for (const auto& arg : argv) {
    command += arg + " ";
  }
  INFO("command: " << command << "\noutput: " << output);
  REQUIRE(code == 0);
}

}  // namespace

int run_as_postgres(const std::vector<std::string>& argv, std::string* output) {
  std::vector<std::string> full{"runuser", "-u", "postgres", "--"};
  full.insert(full.end(), argv.begin(), argv.end());
  return run_command(full, output);
}

void give_to_postgres(const fs::path& path) { must({"chown", "-R", "postgres:postgres", path.string()}); }

void open_for_traversal(const fs::path& path) { ::chmod(path.c_str(), 0711); }

PostgresServer::PostgresServer(fs::path data_dir, fs::path socket_dir, fs::path log_file)
    : data_dir_(std::move(data_dir)), socket_dir_(std::move(socket_dir)), log_file_(std::move(log_file)) {
  fs::create_directories(socket_dir_);
  give_to_postgres(socket_dir_);
  std::ofstream(log_file_, std::ios::app).flush();
  give_to_postgres(log_file_);
}

PostgresServer::~PostgresServer() {
  if (!postmaster_pid()) {
    return;
  }
  std::string ignored;
  run_as_postgres({bin("pg_ctl"), "stop", "-D", data_dir_.string(), "-m", "immediate", "-w", "-t", "10"},
                  &ignored);
  kill_now();
}

void PostgresServer::init() {
  fs::create_directories(data_dir_);
  give_to_postgres(data_dir_);
  const auto pwfile = data_dir_.parent_path() / (data_dir_.filename().string() + ".pw");
  std::ofstream(pwfile) << superuser_password << "\n";
  give_to_postgres(pwfile);
  // -N: no fsync of the new cluster; the tests that need it on disk freeze
  // (and so sync) the filesystem anyway.
  must({bin("initdb"), "-D", data_dir_.string(), "-U", "postgres", "-N", "-A", "scram-sha-256",
        "--pwfile", pwfile.string()},
       true);
  fs::remove(pwfile);
}

bool PostgresServer::try_start(const std::vector<std::string>& settings, std::string& log_tail) {
  {
    std::ofstream conf(data_dir_ / "postgresql.conf", std::ios::app);
    conf << "\n# quiesce test settings\n" << conf_line("listen_addresses=")
         << conf_line("unix_socket_directories=" + socket_dir_.string())
         << conf_line("shared_buffers=16MB") << conf_line("max_connections=20")
         << conf_line("dynamic_shared_memory_type=posix");
    for (const auto& setting : settings) {
      conf << conf_line(setting);
    }
  }
  std::string output;
  const int code = run_as_postgres({bin("pg_ctl"), "start", "-w", "-t", "30", "-D", data_dir_.string(),
                                    "-l", log_file_.string()},
                                   &output);
  started_ = code == 0;
  log_tail = output + "\n" + log_text();
  return started_;
}

void PostgresServer::start(const std::vector<std::string>& settings) {
  std::string log_tail;
  const bool ok = try_start(settings, log_tail);
  INFO("pg_ctl start: " << log_tail);
  REQUIRE(ok);
}

void PostgresServer::stop_immediate() {
  std::string output;
  run_as_postgres({bin("pg_ctl"), "stop", "-D", data_dir_.string(), "-m", "immediate", "-w", "-t", "10"},
                  &output);
}

void PostgresServer::kill_now() {
  if (auto pid = postmaster_pid()) {
    // pg_ctl starts the postmaster in a session of its own: the group is its.
    ::kill(-*pid, SIGKILL);
    ::kill(*pid, SIGKILL);
    (void)eventually(5s, [&] { return ::kill(*pid, 0) != 0; });
  }
}

std::optional<pid_t> PostgresServer::postmaster_pid() const {
  std::ifstream in(data_dir_ / "postmaster.pid");
  long pid = 0;
  if (!(in >> pid) || pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) != 0) {
    return std::nullopt;
  }
  return static_cast<pid_t>(pid);
}

std::string PostgresServer::log_text() const {
  std::ifstream in(log_file_);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  return text.size() > 4000 ? text.substr(text.size() - 4000) : text;
}

PgSession::PgSession(const PostgresServer& server, const std::string& user,
                     const std::string& password, const std::string& dbname) {
  const std::string host = server.socket_dir().string();
  const std::string port = std::to_string(server.port());
  const char* keys[] = {"host", "port", "user", "password", "dbname", nullptr};
  const char* values[] = {host.c_str(), port.c_str(), user.c_str(), password.c_str(), dbname.c_str(),
                          nullptr};
  conn_ = PQconnectdbParams(keys, values, 0);
}

PgSession::~PgSession() {
  if (conn_ != nullptr) {
    PQfinish(conn_);
  }
}

bool PgSession::ok() const { return conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK; }

std::string PgSession::error() const { return conn_ != nullptr ? trimmed(PQerrorMessage(conn_)) : ""; }

std::string PgSession::try_exec(const std::string& sql) {
  if (!ok()) {
    return "not connected: " + error();
  }
  PGresult* result = PQexec(conn_, sql.c_str());
  const auto status = PQresultStatus(result);
  std::string message;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    message = trimmed(PQresultErrorMessage(result));
    if (message.empty()) {
      message = "failed";
    }
  }
  PQclear(result);
  return message;
}

void PgSession::exec(const std::string& sql) {
  const auto message = try_exec(sql);
  INFO(sql << ": " << message);
  REQUIRE(message.empty());
}

std::vector<std::string> PgSession::column(const std::string& sql) {
  INFO(sql << ": " << error());
  REQUIRE(ok());
  PGresult* result = PQexec(conn_, sql.c_str());
  INFO(trimmed(PQresultErrorMessage(result)));
  std::vector<std::string> values;
  const bool tuples = PQresultStatus(result) == PGRES_TUPLES_OK;
  if (tuples) {
    for (int r = 0; r < PQntuples(result); ++r) {
      values.emplace_back(PQgetvalue(result, r, 0));
    }
  }
  PQclear(result);
  REQUIRE(tuples);
  return values;
}

std::string PgSession::value(const std::string& sql) {
  auto values = column(sql);
  REQUIRE(!values.empty());
  return values.front();
}

}  // namespace quiesce::test::postgres
