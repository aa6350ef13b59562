/*
 * The marker file on Windows: CreateFileA, WriteFile, FlushFileBuffers, then
 * MoveFileExA(REPLACE_EXISTING | WRITE_THROUGH), which replaces the target in
 * one step and returns once the rename is on disk (what rename + fsync of
 * the directory give on POSIX).
 */
#include <windows.h>

#include <stdio.h>
#include <string.h>

#include "marker_file.h"
#include "quiesce/plugin_abi.h"

int marker_path_is_absolute(const char* path) {
  /* A drive letter and a separator; "C:file" is relative to that drive's
   * current directory, and "\dir" to the current drive. */
  int letter = (path[0] >= 'A' && path[0] <= 'Z') || (path[0] >= 'a' && path[0] <= 'z');
  return letter && path[1] == ':' && (path[2] == '/' || path[2] == '\\');
}

static void describe_last_error(const char* file, char* error, size_t error_size) {
  DWORD code = GetLastError();
  char text[512] = "";
  DWORD length = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL,
                                code, 0, text, sizeof text, NULL);
  while (length > 0 && (text[length - 1] == '\n' || text[length - 1] == '\r' ||
                        text[length - 1] == ' ' || text[length - 1] == '.')) {
    text[--length] = '\0';
  }
  snprintf(error, error_size, "%s: %s (error %lu)", file, length > 0 ? text : "unknown error",
           (unsigned long)code);
}

int32_t marker_file_replace(const char* path, const char* content, char* error,
                            size_t error_size) {
  char temp[MAX_PATH];
  if (snprintf(temp, sizeof temp, "%s.tmp", path) >= (int)sizeof temp) {
    snprintf(error, error_size, "marker path too long: %s", path);
    return QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
  }
  HANDLE file = CreateFileA(temp, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL,
                            NULL);
  if (file == INVALID_HANDLE_VALUE) {
    describe_last_error(temp, error, error_size);
    return QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
  }
  DWORD length = (DWORD)strlen(content);
  DWORD written = 0;
  if (!WriteFile(file, content, length, &written, NULL) || written != length ||
      !FlushFileBuffers(file)) {
    describe_last_error(temp, error, error_size);
    CloseHandle(file);
    DeleteFileA(temp);
    return QUIESCE_PLUGIN_ERROR_RETRYABLE;
  }
  CloseHandle(file);
  if (!MoveFileExA(temp, path, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) {
    describe_last_error(path, error, error_size);
    DeleteFileA(temp);
    return QUIESCE_PLUGIN_ERROR_RETRYABLE;
  }
  return QUIESCE_PLUGIN_OK;
}
