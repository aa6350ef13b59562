#include "tests/bench/bench_support.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace quiesce::bench {

namespace {

std::atomic<bool> interrupt_flag{false};

void on_interrupt(int) { interrupt_flag = true; }

std::string trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

void must_run(const std::vector<std::string>& argv) {
  std::string output;
  if (run(argv, &output) != 0) {
    std::string command;
    for (const auto& arg : argv) {
      command += arg + " ";
    }
    throw std::runtime_error("command failed: " + command + "\n" + output);
  }
}

int ioctl_errno(int fd, unsigned long request) {
  int unused = 0;
  for (;;) {
    if (::ioctl(fd, request, &unused) == 0) {
      return 0;
    }
    if (errno != EINTR) {
      return errno;
    }
  }
}

}  // namespace

double ms_since(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double, std::milli>(end - start).count();
}

bool interrupted() { return interrupt_flag.load(); }

void install_interrupt_handler() {
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

int run(const std::vector<std::string>& argv, std::string* output) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return -1;
  }
  std::vector<char*> args;
  for (const auto& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipe_fds[1], 1);
    ::dup2(pipe_fds[1], 2);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  std::string text;
  char buffer[4096];
  for (;;) {
    auto n = ::read(pipe_fds[0], buffer, sizeof buffer);
    if (n > 0) {
      text.append(buffer, static_cast<std::size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (pid > 0 && ::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (output != nullptr) {
    *output = text;
  }
  return pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Child::Child(const std::vector<std::string>& argv, const std::filesystem::path& log_path) {
  std::vector<char*> args;
  for (const auto& arg : argv) {
    args.push_back(const_cast<char*>(arg.c_str()));
  }
  args.push_back(nullptr);
  const std::string log = log_path.string();
  pid_ = ::fork();
  if (pid_ < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid_ == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) {
      ::dup2(null_fd, 0);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
}

Child::~Child() { stop(); }

bool Child::running() {
  if (pid_ <= 0) {
    return false;
  }
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

void Child::stop() {
  if (pid_ <= 0) {
    return;
  }
  ::kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

LoopSet::LoopSet(const std::filesystem::path& dir, int count, int size_mb) {
  try {
    for (int i = 0; i < count; ++i) {
      const auto image = (dir / ("fs" + std::to_string(i) + ".img")).string();
      const auto mount_point = (dir / ("fs" + std::to_string(i))).string();
      std::filesystem::create_directories(mount_point);
      must_run({"truncate", "-s", std::to_string(size_mb) + "M", image});
      images_.push_back(image);
      std::string device;
      if (run({"losetup", "-f", "--show", image}, &device) != 0) {
        throw std::runtime_error("losetup failed: " + device);
      }
      devices_.push_back(trim(device));
      must_run({"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                devices_.back()});
      must_run({"mount", devices_.back(), mount_point});
      mount_points_.push_back(mount_point);
    }
  } catch (...) {
    tear_down();
    throw;
  }
}

LoopSet::~LoopSet() { tear_down(); }

void LoopSet::tear_down() {
  std::string ignored;
  for (const auto& mount_point : mount_points_) {
    // Only our own mounts: a run cut short while frozen must not leave
    // them frozen, and umount of a frozen filesystem would hang.
    run({"fsfreeze", "-u", mount_point}, &ignored);
    if (run({"umount", mount_point}, &ignored) != 0) {
      run({"umount", "-l", mount_point}, &ignored);
    }
  }
  mount_points_.clear();
  for (const auto& device : devices_) {
    run({"losetup", "-d", device}, &ignored);
  }
  devices_.clear();
  for (const auto& image : images_) {
    std::error_code ec;
    std::filesystem::remove(image, ec);
  }
  images_.clear();
}

std::vector<std::string> LoopSet::mounts(int n) const {
  return {mount_points_.begin(), mount_points_.begin() + std::min<std::size_t>(
                                                             static_cast<std::size_t>(n),
                                                             mount_points_.size())};
}

void LoopSet::dirty(int n, int kib) const {
  static std::atomic<unsigned> counter{0};
  std::string block(64 * 1024, 'q');
  for (const auto& mount_point : mounts(n)) {
    // A new file each time, the previous one removed: fresh allocations and
    // metadata as well as data, like an application writing new records.
    const auto name = mount_point + "/dirty-" + std::to_string(counter++ % 2) + ".bin";
    std::filesystem::remove(name);
    int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      throw std::runtime_error("cannot write " + name + ": " + std::strerror(errno));
    }
    for (int written = 0; written < kib; written += 64) {
      const auto size = static_cast<std::size_t>(std::min(64, kib - written)) * 1024;
      if (::write(fd, block.data(), size) != static_cast<ssize_t>(size)) {
        ::close(fd);
        throw std::runtime_error("short write to " + name);
      }
    }
    ::close(fd);
  }
}

void LoopSet::clean(int n) const {
  for (const auto& mount_point : mounts(n)) {
    int fd = ::open(mount_point.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      ::syncfs(fd);
      ::close(fd);
    }
  }
}

RawFreezer::RawFreezer(const std::vector<std::string>& mounts)
    : errors_(mounts.size(), 0),
      start_(static_cast<std::ptrdiff_t>(mounts.size() + 1)),
      done_(static_cast<std::ptrdiff_t>(mounts.size() + 1)) {
  for (const auto& mount : mounts) {
    int fd = ::open(mount.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      for (int open_fd : fds_) {
        ::close(open_fd);
      }
      throw std::runtime_error("cannot open " + mount);
    }
    fds_.push_back(fd);
  }
  for (std::size_t i = 0; i < fds_.size(); ++i) {
    threads_.emplace_back([this, i] { worker(i); });
  }
}

RawFreezer::~RawFreezer() {
  run_all(Op::thaw);  // nothing is frozen unless a failure left it so
  op_ = Op::quit;
  start_.arrive_and_wait();
  for (auto& thread : threads_) {
    thread.join();
  }
  for (int fd : fds_) {
    ::close(fd);
  }
}

void RawFreezer::worker(std::size_t index) {
  for (;;) {
    start_.arrive_and_wait();
    if (op_ == Op::quit) {
      return;
    }
    errors_[index] = ioctl_errno(fds_[index], op_ == Op::freeze ? FIFREEZE : FITHAW);
    done_.arrive_and_wait();
  }
}

void RawFreezer::run_all(Op op) {
  op_ = op;
  start_.arrive_and_wait();
  done_.arrive_and_wait();
}

void RawFreezer::check(const char* what) {
  for (std::size_t i = 0; i < errors_.size(); ++i) {
    if (errors_[i] != 0) {
      const int error = errors_[i];
      std::fill(errors_.begin(), errors_.end(), 0);
      throw std::runtime_error(std::string("raw ") + what + " failed: " + std::strerror(error));
    }
  }
}

double RawFreezer::sequential() {
  const auto start = Clock::now();
  std::size_t frozen = 0;
  int error = 0;
  for (; frozen < fds_.size(); ++frozen) {
    if ((error = ioctl_errno(fds_[frozen], FIFREEZE)) != 0) {
      break;
    }
  }
  for (std::size_t i = 0; i < frozen; ++i) {
    if (int thaw_error = ioctl_errno(fds_[i], FITHAW); thaw_error != 0 && error == 0) {
      error = thaw_error;
    }
  }
  const auto took = ms_since(start);
  if (error != 0) {
    throw std::runtime_error(std::string("raw sequential freeze/thaw failed: ") +
                             std::strerror(error));
  }
  return took;
}

double RawFreezer::parallel() {
  const auto start = Clock::now();
  run_all(Op::freeze);
  std::vector<int> freeze_errors = errors_;
  run_all(Op::thaw);
  const auto took = ms_since(start);
  errors_ = freeze_errors;
  check("parallel FIFREEZE");
  return took;
}

QgaClient::QgaClient(const std::string& socket_path) {
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path.c_str(), sizeof address.sun_path - 1);
  if (fd_ < 0 ||
      ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    const std::string why = std::strerror(errno);
    if (fd_ >= 0) {
      ::close(fd_);
    }
    throw std::runtime_error("cannot connect to qemu-ga at " + socket_path + ": " + why);
  }
  timeval timeout{30, 0};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
}

QgaClient::~QgaClient() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

std::string QgaClient::read_line() {
  for (;;) {
    auto newline = pending_.find('\n');
    if (newline != std::string::npos) {
      auto line = pending_.substr(0, newline);
      pending_.erase(0, newline + 1);
      return line;
    }
    char buffer[4096];
    auto n = ::recv(fd_, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      throw std::runtime_error("qemu-ga closed the connection or timed out");
    }
    pending_.append(buffer, static_cast<std::size_t>(n));
  }
}

nlohmann::json QgaClient::execute(const std::string& command, const nlohmann::json& arguments) {
  nlohmann::json request = {{"execute", command}};
  if (!arguments.empty()) {
    request["arguments"] = arguments;
  }
  const auto text = request.dump() + "\n";
  if (::send(fd_, text.data(), text.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(text.size())) {
    throw std::runtime_error("cannot send to qemu-ga");
  }
  for (;;) {
    auto line = read_line();
    auto answer = nlohmann::json::parse(line, nullptr, false);
    if (answer.is_discarded() || !answer.is_object()) {
      continue;  // the 0xff sentinel or an empty line
    }
    if (answer.contains("error")) {
      throw std::runtime_error("qemu-ga " + command + ": " + answer["error"].dump());
    }
    if (answer.contains("return")) {
      return answer["return"];
    }
  }
}

void QgaClient::sync() {
  const long id = ++sync_id_;
  for (;;) {
    auto answer = execute("guest-sync", {{"id", id}});
    if (answer.is_number_integer() && answer.get<long>() == id) {
      return;
    }
  }
}

bool can_connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return false;
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  ::close(fd);
  return ok;
}

ProcessUsage usage_of(const std::vector<pid_t>& pids) {
  ProcessUsage usage;
  const double tick_ms = 1000.0 / static_cast<double>(::sysconf(_SC_CLK_TCK));
  for (pid_t pid : pids) {
    const auto base = "/proc/" + std::to_string(pid);
    std::ifstream status(base + "/status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.starts_with("VmRSS:")) {
        usage.rss_kib += std::stod(line.substr(6));
      }
    }
    std::ifstream rollup(base + "/smaps_rollup");
    while (std::getline(rollup, line)) {
      if (line.starts_with("Pss:")) {
        usage.pss_kib += std::stod(line.substr(4));
      } else if (line.starts_with("Anonymous:")) {
        usage.anon_kib += std::stod(line.substr(10));
      }
    }
    std::ifstream stat(base + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), {});
    auto close_paren = text.rfind(')');
    if (close_paren != std::string::npos) {
      std::istringstream fields(text.substr(close_paren + 2));
      std::vector<std::string> values;
      std::string value;
      while (fields >> value) {
        values.push_back(value);
      }
      // Fields 14 and 15 of stat (utime, stime); index 0 here is field 3.
      if (values.size() > 12) {
        usage.cpu_ms += (std::stod(values[11]) + std::stod(values[12])) * tick_ms;
      }
    }
    if (DIR* tasks = ::opendir((base + "/task").c_str())) {
      while (auto* entry = ::readdir(tasks)) {
        if (entry->d_name[0] == '.') {
          continue;
        }
        std::ifstream task_status(base + "/task/" + entry->d_name + "/status");
        while (std::getline(task_status, line)) {
          if (line.starts_with("voluntary_ctxt_switches:") ||
              line.starts_with("nonvoluntary_ctxt_switches:")) {
            usage.context_switches += std::stol(line.substr(line.find(':') + 1));
          }
        }
      }
      ::closedir(tasks);
    }
  }
  return usage;
}

std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> children;
  const auto base = "/proc/" + std::to_string(pid) + "/task";
  if (DIR* tasks = ::opendir(base.c_str())) {
    while (auto* entry = ::readdir(tasks)) {
      if (entry->d_name[0] == '.') {
        continue;
      }
      std::ifstream list(base + "/" + entry->d_name + "/children");
      pid_t child = 0;
      while (list >> child) {
        children.push_back(child);
      }
    }
    ::closedir(tasks);
  }
  return children;
}

Summary summarise(std::vector<double> samples) {
  Summary summary;
  summary.count = samples.size();
  if (samples.empty()) {
    return summary;
  }
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    // Nearest rank: the smallest sample with at least q of them at or below.
    auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(samples.size())));
    return samples[std::clamp<std::size_t>(rank, 1, samples.size()) - 1];
  };
  summary.median = samples.size() % 2 == 1
                       ? samples[samples.size() / 2]
                       : (samples[samples.size() / 2 - 1] + samples[samples.size() / 2]) / 2;
  summary.p90 = at(0.9);
  return summary;
}

}  // namespace quiesce::bench
