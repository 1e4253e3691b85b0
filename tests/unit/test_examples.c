/*
 * Every workflow in examples/ is valid as shipped: the README tells new users to apply
 * them, so a format change that breaks one must break this test first.
 */
#include "testlib.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "fileio.h"
#include "strutil.h"

/* Validates every *.json of dir (examples/ or one of its directories); returns how many. */
static int validate_dir(const char *dir)
{
        DIR *d = opendir(dir);
        struct dirent *e;
        int checked = 0;

        assert_non_null(d);
        while ((e = readdir(d))) {
                size_t n = strlen(e->d_name);
                char *path, *text = NULL;
                size_t len = 0;
                struct wf_workflow *wf = NULL;
                json_t *errors = NULL;

                if (n < 6 || strcmp(e->d_name + n - 5, ".json") != 0)
                        continue;
                path = str_printf("%s/%s", dir, e->d_name);
                assert_int_equal(file_read_all(path, WF_MAX_DEFINITION_BYTES, &text, &len), 0);
                if (wf_parse_text(text, len, &wf, &errors) < 0) {
                        char *dump = errors ? json_dumps(errors, JSON_INDENT(2)) : NULL;
                        fprintf(stderr, "%s is not a valid workflow:\n%s\n", path, dump);
                        free(dump);
                        fail();
                }
                /* the file name is the workflow name, so `run start <name>` matches */
                assert_int_equal(strncmp(wf_name(wf), e->d_name, n - 5), 0);
                assert_int_equal(strlen(wf_name(wf)), n - 5);
                wf_free(wf);
                free(text);
                free(path);
                checked++;
        }
        closedir(d);
        return checked;
}

static void every_example_validates(void **state)
{
        DIR *d = opendir(AGENTLY_SOURCE_DIR "/examples");
        struct dirent *e;
        int checked;

        (void)state;
        assert_non_null(d);
        checked = validate_dir(AGENTLY_SOURCE_DIR "/examples");
        /* an example of several files is a directory (examples/chase-document/) */
        while ((e = readdir(d))) {
                char *sub;
                DIR *probe;
                if (e->d_name[0] == '.')
                        continue;
                sub = str_printf("%s/examples/%s", AGENTLY_SOURCE_DIR, e->d_name);
                probe = opendir(sub);
                if (probe) {
                        closedir(probe);
                        checked += validate_dir(sub);
                }
                free(sub);
        }
        closedir(d);
        assert_int_ge(checked, 4);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(every_example_validates),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
