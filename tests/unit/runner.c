/* tests/unit/runner.c — runs every Check suite (the list is generated from
 * tests/unit/check_*.c). Arguments name suites to run ("common proto");
 * none runs them all. CK_RUN_SUITE and CK_RUN_CASE work as usual. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern Suite *(*const fl_test_suites[])(void);
extern const char *const fl_test_suite_names[];

int main(int argc, char **argv)
{
    SRunner *sr = NULL;
    for (int i = 0; fl_test_suites[i]; i++) {
        if (argc > 1) {
            int wanted = 0;
            for (int a = 1; a < argc; a++)
                if (strcmp(argv[a], fl_test_suite_names[i]) == 0)
                    wanted = 1;
            if (!wanted)
                continue;
        }
        Suite *s = fl_test_suites[i]();
        if (!sr)
            sr = srunner_create(s);
        else
            srunner_add_suite(sr, s);
    }
    if (!sr) {
        fprintf(stderr, "no such suite\n");
        return 2;
    }
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
