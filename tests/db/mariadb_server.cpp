#include "tests/db/mariadb_server.hpp"

#include <mysql.h>
#include <mysqld_error.h>
#include <signal.h>
#include <sys/stat.h>

#include <fstream>
#include <mutex>

#include <doctest/doctest.h>

namespace quiesce::test::mariadb {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Small enough that a dozen servers fit on the test machine; InnoDB still
// behaves as in production (redo log, doublewrite, io_uring or aio).
const std::vector<std::string> innodb_sizes = {"--innodb-buffer-pool-size=32M",
                                               "--innodb-log-file-size=16M"};

std::string tail_of(const fs::path& path, std::size_t size) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  return text.size() > size ? text.substr(text.size() - size) : text;
}

void must(const std::vector<std::string>& argv) {
  std::string output;
  const int code = run_command(argv, &output);
  std::string command;
  for (const auto& arg : argv) {
    command += arg + " ";
  }
  INFO("command: " << command << "\noutput: " << output);
  REQUIRE(code == 0);
}

// libmariadb's global state is set up once, before any thread connects
// (mysql_init would do it lazily, and not thread-safely).
void library_init() {
  static std::once_flag once;
  std::call_once(once, [] { mysql_library_init(0, nullptr, nullptr); });
}

std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "'";
}

}  // namespace

void give_to_mysql(const fs::path& path) { must({"chown", "-R", "mysql:mysql", path.string()}); }

void open_for_traversal(const fs::path& path) { ::chmod(path.c_str(), 0711); }

MariadbServer::MariadbServer(fs::path work_dir, fs::path data_dir)
    : work_dir_(std::move(work_dir)), data_dir_(std::move(data_dir)) {
  fs::create_directories(work_dir_ / "tmp");
  give_to_mysql(work_dir_);
}

MariadbServer::~MariadbServer() {
  if (process_ && process_->running()) {
    // A clean shutdown when it can; ChildProcess's destructor SIGKILLs the
    // group if it is still there (a hung shutdown, a frozen filesystem).
    process_->signal(SIGTERM);
    (void)process_->wait_for(15s);
  }
}

void MariadbServer::init() {
  fs::create_directories(data_dir_);
  give_to_mysql(data_dir_);
  // The bootstrap server needs a tmpdir of its own too: a mariadbd starting
  // up deletes every "#sql*" file in its tmpdir, which with the default
  // (/tmp) includes the temporary tables of a bootstrap running alongside.
  const auto bootstrap_tmp = work_dir_ / "bootstrap-tmp";
  fs::create_directories(bootstrap_tmp);
  give_to_mysql(bootstrap_tmp);
  std::vector<std::string> argv{"/usr/bin/mariadb-install-db", "--no-defaults",
                                "--datadir=" + data_dir_.string(), "--user=mysql",
                                "--tmpdir=" + bootstrap_tmp.string(),
                                // root@localhost by password only: with unix_socket
                                // any password would do for the (OS root) test.
                                "--auth-root-authentication-method=normal", "--skip-test-db",
                                "--skip-name-resolve"};
  argv.insert(argv.end(), innodb_sizes.begin(), innodb_sizes.end());
  must(argv);
  needs_root_password_ = true;
}

bool MariadbServer::accepts_connections() const {
  library_init();
  MYSQL* mysql = mysql_init(nullptr);
  const unsigned timeout = 1;
  mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
  // No such user: "access denied" means it is up and answering.
  const bool connected = mysql_real_connect(mysql, nullptr, "quiesce_probe", "", nullptr, 0,
                                            socket().c_str(), 0) != nullptr;
  const bool up = connected || mysql_errno(mysql) == ER_ACCESS_DENIED_ERROR;
  mysql_close(mysql);
  return up;
}

bool MariadbServer::try_start(const MariadbOptions& options, std::string& log_tail) {
  REQUIRE_MESSAGE(!running(), "the server is already running");
  std::error_code ignored;
  fs::remove(socket(), ignored);
  std::vector<std::string> argv{"/usr/sbin/mariadbd",
                                "--no-defaults",
                                "--user=mysql",
                                "--datadir=" + data_dir_.string(),
                                "--socket=" + socket(),
                                "--skip-networking",
                                "--pid-file=" + (work_dir_ / "mariadbd.pid").string(),
                                "--log-error=" + error_log().string(),
                                "--tmpdir=" + (work_dir_ / "tmp").string(),
                                "--max-connections=40",
                                "--performance-schema=OFF",
                                "--skip-name-resolve"};
  argv.insert(argv.end(), innodb_sizes.begin(), innodb_sizes.end());
  if (options.log_bin) {
    argv.emplace_back("--log-bin=mariadb-bin");
    argv.emplace_back("--server-id=1");
  }
  argv.insert(argv.end(), options.settings.begin(), options.settings.end());
  process_ = std::make_unique<ChildProcess>(argv, work_dir_ / "mariadbd.out");

  // Crash recovery of a restored copy can take a while on a loop device.
  const bool up = eventually(60s, [&] { return !process_->running() || accepts_connections(); });
  if (!up || !process_->running()) {
    log_tail = std::string(up ? "mariadbd exited" : "mariadbd did not accept connections within 60 s") +
               "\n" + log_text();
    process_.reset();
    return false;
  }
  if (needs_root_password_) {
    MariadbSession root(socket(), "root", "");
    if (!root.ok()) {
      log_tail = "root without a password after mariadb-install-db: " + root.error();
      return false;
    }
    const auto error = root.try_exec("ALTER USER root@localhost IDENTIFIED BY " +
                                     quoted(superuser_password));
    if (!error.empty()) {
      log_tail = "setting root's password: " + error;
      return false;
    }
    needs_root_password_ = false;
  }
  return true;
}

