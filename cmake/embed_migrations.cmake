# Embeds migrations/*.sql (text and SHA-256) into the binary, so `agently migrate` needs no
# files at run time and a changed migration is detected by comparing checksums.
file(GLOB AGENTLY_MIGRATION_FILES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/migrations/*.sql)
list(SORT AGENTLY_MIGRATION_FILES)
set(AGENTLY_MIGRATIONS_C ${CMAKE_BINARY_DIR}/generated/migrations_data.c)
add_custom_command(
  OUTPUT ${AGENTLY_MIGRATIONS_C}
  COMMAND ${CMAKE_COMMAND} -DOUT=${AGENTLY_MIGRATIONS_C} -DDIR=${CMAKE_SOURCE_DIR}/migrations
          -P ${CMAKE_SOURCE_DIR}/cmake/generate_migrations.cmake
  DEPENDS ${AGENTLY_MIGRATION_FILES} ${CMAKE_SOURCE_DIR}/cmake/generate_migrations.cmake
  COMMENT "Embedding SQL migrations")
