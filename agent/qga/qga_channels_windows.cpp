// The qga channels on Windows (the same QgaChannels as qga_channels.cpp):
// the virtio-serial port \\.\Global\org.qemu.guest_agent.0 (the virtio-win
// vioserial driver names it so, as qemu-ga's Windows build opens it) and a
// named pipe for local tools, and a Hyper-V socket for the host (qga.hyperv).
// Every wait is an overlapped operation waited for together with one stop
// event, so stop() never hangs on a read.
#include "agent/qga/qga_channels.hpp"

// winsock2 before windows.h, which would pull in the old winsock.h.
#include <winsock2.h>
#include <windows.h>

#include <array>
#include <atomic>
#include <list>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>

#include "platform/win/hyperv_socket.hpp"
#include "platform/win/named_pipe.hpp"
#include "platform/win/win_error.hpp"

namespace quiesce::agent::qga {
namespace {

namespace win = platform::win;

constexpr DWORD kReadChunk = 64 * 1024;
// How often an absent virtio-serial port is looked for again: Windows has
// no cheap notification for a device interface appearing, and the port
// appears only when the driver is installed (rare, and logged).
constexpr DWORD kPortRecheckMs = 10'000;
constexpr DWORD kEmptyReadPauseMs = 100;

class UniqueHandle {
 public:
  UniqueHandle() = default;
  explicit UniqueHandle(HANDLE handle) : handle_(handle) {}
  UniqueHandle(UniqueHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  UniqueHandle& operator=(UniqueHandle&& other) noexcept {
    if (this != &other) {
      reset(std::exchange(other.handle_, nullptr));
    }
    return *this;
  }
  UniqueHandle(const UniqueHandle&) = delete;
  UniqueHandle& operator=(const UniqueHandle&) = delete;
  ~UniqueHandle() { reset(); }
  void reset(HANDLE handle = nullptr) {
    if (handle_ != nullptr && handle_ != INVALID_HANDLE_VALUE) {
      ::CloseHandle(handle_);
    }
    handle_ = handle;
  }
  [[nodiscard]] HANDLE get() const { return handle_; }
  // Hands the handle to a new owner (a connection thread).
  [[nodiscard]] HANDLE release() { return std::exchange(handle_, nullptr); }
  [[nodiscard]] explicit operator bool() const { return handle_ != nullptr && handle_ != INVALID_HANDLE_VALUE; }

 private:
  HANDLE handle_ = nullptr;
};

enum class IoResult { done, stopped, failed };

// One overlapped operation on `handle`, waited for with the stop event.
// On stop the operation is cancelled and waited for, so `overlapped` and the
// buffer are free again when this returns.
IoResult wait_overlapped(HANDLE handle, OVERLAPPED& overlapped, HANDLE stop_event, DWORD& transferred,
                         DWORD& error) {
  const HANDLE events[2] = {overlapped.hEvent, stop_event};
  const DWORD which = ::WaitForMultipleObjects(2, events, FALSE, INFINITE);
  if (which == WAIT_OBJECT_0 + 1) {
    ::CancelIoEx(handle, &overlapped);
    ::GetOverlappedResult(handle, &overlapped, &transferred, TRUE);
    return IoResult::stopped;
  }
  if (!::GetOverlappedResult(handle, &overlapped, &transferred, FALSE)) {
    error = ::GetLastError();
    return IoResult::failed;
  }
  return IoResult::done;
}

}  // namespace

struct QgaChannels::Impl {
  QgaChannelsConfig config;
  QgaConnectionFactory factory;
  std::shared_ptr<spdlog::logger> logger;

  UniqueHandle stop_event{::CreateEventW(nullptr, TRUE, FALSE, nullptr)};
  std::atomic<bool> started{false};
  std::atomic<bool> stopped{false};
  std::atomic<std::uint64_t> port_sessions{0};
  std::atomic<std::size_t> active_clients{0};