void MariadbServer::start(const MariadbOptions& options) {
  std::string log_tail;
  const bool ok = try_start(options, log_tail);
  INFO("mariadbd start: " << log_tail);
  REQUIRE(ok);
}

void MariadbServer::stop() {
  if (!process_) {
    return;
  }
  process_->signal(SIGTERM);
  const auto status = process_->wait_for(60s);
  INFO("mariadbd shutdown: " << log_text());
  REQUIRE(status.has_value());
  process_.reset();
}

void MariadbServer::kill_now() {
  if (!process_) {
    return;
  }
  process_->signal(SIGKILL);
  (void)process_->wait_for(10s);
  process_.reset();
}

bool MariadbServer::running() const { return process_ && process_->running(); }

std::string MariadbServer::log_text() const {
  return tail_of(error_log(), 4000) + tail_of(work_dir_ / "mariadbd.out", 1000);
}

MariadbSession::MariadbSession(const MariadbServer& server, const std::string& user,
                               const std::string& password, std::chrono::seconds read_timeout)
    : MariadbSession(server.socket(), user, password, read_timeout) {}

MariadbSession::MariadbSession(const std::string& socket, const std::string& user,
                               const std::string& password, std::chrono::seconds read_timeout) {
  library_init();
  mysql_ = mysql_init(nullptr);
  const unsigned connect_timeout = 5;
  const auto io_timeout = static_cast<unsigned>(read_timeout.count());
  mysql_options(mysql_, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
  mysql_options(mysql_, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
  mysql_options(mysql_, MYSQL_OPT_WRITE_TIMEOUT, &io_timeout);
  connected_ = mysql_real_connect(mysql_, nullptr, user.c_str(), password.c_str(), nullptr, 0,
                                  socket.c_str(), CLIENT_MULTI_STATEMENTS) != nullptr;
  if (!connected_) {
    connect_error_ = mysql_error(mysql_);
  }
}

MariadbSession::~MariadbSession() {
  if (mysql_ != nullptr) {
    mysql_close(mysql_);
  }
}

bool MariadbSession::ok() const { return connected_; }

std::string MariadbSession::error() const {
  return connected_ ? std::string(mysql_error(mysql_)) : connect_error_;
}

unsigned MariadbSession::error_code() const { return mysql_errno(mysql_); }

unsigned long MariadbSession::connection_id() const {
  return connected_ ? mysql_thread_id(mysql_) : 0;
}

std::string MariadbSession::run(const std::string& sql,
                                std::vector<std::vector<std::string>>* out) {
  if (!connected_) {
    return "not connected: " + connect_error_;
  }
  if (mysql_real_query(mysql_, sql.data(), sql.size()) != 0) {
    return mysql_error(mysql_);
  }
  bool first = true;
  for (;;) {
    MYSQL_RES* result = mysql_store_result(mysql_);
    if (result != nullptr) {
      if (first && out != nullptr) {
        const unsigned fields = mysql_num_fields(result);
        while (MYSQL_ROW row = mysql_fetch_row(result)) {
          std::vector<std::string> values;
          for (unsigned i = 0; i < fields; ++i) {
            values.emplace_back(row[i] != nullptr ? row[i] : "NULL");
          }
          out->push_back(std::move(values));
        }
      }
      mysql_free_result(result);
      first = false;
    } else if (mysql_field_count(mysql_) != 0) {
      return mysql_error(mysql_);
    }
    const int next = mysql_next_result(mysql_);
    if (next < 0) {
      return "";
    }
    if (next > 0) {
      return mysql_error(mysql_);
    }
  }
}

std::string MariadbSession::try_exec(const std::string& sql) { return run(sql, nullptr); }

void MariadbSession::exec(const std::string& sql) {
  const auto message = try_exec(sql);
  INFO(sql << ": " << message);
  REQUIRE(message.empty());
}

std::vector<std::vector<std::string>> MariadbSession::rows(const std::string& sql) {
  std::vector<std::vector<std::string>> out;
  const auto message = run(sql, &out);
  INFO(sql << ": " << message);
  REQUIRE(message.empty());
  return out;
}

std::vector<std::string> MariadbSession::column(const std::string& sql) {
  std::vector<std::string> values;
  for (auto& row : rows(sql)) {
    values.push_back(row.empty() ? "" : std::move(row.front()));
  }
  return values;
}

std::string MariadbSession::value(const std::string& sql) {
  auto values = column(sql);
  INFO(sql);
  REQUIRE(!values.empty());
  return values.front();
}

void create_user(MariadbSession& admin, const std::string& user, const std::string& password,
                 const std::string& grants) {
  const std::string account = quoted(user) + "@'localhost'";
  admin.exec("CREATE USER " + account + " IDENTIFIED BY " + quoted(password));
  if (!grants.empty()) {
    admin.exec("GRANT " + grants + " ON *.* TO " + account);
  }
}

}  // namespace quiesce::test::mariadb
