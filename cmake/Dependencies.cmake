# Dependencies come from the distribution (Debian 12 package names in the messages).
find_package(CUDAToolkit 12.0 REQUIRED)

find_path(MOE_DISPATCH_YAML_CPP_INCLUDE_DIR yaml-cpp/yaml.h)
find_library(MOE_DISPATCH_YAML_CPP_LIBRARY NAMES libyaml-cpp.a)
if(NOT MOE_DISPATCH_YAML_CPP_INCLUDE_DIR OR NOT MOE_DISPATCH_YAML_CPP_LIBRARY)
  message(FATAL_ERROR
    "yaml-cpp (static archive libyaml-cpp.a and headers) not found: "
    "install it with `apt-get install libyaml-cpp-dev`")
endif()
# Debian's yaml-cpp CMake config imports only the shared library; we link the archive directly.
add_library(moe_dispatch_yaml_cpp INTERFACE)
target_include_directories(moe_dispatch_yaml_cpp SYSTEM INTERFACE ${MOE_DISPATCH_YAML_CPP_INCLUDE_DIR})
target_link_libraries(moe_dispatch_yaml_cpp INTERFACE ${MOE_DISPATCH_YAML_CPP_LIBRARY})

if(MOE_DISPATCH_BUILD_TESTS)
  find_path(MOE_DISPATCH_DOCTEST_INCLUDE_DIR doctest/doctest.h)
  if(NOT MOE_DISPATCH_DOCTEST_INCLUDE_DIR)
    message(FATAL_ERROR "doctest not found: install it with `apt-get install doctest-dev`")
  endif()
endif()