  UniqueHandle first_pipe;  // bound by start(), served by the pipe thread
  std::thread pipe_thread;
  SOCKET hyperv_listener = INVALID_SOCKET;  // bound by start(), served by the hyperv thread
  bool winsock_started = false;
  std::thread hyperv_thread;
  std::thread port_thread;
  struct Client {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  std::mutex clients_mutex;
  std::list<Client> clients;

  bool stop_requested() const { return ::WaitForSingleObject(stop_event.get(), 0) == WAIT_OBJECT_0; }

  // How pump() reads and writes: a pipe or a port with ReadFile/WriteFile;
  // a socket with WSARecv/WSASend, as not every Winsock provider takes
  // ReadFile on its sockets.
  enum class Channel { file, socket };

  // Starts an overlapped read or write; false with `error` when it failed
  // at once rather than pending or completing.
  static bool start_io(Channel channel, HANDLE handle, bool read, char* data, DWORD size, OVERLAPPED& overlapped,
                       DWORD& error) {
    if (channel == Channel::file) {
      const BOOL ok = read ? ::ReadFile(handle, data, size, nullptr, &overlapped)
                           : ::WriteFile(handle, data, size, nullptr, &overlapped);
      error = ok ? 0 : ::GetLastError();
      return ok || error == ERROR_IO_PENDING;
    }
    WSABUF buffer{size, data};
    DWORD flags = 0;
    const SOCKET socket = reinterpret_cast<SOCKET>(handle);
    const int result = read ? ::WSARecv(socket, &buffer, 1, nullptr, &flags, &overlapped, nullptr)
                            : ::WSASend(socket, &buffer, 1, nullptr, 0, &overlapped, nullptr);
    error = result == 0 ? 0 : static_cast<DWORD>(::WSAGetLastError());
    return result == 0 || error == WSA_IO_PENDING;
  }

  static bool is_disconnect(DWORD error) {
    return error == ERROR_BROKEN_PIPE || error == ERROR_PIPE_NOT_CONNECTED || error == ERROR_HANDLE_EOF ||
           error == ERROR_NETNAME_DELETED || error == WSAECONNRESET || error == WSAECONNABORTED;
  }

  // Reads, feeds the protocol, writes the replies, until the peer leaves
  // (false) or stop (true). Overlapped handle (or socket).
  bool pump(HANDLE handle, QgaConnection& connection, const std::string& peer, Channel channel = Channel::file) {
    std::string buffer(kReadChunk, '\0');
    UniqueHandle io_event(::CreateEventW(nullptr, TRUE, FALSE, nullptr));
    while (true) {
      OVERLAPPED read{};
      read.hEvent = io_event.get();
      ::ResetEvent(io_event.get());
      DWORD got = 0;
      DWORD error = 0;
      if (!start_io(channel, handle, true, buffer.data(), kReadChunk, read, error)) {
        if (!is_disconnect(error)) {
          logger->warn("qga: reading {} failed: {}", peer, win::error_text(error));
        }
        return false;
      }
      switch (wait_overlapped(handle, read, stop_event.get(), got, error)) {
        case IoResult::stopped:
          return true;
        case IoResult::failed:
          if (!is_disconnect(error)) {
            logger->warn("qga: reading {} failed: {}", peer, win::error_text(error));
          }
          return false;
        case IoResult::done:
          break;
      }
      if (got == 0 && channel == Channel::socket) {
        return false;  // the peer closed its end
      }
      if (got == 0) {
        // Nothing read (a zero-byte message, or a port whose driver
        // completes reads empty while the host is away): pause before the
        // next read so that can never become a busy loop.
        if (::WaitForSingleObject(stop_event.get(), kEmptyReadPauseMs) == WAIT_OBJECT_0) {
          return true;
        }
        continue;
      }
      const auto output = connection.feed(std::string_view(buffer.data(), got));
      std::size_t written = 0;
      while (written < output.bytes.size()) {
        OVERLAPPED write{};
        write.hEvent = io_event.get();
        ::ResetEvent(io_event.get());
        DWORD sent = 0;
        if (!start_io(channel, handle, false, const_cast<char*>(output.bytes.data() + written),
                      static_cast<DWORD>(output.bytes.size() - written), write, error)) {
          return false;
        }
        const auto result = wait_overlapped(handle, write, stop_event.get(), sent, error);
        if (result != IoResult::done) {
          return result == IoResult::stopped;
        }
        written += sent;
      }
      if (output.close) {
        logger->warn("qga: closed the {} connection (oversize or invalid input)", peer);
        return false;
      }
    }
  }

