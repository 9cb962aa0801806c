# occult_add_library(NAME SOURCES ... DEPS ...): a module library with the public include dir.
function(occult_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/include
                                     PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# The environment of every test that starts mpirun: root allowed, oversubscription (CI has 2
# cores), one BLAS thread per rank, and no grace period between the SIGTERM and the SIGKILL that
# end a job after a rank exits non-zero (Open MPI waits a second there by default, which is most
# of the time of the many tests that expect a failure).
set(OCCULT_MPI_TEST_ENVIRONMENT
    "OPENBLAS_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;OMPI_MCA_odls_base_sigkill_timeout=0")

# occult_add_test(NAME SOURCES ... DEPS ...): a GoogleTest binary registered with ctest.
function(occult_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "OPENBLAS_NUM_THREADS=1;OCCULT_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()

# occult_add_mpi_test(NAME SOURCES ... DEPS ... RANKS 1 2 3 4): one GoogleTest binary run
# under mpirun once per rank count, as ctest tests NAME.np<R>. The binary must use
# tests/mpi_main.cc (MPI_Init + a listener that reports failures on every rank).
function(occult_add_mpi_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;DEPS;RANKS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES} ${PROJECT_SOURCE_DIR}/tests/mpi_main.cc)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} MPI::MPI_CXX GTest::gtest GTest::gmock)
  if(NOT ARG_RANKS)
    set(ARG_RANKS 1 2 3 4)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  foreach(np IN LISTS ARG_RANKS)
    add_test(NAME ${name}.np${np}
      COMMAND ${OCCULT_MPIEXEC} --allow-run-as-root --oversubscribe
              -x OPENBLAS_NUM_THREADS=1 -np ${np} $<TARGET_FILE:${name}>)
    set_tests_properties(${name}.np${np} PROPERTIES TIMEOUT ${ARG_TIMEOUT} PROCESSORS ${np}
      ENVIRONMENT "${OCCULT_MPI_TEST_ENVIRONMENT};OCCULT_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  endforeach()
endfunction()
