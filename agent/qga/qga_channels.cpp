#include "agent/qga/qga_channels.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <list>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include "platform/linux/vsock.hpp"

namespace quiesce::agent::qga {
namespace {

constexpr std::size_t kReadChunk = 64 * 1024;

// The safety net of the virtio-serial wait. Every transition has an event
// (inotify for the port's file, SIGIO for the host connecting, POLLIN/POLLHUP
// while connected); this slow re-check only covers what no event reports:
// another process (a stock qemu-ga) letting go of the port we could not
// open, and a host connection whose SIGIO raced with our own check.
constexpr int kVirtioRecheckMs = 10'000;

// The virtio_console driver raises this for the port's fasync owner when the
// host opens or closes its end (send_sigio_to_port on VIRTIO_CONSOLE_PORT_OPEN).
// It is sent to the port thread only (F_OWNER_TID) and blocked there, so it
// is read from a signalfd and never interrupts the rest of the agent.
constexpr int kHostSignal = SIGIO;

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset(std::exchange(other.fd_, -1));
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  void reset(int fd = -1) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = fd;
  }
  [[nodiscard]] int get() const { return fd_; }
  // Hands the fd to a new owner (a connection thread).
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }
  [[nodiscard]] explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Writes everything, waiting for POLLOUT on a non-blocking fd; false when
