/* The marker file on POSIX: open, write, fsync, rename. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "marker_file.h"
#include "quiesce/plugin_abi.h"

int marker_path_is_absolute(const char* path) { return path[0] == '/'; }

int32_t marker_file_replace(const char* path, const char* content, char* error,
                            size_t error_size) {
  char temp[4096];
  if (snprintf(temp, sizeof temp, "%s.tmp", path) >= (int)sizeof temp) {
    snprintf(error, error_size, "marker path too long: %s", path);
    return QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
  }
  int fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    snprintf(error, error_size, "%s: %s", temp, strerror(errno));
    return QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
  }
  size_t length = strlen(content);
  if (write(fd, content, length) != (ssize_t)length || fsync(fd) != 0) {
    snprintf(error, error_size, "%s: %s", temp, strerror(errno));
    close(fd);
    return QUIESCE_PLUGIN_ERROR_RETRYABLE;
  }
  close(fd);
  if (rename(temp, path) != 0) {
    snprintf(error, error_size, "%s: %s", path, strerror(errno));
    return QUIESCE_PLUGIN_ERROR_RETRYABLE;
  }
  return QUIESCE_PLUGIN_OK;
}
