// The C++ API from a program outside the tree, built against an installed
// libtokenshm with `pkg-config --cflags --libs tokenshm`
// (tests/command/test_install.py).
//
//   consumer SEGMENT NAME
//
// Waits (up to 10 s) for NAME's first token and prints it on stdout; exit 0,
// or the failing step on stderr and exit 1.
#include <tokenshm/reader.hpp>

#include <chrono>
#include <iostream>

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: consumer SEGMENT NAME\n";
        return 2;
    }
    auto reader = tokenshm::Reader::open(argv[1]);
    if (!reader) {
        std::cerr << "consumer: open: " << reader.error().message << "\n";
        return 1;
    }
    auto handle = reader->lookup(argv[2]);
    if (!handle) {
        std::cerr << "consumer: lookup: " << handle.error().message << "\n";
        return 1;
    }
    auto token = handle->wait(0, std::chrono::seconds(10));
    if (!token) {
        std::cerr << "consumer: wait: error " << static_cast<int>(token.error()) << "\n";
        return 1;
    }
    std::cout << token->token() << "\n";
    return 0;
}
