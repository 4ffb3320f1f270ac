# Included by every project() of the llama-cpp-python build (.ci/install-realllm passes it as
# CMAKE_PROJECT_INCLUDE). llama-cpp-python forces llama.cpp's `common` library on, but its
# Python package loads only libllama, libggml* (and libmtmd, which LLAVA_BUILD=OFF skips):
# `common` (chat parsers, arg parsing, downloads, cpp-httplib) is compiled for nothing. Its
# own CMakeLists sets the option after its project() and before llama.cpp's, so turning it
# off again at llama.cpp's project() wins (option() keeps a value already cached).
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp common library: unused by llama-cpp-python" FORCE)
