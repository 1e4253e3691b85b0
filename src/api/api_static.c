/*
 * The dashboard's files: the built single-page app (web/, built by Vite into the build
 * directory's web/, or --web-dir) served at / by the API itself, so the dashboard needs no
 * other server and no network at run time. Vite names every asset after a hash of its
 * content (assets/index-3f2a9c1b.js), so those are immutable and cached for a year; the
 * entry page is revalidated on every load (no-cache, with an ETag), so a new build is seen
 * at once. Any other path outside /v1/ that names no file is a route of the app (a run's
 * page, /runs/ID) and gets the entry page: the app's router reads the path. A file is sent
 * gzip-compressed when the build left a .gz beside it and the client accepts gzip.
 */
#include "api_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "strutil.h"

#define IMMUTABLE "public, max-age=31536000, immutable"
/* what the entry page may load and where it may talk: this server only */
#define PAGE_POLICY                                                                                \
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "             \
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "             \
        "frame-ancestors 'none'"

static const struct {
        const char *ext, *type;
} content_types[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".json", "application/json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".ico", "image/x-icon"},
    {".woff2", "font/woff2"},
    {".txt", "text/plain; charset=utf-8"},
    {".map", "application/json"},
};

static const char *content_type(const char *path)
{
        const char *dot = strrchr(path, '.');

        for (size_t i = 0; dot && i < ELEMENTSOF(content_types); i++)
                if (strcasecmp(dot, content_types[i].ext) == 0)
                        return content_types[i].type;
        return "application/octet-stream";
}

const char *api_static_dir(const struct api_options *o)
{
        if (o->web_dir)
                return o->web_dir;
        if (!str_is_empty(getenv("AGENTLY_WEB_DIR")))
                return getenv("AGENTLY_WEB_DIR");
#ifdef AGENTLY_WEB_DIR_DEFAULT
        return AGENTLY_WEB_DIR_DEFAULT;
#else
        return NULL;
#endif
}

/* A path the app may serve: absolute, no empty, hidden, "." or ".." segment, no backslash. */
static bool safe_path(const char *url)
{
        if (url[0] != '/' || strchr(url, '\\'))
                return false;
        for (const char *p = url; *p; p++)
                if (p[0] == '/' && (p[1] == '.' || (p[1] == '/')))
                        return false;
        return true;
}

/* Opens dir/rel as a regular file (no symlink at the end); fd or -errno, *st filled. */
static int open_file(const char *dir, const char *rel, struct stat *st)
{
        _cleanup_free_ char *path = str_printf("%s%s", dir, rel);
        int fd;

        if (!path)
                return -ENOMEM;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (fstat(fd, st) < 0 || !S_ISREG(st->st_mode)) {
                close(fd);
                return -ENOENT;
        }
        return fd;
}

static bool accepts_gzip(struct MHD_Connection *conn)
{
        const char *ae =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING);

        return ae && strstr(ae, "gzip");
}

unsigned api_static_serve(const struct api_options *o, struct MHD_Connection *conn, const char *url,
                          struct api_response *resp)
{
        const char *dir = api_static_dir(o);
        const char *rel = strcmp(url, "/") == 0 ? "/index.html" : url;
        bool entry, gzipped = false;
        struct stat st;
        int fd;

        if (!dir || !safe_path(url))
                return 0;
        fd = open_file(dir, rel, &st);
        if (fd == -ENOENT && !str_has_prefix(url, "/assets/")) {
                rel = "/index.html"; /* a route of the app */
                fd = open_file(dir, rel, &st);
        }
        if (fd < 0)
                return 0;
        entry = strcmp(rel, "/index.html") == 0;
        if (accepts_gzip(conn)) {
                _cleanup_free_ char *gz = str_printf("%s.gz", rel);
                struct stat zst;
                int zfd = gz ? open_file(dir, gz, &zst) : -ENOMEM;
                if (zfd >= 0) {
                        close(fd);
                        fd = zfd;
                        st = zst;
                        gzipped = true;
                }
        }

        char etag[64];
        snprintf(etag, sizeof(etag), "\"%llx-%llx%s\"", (unsigned long long)st.st_size,
                 (unsigned long long)st.st_mtim.tv_sec * 1000000000ull +
                     (unsigned long long)st.st_mtim.tv_nsec,
                 gzipped ? "-gz" : "");
        const char *inm =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
        struct MHD_Response *mr;
        if (inm && strcmp(inm, etag) == 0) {
                close(fd);
                mr = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
                resp->status = 304;
        } else {
                mr = MHD_create_response_from_fd((uint64_t)st.st_size, fd); /* owns fd */
                if (!mr)
                        close(fd);
                resp->status = 200;
        }
        if (!mr)
                return api_error(resp, 500, "internal", "could not send a file", NULL, NULL);
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, content_type(rel));
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CACHE_CONTROL,
                                str_has_prefix(rel, "/assets/") ? IMMUTABLE : "no-cache");
        MHD_add_response_header(mr, MHD_HTTP_HEADER_ETAG, etag);
        MHD_add_response_header(mr, MHD_HTTP_HEADER_VARY, "Accept-Encoding");
        MHD_add_response_header(mr, "X-Content-Type-Options", "nosniff");
        if (gzipped)
                MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
        if (entry) {
                MHD_add_response_header(mr, "Content-Security-Policy", PAGE_POLICY);
                MHD_add_response_header(mr, "Referrer-Policy", "same-origin");
                MHD_add_response_header(mr, "X-Frame-Options", "DENY");
        }
        resp->raw = mr;
        return resp->status;
}
