// A child that never exits, for the hooks tests (hooks_windows_test.cpp):
// it writes its process id to argv[1] and sleeps until it is killed. Our
// own program, so a test can find exactly this process again by its id.
#include <windows.h>

#include <fstream>

int main(int argc, char** argv) {
  if (argc != 2) {
    return 2;
  }
  {
    std::ofstream out(argv[1]);
    out << ::GetCurrentProcessId() << "\n";
  }
  ::Sleep(INFINITE);
  return 0;
}