// the peer went away or stop was requested.
bool write_all(int fd, std::string_view bytes, int stop_fd) {
  while (!bytes.empty()) {
    const auto written = ::write(fd, bytes.data(), bytes.size());
    if (written > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(written));
      continue;
    }
    if (written < 0 && errno == EINTR) {
      continue;
    }
    if (written < 0 && errno != EAGAIN) {
      return false;
    }
    pollfd fds[2] = {{fd, POLLOUT, 0}, {stop_fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
      return false;
    }
    if ((fds[1].revents & POLLIN) != 0) {
      return false;
    }
    if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

struct QgaChannels::Impl {
  QgaChannelsConfig config;
  QgaConnectionFactory factory;
  std::shared_ptr<spdlog::logger> logger;

  UniqueFd stop_fd;  // eventfd: readable once stop() was called
  std::atomic<bool> stopping{false};
  bool started = false;

  UniqueFd unix_listener;
  UniqueFd vsock_listener;
  std::vector<std::thread> threads;  // listeners and the port

  struct Client {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::mutex clients_mutex;
  std::list<Client> clients;  // std::list: a Client's address must not move
  std::atomic<std::size_t> active_clients{0};
  std::atomic<std::uint64_t> port_sessions{0};

  [[nodiscard]] bool stop_requested() const { return stopping.load(); }

  void reap_finished_clients() {
    std::lock_guard lock(clients_mutex);
    for (auto it = clients.begin(); it != clients.end();) {
      if (it->done.load()) {
        it->thread.join();
        it = clients.erase(it);
      } else {
        ++it;
      }
    }
  }

  // ---- socket listeners ----------------------------------------------------

  void bind_unix(const QgaUnixSocket& socket_config) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (socket_config.path.size() >= sizeof address.sun_path) {
      throw std::runtime_error("qga unix socket " + socket_config.path + ": path too long");
    }
    std::memcpy(address.sun_path, socket_config.path.c_str(), socket_config.path.size() + 1);
    // A socket left behind by an agent that died is replaced; anything else
    // at that path is not ours to delete.
    struct stat info {};
    if (::lstat(socket_config.path.c_str(), &info) == 0) {
      if (!S_ISSOCK(info.st_mode)) {
        throw std::runtime_error("qga unix socket " + socket_config.path +
                                 ": the path exists and is not a socket");
      }
      ::unlink(socket_config.path.c_str());
    }
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) {
      throw std::runtime_error("qga unix socket: " + errno_text(errno));
    }
    // The mode is set on a socket nobody can connect to yet (umask 0777 for
    // bind), so there is no moment with looser permissions.
    const mode_t old_umask = ::umask(0777);
    const int bound = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address);
    const int bind_error = errno;
    ::umask(old_umask);
    if (bound != 0) {
      throw std::runtime_error("qga unix socket " + socket_config.path +
                               ": cannot bind: " + errno_text(bind_error));
    }
    if (::chmod(socket_config.path.c_str(), socket_config.mode) != 0 ||
        ::listen(fd.get(), 16) != 0) {
      throw std::runtime_error("qga unix socket " + socket_config.path + ": " + errno_text(errno));
    }
    unix_listener = std::move(fd);
    logger->info("qga: listening on unix socket {}", socket_config.path);
  }

  void bind_vsock(const QgaVsock& vsock_config) {
    UniqueFd fd(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) {
      const int error = errno;
      if (platform::is_vsock_unsupported_error(error)) {
        logger->warn("qga: vsock port {} not served: this kernel has no vsock ({})",
                     vsock_config.port, errno_text(error));
        return;
      }
      throw std::runtime_error("qga vsock: " + errno_text(error));
    }
    const auto address = platform::make_vsock_sockaddr(platform::vsock_cid_any, vsock_config.port);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
      const int error = errno;
      if (platform::is_vsock_unsupported_error(error)) {
        logger->warn("qga: vsock port {} not served: no vsock transport ({})", vsock_config.port,
                     errno_text(error));
        return;
      }
      throw std::runtime_error("qga vsock port " + std::to_string(vsock_config.port) +
                               ": cannot bind: " + errno_text(error));
    }
    if (::listen(fd.get(), 16) != 0) {
      throw std::runtime_error("qga vsock: " + errno_text(errno));
    }
    vsock_listener = std::move(fd);
    logger->info("qga: listening on vsock port {}", vsock_config.port);
  }

  void accept_loop(int listener, bool is_vsock) {
    while (!stop_requested()) {
      pollfd fds[2] = {{listener, POLLIN, 0}, {stop_fd.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) {
          continue;
        }
        logger->error("qga: poll on a listener failed: {}", errno_text(errno));
        return;
      }
      if ((fds[1].revents & POLLIN) != 0) {
        return;
      }
      sockaddr_storage peer_address{};
      socklen_t peer_size = sizeof peer_address;
      UniqueFd client(::accept4(listener, reinterpret_cast<sockaddr*>(&peer_address), &peer_size,
                                SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!client) {
        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
          logger->warn("qga: accept failed: {}", errno_text(errno));
        }
        continue;
      }
      reap_finished_clients();
      std::string peer = "unix";
      if (is_vsock) {
        const auto vsock_peer = platform::vsock_address_of(&peer_address, peer_size);
        const auto& allowed = config.vsock->allowed_cids;
        if (!vsock_peer ||
            std::find(allowed.begin(), allowed.end(), vsock_peer->cid) == allowed.end()) {
          logger->warn("qga: refused vsock connection from cid {} (not in allowed_cids)",
                       vsock_peer ? std::to_string(vsock_peer->cid) : std::string("?"));
          continue;
        }
        peer = "vsock cid " + std::to_string(vsock_peer->cid);
      }
      if (active_clients.load() >= config.max_connections) {
        // Closing at once: a client over the limit sees EOF instead of
        // waiting on a connection nobody reads.
        logger->warn("qga: refused a {} connection: {} already open (the limit)", peer,
                     config.max_connections);
        continue;
      }
      ++active_clients;
      std::lock_guard lock(clients_mutex);
      auto& entry = clients.emplace_back();
      entry.thread = std::thread([this, fd = client.release(), peer, &entry]() mutable {
        UniqueFd owned(fd);
        try {
          serve_socket(owned.get(), peer);
        } catch (const std::exception& e) {
          // The protocol should answer errors, not throw; losing one
          // connection is still better than the agent.
          logger->error("qga: {} connection failed: {}", peer, e.what());
        }
        owned.reset();
        --active_clients;
        entry.done = true;
      });
    }
  }

  void serve_socket(int fd, const std::string& peer) {
    auto connection = factory(peer, /*can_close=*/true);
    std::string buffer(kReadChunk, '\0');
    while (!stop_requested()) {
      pollfd fds[2] = {{fd, POLLIN, 0}, {stop_fd.get(), POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) {
          continue;
        }
        break;
      }
      if ((fds[1].revents & POLLIN) != 0) {
        break;
      }
      const auto got = ::read(fd, buffer.data(), buffer.size());
      if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
        continue;
      }
      if (got <= 0) {
        break;  // EOF or a reset: the client went away
      }
      const auto output =
          connection->feed(std::string_view(buffer.data(), static_cast<std::size_t>(got)));
      if (!output.bytes.empty() && !write_all(fd, output.bytes, stop_fd.get())) {
        break;
      }
      if (output.close) {
        logger->warn("qga: closed the {} connection (oversize or invalid input)", peer);
        break;
      }
    }
    // At the level of the service\'s "connected" line: the log is flushed at
    // info, and a reader must see both ends of every connection.
    logger->info("qga: {} disconnected", peer);
  }

  // ---- the virtio-serial port ----------------------------------------------

  // Waits until `path` can be opened: inotify on the deepest directory on the
  // way to it that exists (/dev/virtio-ports is created with the first port,
  // by udev or by whoever makes the links). Returns an fd opened O_RDWR |
  // O_NONBLOCK, or an invalid fd when stop was requested.
  UniqueFd wait_for_port(const std::filesystem::path& path) {
    bool told_missing = false;
    bool told_busy = false;
    while (!stop_requested()) {
      UniqueFd inotify(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
      if (inotify) {
        // Watch first, then try to open: a port that appears in between is
        // still reported by the watch.
        auto dir = path.parent_path();
        while (!dir.empty() && !std::filesystem::is_directory(dir) && dir != dir.root_path()) {
          dir = dir.parent_path();
        }
        (void)::inotify_add_watch(inotify.get(), dir.c_str(),
                                  IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF);
      }
      UniqueFd port(::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
      if (port) {
        return port;
      }
      const int error = errno;
      int wait_ms = -1;
      if (error == EBUSY) {
        // virtio_console lets one process open a port: most likely a stock
        // qemu-guest-agent runs too. No event says when it lets go.
        if (!told_busy) {
          logger->warn(
              "qga: {} is in use by another process (qemu-guest-agent?): retrying "
              "every {} s",
              path.string(), kVirtioRecheckMs / 1000);
          told_busy = true;
        }
        wait_ms = kVirtioRecheckMs;
      } else if (error == ENOENT || error == ENOTDIR) {
        if (!told_missing) {
          logger->info("qga: waiting for {} to appear", path.string());
          told_missing = true;
        }
      } else {
        logger->warn("qga: cannot open {}: {}; retrying in {} s", path.string(), errno_text(error),
                     kVirtioRecheckMs / 1000);
        wait_ms = kVirtioRecheckMs;
      }
      if (!inotify) {
        wait_ms = kVirtioRecheckMs;  // no inotify: the safety net is all there is
      }
      pollfd fds[2] = {{inotify.get(), POLLIN, 0}, {stop_fd.get(), POLLIN, 0}};
      (void)::poll(fds, 2, wait_ms);
    }
    return {};
  }

  // Asks the kernel to raise kHostSignal on this thread when the host side
  // opens or closes the port (and on input, which is harmless).
  bool arm_host_signal(int port_fd, const std::string& path) {
    f_owner_ex owner{F_OWNER_TID, static_cast<pid_t>(::gettid())};
    const int flags = ::fcntl(port_fd, F_GETFL);
    if (::fcntl(port_fd, F_SETOWN_EX, &owner) != 0 ||
        ::fcntl(port_fd, F_SETSIG, kHostSignal) != 0 || flags < 0 ||
        ::fcntl(port_fd, F_SETFL, flags | O_ASYNC) != 0) {
      logger->warn("qga: {}: no SIGIO for host connections ({}); checking every {} s instead", path,
                   errno_text(errno), kVirtioRecheckMs / 1000);
      return false;
    }
    return true;
  }

  static bool host_connected(int port_fd) {
    // virtio_console reports POLLHUP for as long as no host is connected
    // (port_fops_poll: !port->host_connected).
    pollfd fd{port_fd, POLLIN, 0};
    if (::poll(&fd, 1, 0) < 0) {
      return false;
    }
    return (fd.revents & (POLLHUP | POLLERR | POLLNVAL)) == 0;
  }

  void serve_port() {
    const std::filesystem::path path = config.virtio_serial_path;
    const std::string peer = "virtio-serial " + path.filename().string();
    // Blocked on this thread only; the kernel directs it here (F_OWNER_TID).
    sigset_t host_signal;
    sigemptyset(&host_signal);
    sigaddset(&host_signal, kHostSignal);
    pthread_sigmask(SIG_BLOCK, &host_signal, nullptr);
    UniqueFd signal_fd(::signalfd(-1, &host_signal, SFD_CLOEXEC | SFD_NONBLOCK));

    while (!stop_requested()) {
      UniqueFd port = wait_for_port(path);
      if (!port) {
        return;
      }
      const bool signalled = signal_fd && arm_host_signal(port.get(), path.string());
      logger->info("qga: opened {}", path.string());
      const bool gone = serve_open_port(port.get(), path, peer, signalled ? signal_fd.get() : -1);
      port.reset();
      if (gone) {
        logger->warn("qga: {} went away; waiting for it again", path.string());
      }
    }
  }

  static void drain(int fd) {
    if (fd < 0) {
      return;
    }
    // Big enough for whole signalfd_siginfo and inotify_event records.
    alignas(inotify_event) char sink[sizeof(signalfd_siginfo) * 16];
    while (::read(fd, sink, sizeof sink) > 0) {
    }
  }

  // Serves host connection after host connection on an open port. Returns
  // true when the port itself failed (unplugged), false on stop.
  bool serve_open_port(int port_fd, const std::filesystem::path& path, const std::string& peer,
                       int signal_fd) {
    std::string buffer(kReadChunk, '\0');
    // An unplugged port (device removed, driver reloaded) looks like a host
    // that is not connected: POLLHUP, no SIGIO. Its node going away is the
    // event that tells the two apart; then the port is waited for again.
    UniqueFd removal(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
    if (removal) {
      (void)::inotify_add_watch(removal.get(), path.parent_path().c_str(),
                                IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF);
    }
    while (!stop_requested()) {
      // Disconnected: wait for the host's SIGIO (or the safety net).
      if (!host_connected(port_fd)) {
        pollfd fds[3] = {
            {stop_fd.get(), POLLIN, 0}, {removal.get(), POLLIN, 0}, {signal_fd, POLLIN, 0}};
        (void)::poll(fds, signal_fd >= 0 ? 3 : 2, kVirtioRecheckMs);
        drain(signal_fd);
        if ((fds[1].revents & POLLIN) != 0) {
          drain(removal.get());
          std::error_code ignored;
          if (!std::filesystem::exists(path, ignored)) {
            return true;
          }
        }
        continue;
      }
      ++port_sessions;
      logger->info("qga: host connected on {}", peer);
      auto connection = factory(peer, /*can_close=*/false);
      while (!stop_requested()) {
        pollfd fds[3] = {{port_fd, POLLIN, 0}, {stop_fd.get(), POLLIN, 0}, {signal_fd, POLLIN, 0}};
        if (::poll(fds, signal_fd >= 0 ? 3 : 2, -1) < 0 && errno != EINTR) {
          return true;
        }
        drain(signal_fd);
        if ((fds[1].revents & POLLIN) != 0) {
          return false;
        }
        if ((fds[0].revents & POLLNVAL) != 0) {
          return true;
        }
        if ((fds[0].revents & POLLIN) != 0) {
          const auto got = ::read(port_fd, buffer.data(), buffer.size());
          if (got > 0) {
            const auto output =
                connection->feed(std::string_view(buffer.data(), static_cast<std::size_t>(got)));
            if (!output.bytes.empty() && !write_all(port_fd, output.bytes, stop_fd.get()) &&
                stop_requested()) {
              return false;
            }
            continue;
          }
          if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
            continue;
          }
          if (got < 0 && errno != EIO) {
            logger->warn("qga: reading {} failed: {}", peer, errno_text(errno));
            return true;
          }
          // EOF (or EIO from a pty standing in for the port): the host left.
        } else if ((fds[0].revents & (POLLHUP | POLLERR)) == 0) {
          continue;
        }
        break;
      }
      logger->info("qga: host disconnected from {}", peer);
      // A new host connection starts with fresh framing state; the freeze
      // state is the service's and survives (the freeze window thaws).
    }
    return false;
  }
};

QgaChannels::QgaChannels(QgaChannelsConfig config, QgaConnectionFactory factory,
                         std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<Impl>()) {
  impl_->config = std::move(config);
  impl_->factory = std::move(factory);
  impl_->logger = std::move(logger);
}

QgaChannels::~QgaChannels() { stop(); }

void QgaChannels::start() {
  auto& impl = *impl_;
  if (impl.started) {
    return;
  }
  impl.stop_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl.stop_fd) {
    throw std::runtime_error("qga: eventfd: " + errno_text(errno));
  }
  if (impl.config.unix_socket) {
    impl.bind_unix(*impl.config.unix_socket);
  }
  if (impl.config.vsock) {
    impl.bind_vsock(*impl.config.vsock);
  }
  impl.started = true;
  if (impl.unix_listener) {
    impl.threads.emplace_back([&impl] { impl.accept_loop(impl.unix_listener.get(), false); });
  }
  if (impl.vsock_listener) {
    impl.threads.emplace_back([&impl] { impl.accept_loop(impl.vsock_listener.get(), true); });
  }
  if (!impl.config.virtio_serial_path.empty()) {
    impl.threads.emplace_back([&impl] {
      try {
        impl.serve_port();
      } catch (const std::exception& e) {
        impl.logger->error("qga: the virtio-serial channel stopped: {}", e.what());
      }
    });
  }
}

void QgaChannels::stop() {
  auto& impl = *impl_;
  if (!impl.started || impl.stopping.exchange(true)) {
    return;
  }
  const std::uint64_t one = 1;
  (void)!::write(impl.stop_fd.get(), &one, sizeof one);
  for (auto& thread : impl.threads) {
    thread.join();
  }
  impl.threads.clear();
  {
    std::lock_guard lock(impl.clients_mutex);
    for (auto& client : impl.clients) {
      client.thread.join();
    }
    impl.clients.clear();
  }
  if (impl.config.unix_socket && impl.unix_listener) {
    ::unlink(impl.config.unix_socket->path.c_str());
  }
  impl.unix_listener.reset();
  impl.vsock_listener.reset();
}

bool QgaChannels::vsock_listening() const { return static_cast<bool>(impl_->vsock_listener); }

std::uint64_t QgaChannels::virtio_serial_sessions() const { return impl_->port_sessions.load(); }

}  // namespace quiesce::agent::qga
