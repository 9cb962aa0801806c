# Every dependency comes from Debian 12 packages installed by scripts/bootstrap.sh.
find_package(Threads REQUIRED)
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)

# OpenBLAS: Debian ships a pkg-config file but no CMake package config; FindBLAS would
# pick whichever BLAS alternative is active, so ask for openblas by name.
find_package(PkgConfig REQUIRED)
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)

# oneDNN (libdnnl-dev): the default GEMM path. Header + library rather than its CMake package,
# whose config also demands OpenCL (its GPU runtime), which occult does not use. Debian builds it
# on OpenMP; linalg sets the OpenMP thread count, so it links OpenMP too.
find_path(DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.hpp REQUIRED)
find_library(DNNL_LIBRARY dnnl REQUIRED)
add_library(occult_dnnl INTERFACE)
target_include_directories(occult_dnnl INTERFACE ${DNNL_INCLUDE_DIR})
target_link_libraries(occult_dnnl INTERFACE ${DNNL_LIBRARY})
find_package(OpenMP REQUIRED COMPONENTS CXX)

# Tokenizer regexes (Oniguruma-style \p{L}, lookahead, inline flags) and NFC normalization.
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)

# METIS 5: header + library, no CMake config in Debian.
find_path(METIS_INCLUDE_DIR metis.h REQUIRED)
find_library(METIS_LIBRARY metis REQUIRED)
add_library(occult_metis INTERFACE)
target_include_directories(occult_metis INTERFACE ${METIS_INCLUDE_DIR})
target_link_libraries(occult_metis INTERFACE ${METIS_LIBRARY})

if(OCCULT_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(OCCULT_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

find_program(OCCULT_MPIEXEC NAMES mpirun mpiexec REQUIRED)
