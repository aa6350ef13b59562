// The HTTP server's Linux listeners: the Unix socket (mode, group, peer
// credentials, a stale socket file replaced) and AF_VSOCK (the host CID
// only). TCP and everything else are in http_server.cpp.
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <boost/asio/local/stream_protocol.hpp>

#include "agent/api/http_session.hpp"
#include "platform/linux/vsock.hpp"

namespace quiesce::api {
namespace detail {

struct OsListeners {
  std::optional<std::string> unix_path;
  std::optional<std::pair<dev_t, ino_t>> unix_inode;  // to remove only our own socket file
};

namespace {

std::string errno_text(int error) { return std::error_code(error, std::generic_category()).message(); }

// A socket file left behind by an agent that died is replaced; anything else
// at the path (a regular file, a live agent) is an error, never removed.
void remove_stale_unix_socket(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return;
    }
    throw listener_error("unix " + path, "cannot stat: " + errno_text(errno));
  }
  if (!S_ISSOCK(st.st_mode)) {
    throw listener_error("unix " + path, "path exists and is not a socket; refusing to remove it");
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw listener_error("unix " + path, "socket(): " + errno_text(errno));
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address);  // NOLINT
  const int connect_errno = errno;
  ::close(fd);
  if (rc == 0) {
    throw listener_error("unix " + path, "another process is listening on this socket");
  }
  if (connect_errno == EAGAIN) {
    // Backlog full: somebody is alive behind it.
    throw listener_error("unix " + path, "another process is listening on this socket (backlog full)");
  }
  if (connect_errno != ECONNREFUSED && connect_errno != ENOENT) {
    throw listener_error("unix " + path, "cannot probe existing socket: " + errno_text(connect_errno));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw listener_error("unix " + path, "cannot remove stale socket: " + errno_text(errno));
  }
}

gid_t lookup_group(const std::string& name) {
  long size = ::sysconf(_SC_GETGR_R_SIZE_MAX);
  std::vector<char> buffer(static_cast<std::size_t>(size > 0 ? size : 16384));
  group entry{};
  group* found = nullptr;
  int rc = 0;
  while ((rc = ::getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found)) == ERANGE) {
    buffer.resize(buffer.size() * 2);
  }
  if (rc != 0 || found == nullptr) {
    throw std::runtime_error("group '" + name + "' not found" + (rc != 0 ? ": " + errno_text(rc) : ""));
  }
  return found->gr_gid;
}
void remove_unix_socket_file(OsListeners& os) {
  if (!os.unix_path || !os.unix_inode) {
    return;
  }
  // Only our own socket: another agent may have replaced it since.
  struct stat st {};
  if (::lstat(os.unix_path->c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == os.unix_inode->first &&
      st.st_ino == os.unix_inode->second) {
    ::unlink(os.unix_path->c_str());
  }
  os.unix_inode.reset();
}

void bind_unix(ServerState& server, OsListeners& os, const UnixListener& config_in) {
  const std::string name = "unix " + config_in.path;
  if (config_in.path.empty()) {
    throw listener_error("unix", "empty socket path");
  }
  if (config_in.path.size() >= sizeof(sockaddr_un::sun_path)) {
    throw listener_error(name, "path longer than " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                                   " bytes");
  }
  const std::filesystem::path path(config_in.path);
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) {
      throw listener_error(name, "cannot create directory " + path.parent_path().string() + ": " + ec.message());
    }
  }
  remove_stale_unix_socket(config_in.path);

  auto listener = std::make_shared<ServerState::Listener>(server, Transport::unix_socket, name);
  const Endpoint endpoint{asio::local::stream_protocol::endpoint(config_in.path)};
  try {
    listener->acceptor.open(endpoint.protocol());
    // Bind with a umask that leaves the socket owner-only until the chmod
    // below, so nobody can connect in between.
    const mode_t old_umask = ::umask(0177);
    boost::system::error_code bind_error;
    listener->acceptor.bind(endpoint, bind_error);
    ::umask(old_umask);
    if (bind_error) {
      throw boost::system::system_error(bind_error);
    }
    listener->acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    throw listener_error(name, e.code().message());
  }
  os.unix_path = config_in.path;
  struct stat st {};
  if (::lstat(config_in.path.c_str(), &st) == 0) {
    os.unix_inode = std::make_pair(st.st_dev, st.st_ino);
  }
  if (::chmod(config_in.path.c_str(), static_cast<mode_t>(config_in.mode)) != 0) {
    throw listener_error(name, "chmod: " + errno_text(errno));
  }
  if (config_in.group) {
    try {
      const gid_t gid = lookup_group(*config_in.group);
      if (::chown(config_in.path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
        throw std::runtime_error("chgrp " + *config_in.group + ": " + errno_text(errno));
      }
    } catch (const std::runtime_error& e) {
      throw listener_error(name, e.what());
    }
  }
  server.listeners.push_back(std::move(listener));
  server.logger->info("http: listening on {} (mode {:o}{})", name, config_in.mode,
               config_in.group ? ", group " + *config_in.group : std::string());
}

