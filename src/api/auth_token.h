/*
 * API tokens: 256 random bits shown once as "agt_<43 base64url chars>"; only the SHA-256 of
 * the whole token string is stored, with a short prefix for display in listings.
 */
#pragma once

#include <stddef.h>

#define AUTH_TOKEN_PREFIX      "agt_"
#define AUTH_TOKEN_LEN         (4 + 43)
#define AUTH_TOKEN_HASH_BYTES  32
#define AUTH_TOKEN_SHOWN_CHARS 10 /* "agt_" and 6 more, for listings */

/* Fills token (AUTH_TOKEN_LEN + 1 bytes), its hash and its display prefix
 * (AUTH_TOKEN_SHOWN_CHARS + 1 bytes). Returns 0, or -EIO when libsodium cannot start. */
int auth_token_generate(char *token, unsigned char *hash, char *shown_prefix);

/* Hashes a presented token; -EINVAL when it does not have the token's shape. */
int auth_token_hash(const char *token, unsigned char *hash);

/* The hash as a Postgres bytea hex literal "\\x..." (2 + 64 + 1 bytes). */
void auth_token_hash_hex(const unsigned char *hash, char *out);
