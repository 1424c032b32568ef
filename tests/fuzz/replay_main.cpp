// The main of a fuzz target built without libFuzzer (the fuzz-replay suite in
// every build, g++ included): runs each file named on the command line, and
// each regular file in each directory named (sorted, not recursive), through
// the target's LLVMFuzzerTestOneInput once. A crash, a sanitizer report or a
// broken promise fails the run like any test. A missing directory, an
// unreadable file or a run with no input at all is an error too: a replay
// that checks nothing must not pass.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;

bool inputs_of(const fs::path& arg, std::vector<fs::path>& out) {
    std::error_code ec;
    if (fs::is_regular_file(arg, ec)) {
        out.push_back(arg);
        return true;
    }
    if (!fs::is_directory(arg, ec)) {
        std::fprintf(stderr, "replay: %s: not a file or directory\n", arg.c_str());
        return false;
    }
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(arg, ec))
        if (entry.is_regular_file() && entry.path().filename().string().front() != '.')
            files.push_back(entry.path());
    if (ec) {
        std::fprintf(stderr, "replay: %s: %s\n", arg.c_str(), ec.message().c_str());
        return false;
    }
    std::sort(files.begin(), files.end());
    out.insert(out.end(), files.begin(), files.end());
    return true;
}

bool replay(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "replay: %s: cannot open\n", file.c_str());
        return false;
    }
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    if (in.bad()) {
        std::fprintf(stderr, "replay: %s: read error\n", file.c_str());
        return false;
    }
    // Announced before the run, so the input that crashes is the last one named.
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", file.c_str(), bytes.size());
    // A copy of exactly the file's size: ASan sees any read past the end.
    std::vector<std::uint8_t> exact(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(exact.data(), exact.size());
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
        return 2;
    }
    std::vector<fs::path> files;
    bool ok = true;
    for (int i = 1; i < argc; ++i)
        ok = inputs_of(argv[i], files) && ok;
    for (const auto& f : files)
        ok = replay(f) && ok;
    if (files.empty()) {
        std::fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    std::printf("replayed %zu inputs\n", files.size());
    return ok ? 0 : 1;
}