void bind_vsock(ServerState& server, const VsockListener& config_in) {
  const std::string name = "vsock port " + std::to_string(config_in.port);
  const auto skip_or_throw = [&](int error, const std::string& what) {
    if (!config_in.required && platform::is_vsock_unsupported_error(error)) {
      server.logger->warn("http: vsock unavailable ({}); not listening on {}", what, name);
      return;
    }
    throw listener_error(name, what);
  };
  const auto availability = platform::vsock_availability();
  if (!availability.available) {
    skip_or_throw(availability.error, availability.reason);
    return;
  }
  auto listener = std::make_shared<ServerState::Listener>(server, Transport::vsock, name);
  const auto address = platform::make_vsock_sockaddr(platform::vsock_cid_any, config_in.port);
  const Endpoint endpoint(&address, sizeof address);
  try {
    listener->acceptor.open(Protocol(AF_VSOCK, 0));
    listener->acceptor.bind(endpoint);
    listener->acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    skip_or_throw(e.code().category() == boost::system::system_category() ? e.code().value() : 0,
                  e.code().message());
    return;
  }
  server.vsock_bound = true;
  server.listeners.push_back(std::move(listener));
  server.logger->info("http: listening on {} (allowed CIDs: {})", name, fmt::join(config_in.allowed_cids, ","));
}

}  // namespace

void bind_os_listeners(ServerState& server) {
  server.os_listeners = std::make_shared<OsListeners>();
  if (server.config.pipe) {
    throw listener_error("pipe " + server.config.pipe->name, "named pipes are a Windows transport");
  }
  if (server.config.hyperv) {
    throw listener_error("hyperv service " + server.config.hyperv->service_id,
                         "Hyper-V sockets are a Windows transport");
  }
  if (server.config.unix_socket) {
    bind_unix(server, *server.os_listeners, *server.config.unix_socket);
  }
  if (server.config.tcp) {
    server.bind_tcp(*server.config.tcp);
  }
  if (server.config.vsock) {
    bind_vsock(server, *server.config.vsock);
  }
}

void close_os_listeners(ServerState& server) {
  if (server.os_listeners) {
    remove_unix_socket_file(*server.os_listeners);
  }
}

bool describe_os_peer(ServerState& server, Transport transport, Protocol::socket& socket,
                      const Endpoint& endpoint, Peer& peer) {
  switch (transport) {
    case Transport::unix_socket: {
      peer.description = "unix";
      ucred credentials{};
      socklen_t size = sizeof credentials;
      if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &credentials, &size) == 0) {
        peer.unix_uid = credentials.uid;
        peer.unix_pid = credentials.pid;
        peer.description += " pid " + std::to_string(credentials.pid) + " uid " + std::to_string(credentials.uid);
      }
      return true;
    }
    case Transport::vsock: {
      const auto address = platform::vsock_address_of(endpoint.data(), endpoint.size());
      const auto& allowed = server.config.vsock->allowed_cids;
      if (!address || std::find(allowed.begin(), allowed.end(), address->cid) == allowed.end()) {
        server.logger->warn("http: refused vsock connection from {} (allowed CIDs: {})",
                            address ? platform::describe_vsock(*address) : std::string("an unknown address"),
                            fmt::join(allowed, ","));
        return false;
      }
      peer.vsock_cid = address->cid;
      peer.description = platform::describe_vsock(*address);
      return true;
    }
    case Transport::tcp:
    case Transport::qga:
    case Transport::dbus:
    case Transport::named_pipe:
    case Transport::hyperv:
      return false;  // never a listener of this file
  }
  return false;
}

void prepare_tcp_acceptor(Acceptor& acceptor) {
  // A restarted agent rebinds at once, despite connections in TIME_WAIT.
  acceptor.set_option(asio::socket_base::reuse_address(true));
}

}  // namespace detail

}  // namespace quiesce::api