  // ---- the named pipe ------------------------------------------------------

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

  void serve_pipe() {
    const std::string& name = config.pipe->name;
    UniqueHandle instance = std::move(first_pipe);
    UniqueHandle connect_event(::CreateEventW(nullptr, TRUE, FALSE, nullptr));
    while (!stop_requested()) {
      if (!instance) {
        std::string error;
        instance.reset(win::create_pipe_instance(name, false, error));
        if (!instance) {
          logger->warn("qga: pipe {}: cannot create an instance: {}; retrying", name, error);
          if (::WaitForSingleObject(stop_event.get(), 1000) == WAIT_OBJECT_0) {
            return;
          }
          continue;
        }
      }
      OVERLAPPED connect{};
      connect.hEvent = connect_event.get();
      ::ResetEvent(connect_event.get());
      bool connected = ::ConnectNamedPipe(instance.get(), &connect) != FALSE;
      DWORD error = ::GetLastError();
      if (!connected && error == ERROR_PIPE_CONNECTED) {
        connected = true;
      } else if (!connected && error == ERROR_IO_PENDING) {
        DWORD ignored = 0;
        const auto result = wait_overlapped(instance.get(), connect, stop_event.get(), ignored, error);
        if (result == IoResult::stopped) {
          return;
        }
        connected = result == IoResult::done;
      }
      if (!connected) {
        logger->warn("qga: pipe {}: connect failed: {}", name, win::error_text(error));
        instance.reset();
        continue;
      }
      reap_finished_clients();
      UniqueHandle client_pipe = std::move(instance);
      const auto client = win::identify_pipe_client(client_pipe.get());
      std::string peer = "pipe pid " + std::to_string(client.pid);
      if (!client.error.empty() || !client.privileged) {
        logger->warn("qga: refused {} {}: {}", peer, client.account,
                     client.error.empty() ? "not SYSTEM or an administrator" : client.error);
        continue;
      }
      peer += " " + client.account;
      if (active_clients.load() >= config.max_connections) {
        // Closing at once: the client sees the pipe broken instead of
        // waiting on a connection nobody reads.
        logger->warn("qga: refused a {} connection: {} already open (the limit)", peer, config.max_connections);
        continue;
      }
      ++active_clients;
      std::lock_guard lock(clients_mutex);
      auto& entry = clients.emplace_back();
      entry.thread = std::thread([this, handle = client_pipe.release(), peer, &entry]() {
        UniqueHandle owned(handle);
        try {
          auto connection = factory(peer, /*can_close=*/true);
          pump(owned.get(), *connection, peer);
          // At the level of the service\'s "connected" line: the log is flushed at
          // info, and a reader must see both ends of every connection.
          logger->info("qga: {} disconnected", peer);
        } catch (const std::exception& e) {
          logger->error("qga: {} connection failed: {}", peer, e.what());
        }
        owned.reset();
        --active_clients;
        entry.done = true;
      });
    }
  }

  // ---- the Hyper-V socket ----------------------------------------------------

