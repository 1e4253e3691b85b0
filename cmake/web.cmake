# The dashboard (web/): a TypeScript + Preact app that Vite builds into the build directory's
# web/ (AGENTLY_WEB_DIR), which `agently api` serves at / (src/api/api_static.c). Its npm
# packages are installed by scripts/install-deps (npm ci, pinned by web/package-lock.json).
# The build regenerates the API types from docs/openapi.json, type-checks, bundles and gzips,
# and fails when the bundle passes its budget (web/scripts/compress.mjs).
set(AGENTLY_WEB_DIR ${CMAKE_BINARY_DIR}/web)
set(AGENTLY_WEB_BUILT OFF)
find_program(AGENTLY_NPM npm)
if(AGENTLY_NPM AND EXISTS ${CMAKE_SOURCE_DIR}/web/node_modules/.package-lock.json)
  file(GLOB_RECURSE agently_web_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/web/src/*
       ${CMAKE_SOURCE_DIR}/web/scripts/*)
  list(FILTER agently_web_sources EXCLUDE REGEX "\\.gen\\.ts$")
  add_custom_command(
    OUTPUT ${AGENTLY_WEB_DIR}/index.html
    COMMAND ${CMAKE_COMMAND} -E env AGENTLY_WEB_OUT=${AGENTLY_WEB_DIR} ${AGENTLY_NPM} run --silent build
    DEPENDS ${agently_web_sources} ${CMAKE_SOURCE_DIR}/web/package.json
            ${CMAKE_SOURCE_DIR}/web/package-lock.json ${CMAKE_SOURCE_DIR}/web/vite.config.ts
            ${CMAKE_SOURCE_DIR}/web/tsconfig.json ${CMAKE_SOURCE_DIR}/web/index.html
            ${CMAKE_SOURCE_DIR}/docs/openapi.json
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/web
    COMMENT "Building the dashboard (web/)"
    VERBATIM)
  add_custom_target(agently_web ALL DEPENDS ${AGENTLY_WEB_DIR}/index.html)
  set(AGENTLY_WEB_BUILT ON)
elseif(DEFINED ENV{CI})
  message(FATAL_ERROR "web/node_modules is missing: run scripts/install-deps (CI must build the dashboard)")
else()
  message(WARNING "the dashboard is not built: web/node_modules is missing (run scripts/install-deps)")
endif()
