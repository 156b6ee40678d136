include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS moe_dispatch EXPORT moe_dispatchTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/moe_dispatch DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT moe_dispatchTargets
  NAMESPACE moe_dispatch::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moe_dispatch)
configure_package_config_file(cmake/moe_dispatchConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/moe_dispatchConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moe_dispatch)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/moe_dispatchConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${CMAKE_CURRENT_BINARY_DIR}/moe_dispatchConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/moe_dispatchConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/moe_dispatch)
install(DIRECTORY configs/ DESTINATION ${CMAKE_INSTALL_DATADIR}/moe_dispatch/configs)
