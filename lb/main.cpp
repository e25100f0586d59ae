// lb: a layer-7 HTTP load balancer.
//   lb run   -c FILE   serve (FILE defaults to config/lb.yaml)
//   lb check -c FILE   validate only
//   lb version
#include "config/config.hpp"
#include "lb/control/control_plane.hpp"
#include "lb/version.hpp"

#include <cstdio>
#include <cstring>
#include <string>

namespace {

int usage() {
  std::fprintf(stderr, "usage: lb run [-c FILE]     serve (FILE defaults to config/lb.yaml)\n"
                       "       lb check [-c FILE]   validate the config and exit\n"
                       "       lb version\n");
  return 2;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2)
    return usage();
  std::string command = argv[1];
  if (command == "version" || command == "--version") {
    std::printf("lb %s\n", lb::version);
    return 0;
  }
  if (command != "run" && command != "check")
    return usage();

  std::string file = "config/lb.yaml";
  for (int i = 2; i < argc; ++i) {
    if ((std::strcmp(argv[i], "-c") == 0 || std::strcmp(argv[i], "--config") == 0) &&
        i + 1 < argc) {
      file = argv[++i];
    } else {
      std::fprintf(stderr, "lb: unknown argument '%s'\n", argv[i]);
      return usage();
    }
  }

  auto loaded = lb::config::load_file(file);
  if (!loaded.config) {
    for (const auto& e : loaded.errors)
      std::fprintf(stderr, "%s\n", e.c_str());
    std::fprintf(stderr, "lb: %zu error%s in %s\n", loaded.errors.size(),
                 loaded.errors.size() == 1 ? "" : "s", file.c_str());
    return 1;
  }
  if (command == "check") {
    std::printf("ok\n");
    return 0;
  }
  return lb::control::ControlPlane(loaded.config).run();
}