  // Creates, binds and listens; throws naming the listener and the WSA
  // error (wine and a Windows not on Hyper-V have no AF_HYPERV).
  void bind_hyperv() {
    const std::string name = "qga hyperv service " + config.hyperv->service_id + " listener: ";
    WSADATA data;
    if (const int error = ::WSAStartup(MAKEWORD(2, 2), &data); error != 0) {
      throw std::runtime_error(name + "WSAStartup failed: " + win::error_text(static_cast<DWORD>(error)));
    }
    winsock_started = true;
    hyperv_listener = ::WSASocketW(win::hyperv_address_family(), SOCK_STREAM, win::hyperv_protocol(), nullptr, 0,
                                   WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    if (hyperv_listener == INVALID_SOCKET) {
      throw std::runtime_error(
          name + win::hyperv_socket_error("socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW)", ::WSAGetLastError()));
    }
    const auto address = win::hyperv_listen_address(config.hyperv->service_id);
    if (::bind(hyperv_listener, reinterpret_cast<const sockaddr*>(address.data()), static_cast<int>(address.size())) != 0) {
      throw std::runtime_error(name + win::hyperv_socket_error("bind", ::WSAGetLastError()));
    }
    if (::listen(hyperv_listener, SOMAXCONN) != 0) {
      throw std::runtime_error(name + win::hyperv_socket_error("listen", ::WSAGetLastError()));
    }
  }

  void close_hyperv() {
    if (hyperv_listener != INVALID_SOCKET) {
      ::closesocket(hyperv_listener);
      hyperv_listener = INVALID_SOCKET;
    }
    if (winsock_started) {
      ::WSACleanup();
      winsock_started = false;
    }
  }

  // Accepts with an event (FD_ACCEPT) waited for with the stop event; each
  // connection gets its own thread, as the pipe's do.
  void serve_hyperv() {
    const std::string& service_id = config.hyperv->service_id;
    WSAEVENT accept_event = ::WSACreateEvent();
    if (accept_event == WSA_INVALID_EVENT || ::WSAEventSelect(hyperv_listener, accept_event, FD_ACCEPT) != 0) {
      logger->error("qga: hyperv service {}: cannot wait for connections: {}", service_id,
                    win::error_text(static_cast<DWORD>(::WSAGetLastError())));
      if (accept_event != WSA_INVALID_EVENT) {
        ::WSACloseEvent(accept_event);
      }
      return;
    }
    while (true) {
      const HANDLE events[2] = {accept_event, stop_event.get()};
      if (::WaitForMultipleObjects(2, events, FALSE, INFINITE) != WAIT_OBJECT_0) {
        break;  // stop
      }
      ::WSAResetEvent(accept_event);
      std::array<unsigned char, 64> peer_address{};
      int peer_size = static_cast<int>(peer_address.size());
      SOCKET client = ::accept(hyperv_listener, reinterpret_cast<sockaddr*>(peer_address.data()), &peer_size);
      if (client == INVALID_SOCKET) {
        if (const int error = ::WSAGetLastError(); error != WSAEWOULDBLOCK) {
          logger->warn("qga: hyperv service {}: accept failed: {}", service_id,
                       win::error_text(static_cast<DWORD>(error)));
        }
        continue;
      }
      // The accepted socket inherits the listener's event selection and
      // non-blocking mode; its own I/O is overlapped, so clear both.
      ::WSAEventSelect(client, nullptr, 0);
      u_long blocking = 0;
      ::ioctlsocket(client, FIONBIO, &blocking);
      const std::string peer = win::describe_hyperv_peer(peer_address.data(), static_cast<std::size_t>(peer_size));
      reap_finished_clients();
      if (active_clients.load() >= config.max_connections) {
        logger->warn("qga: refused a {} connection: {} already open (the limit)", peer, config.max_connections);
        ::closesocket(client);
        continue;
      }
      ++active_clients;
      std::lock_guard lock(clients_mutex);
      auto& entry = clients.emplace_back();
      entry.thread = std::thread([this, client, peer, &entry]() {
        try {
          logger->debug("qga: {} connected", peer);
          auto connection = factory(peer, /*can_close=*/true);
          pump(reinterpret_cast<HANDLE>(client), *connection, peer, Channel::socket);
          logger->debug("qga: {} disconnected", peer);
        } catch (const std::exception& e) {
          logger->error("qga: {} connection failed: {}", peer, e.what());
        }
        ::closesocket(client);
        --active_clients;
        entry.done = true;
      });
    }
    ::WSACloseEvent(accept_event);
  }

  // ---- the virtio-serial port ----------------------------------------------

  void serve_port() {
    const std::string& path = config.virtio_serial_path;
    bool told_absent = false;
    while (!stop_requested()) {
      UniqueHandle port(::CreateFileW(win::widen(path).c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr,
                                      OPEN_EXISTING, FILE_FLAG_OVERLAPPED, nullptr));
      if (!port) {
        const DWORD error = ::GetLastError();
        if (!told_absent) {
          told_absent = true;
          if (error == ERROR_FILE_NOT_FOUND || error == ERROR_PATH_NOT_FOUND) {
            logger->warn(
                "qga: the virtio-serial port {} does not exist: the VM has no virtio-serial channel named "
                "org.qemu.guest_agent.0, or the virtio-win vioserial driver is not installed; qga stays off "
                "on it until it appears (checked every {} s)",
                path, kPortRecheckMs / 1000);
          } else {
            logger->warn("qga: cannot open the virtio-serial port {}: {} (is qemu-ga running?); retrying every {} s",
                         path, win::error_text(error), kPortRecheckMs / 1000);
          }
        }
        if (::WaitForSingleObject(stop_event.get(), kPortRecheckMs) == WAIT_OBJECT_0) {
          return;
        }
        continue;
      }
      told_absent = false;
      ++port_sessions;
      const std::string peer = "virtio-serial " + path;
      logger->info("qga: serving {}", peer);
      auto connection = factory(peer, /*can_close=*/false);
      if (pump(port.get(), *connection, peer)) {
        return;
      }
      logger->info("qga: {} closed; opening it again", peer);
    }
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
  if (impl_->started.exchange(true)) {
    throw std::logic_error("QgaChannels::start called twice");
  }
  if (impl_->config.unix_socket || impl_->config.vsock) {
    throw std::runtime_error(std::string("qga ") + (impl_->config.unix_socket ? "unix_socket" : "vsock_port") +
                             ": not a Windows transport (Windows has qga.pipe)");
  }
  // First: the transport most likely to be missing fails the start before
  // any thread runs.
  if (impl_->config.hyperv) {
    try {
      impl_->bind_hyperv();
    } catch (...) {
      impl_->close_hyperv();
      throw;
    }
  }
  if (impl_->config.pipe) {
    std::string error;
    impl_->first_pipe.reset(win::create_pipe_instance(impl_->config.pipe->name, true, error));
    if (!impl_->first_pipe) {
      impl_->close_hyperv();
      throw std::runtime_error("qga pipe " + impl_->config.pipe->name + " listener: " + error);
    }
    impl_->logger->info("qga: listening on pipe {} (SYSTEM and Administrators only)", impl_->config.pipe->name);
    impl_->pipe_thread = std::thread([impl = impl_.get()] { impl->serve_pipe(); });
  }
  if (impl_->config.hyperv) {
    impl_->logger->info("qga: listening on hyperv service {} (from the Hyper-V host)", impl_->config.hyperv->service_id);
    impl_->hyperv_thread = std::thread([impl = impl_.get()] { impl->serve_hyperv(); });
  }
  if (!impl_->config.virtio_serial_path.empty()) {
    impl_->port_thread = std::thread([impl = impl_.get()] { impl->serve_port(); });
  }
}

void QgaChannels::stop() {
  if (impl_->stopped.exchange(true)) {
    return;
  }
  ::SetEvent(impl_->stop_event.get());
  if (impl_->pipe_thread.joinable()) {
    impl_->pipe_thread.join();
  }
  if (impl_->port_thread.joinable()) {
    impl_->port_thread.join();
  }
  if (impl_->hyperv_thread.joinable()) {
    impl_->hyperv_thread.join();
  }
  {
    std::lock_guard lock(impl_->clients_mutex);
    for (auto& client : impl_->clients) {
      client.thread.join();
    }
    impl_->clients.clear();
  }
  impl_->close_hyperv();
}

bool QgaChannels::vsock_listening() const { return false; }

std::uint64_t QgaChannels::virtio_serial_sessions() const { return impl_->port_sessions.load(); }

}  // namespace quiesce::agent::qga
