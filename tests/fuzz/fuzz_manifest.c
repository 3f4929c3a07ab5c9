/* tests/fuzz/fuzz_manifest.c — the strict manifest parser on arbitrary
 * bytes. Whatever it accepts must encode canonically: encode(parse(x))
 * parses again to the same encoding; its config values read safely. */
#include "artifact/artifact.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fl_artifact_manifest_t *m = NULL, *m2 = NULL;
    char why[256];
    int rc = fl_artifact_manifest_parse(data, size, &m, why, sizeof why);
    if (rc < 0) {
        if (m)
            __builtin_trap(); /* no result on failure */
        if (memchr(why, '\0', sizeof why) == NULL)
            __builtin_trap();
        return 0;
    }
    fl_buf_t a, b;
    fl_buf_init(&a, 2 * FL_ARTIFACT_MANIFEST_MAX);
    fl_buf_init(&b, 2 * FL_ARTIFACT_MANIFEST_MAX);
    if (fl_artifact_manifest_encode(m, &a) != 0)
        __builtin_trap();
    /* The encoding may outgrow the limit (indentation); only then may the
     * second parse refuse it. */
    rc = fl_artifact_manifest_parse(a.data, a.len, &m2, why, sizeof why);
    if (rc == 0) {
        if (fl_artifact_manifest_encode(m2, &b) != 0 || a.len != b.len ||
            memcmp(a.data, b.data, a.len) != 0)
            __builtin_trap();
    } else if (rc != FL_ETOOBIG) {
        __builtin_trap();
    }
    for (size_t i = 0; i < m->nfiles; i++)
        if (fl_artifact_manifest_file(m, m->files[i].name) != &m->files[i])
            __builtin_trap(); /* names are unique */
    /* What devices read from the config: the architecture's values. */
    uint64_t u;
    char str[80];
    static const char *const keys[] = {"vocab_size", "dim", "tokenizer"};
    for (size_t i = 0; i < 3; i++) {
        int r = fl_artifact_manifest_config_u64(m, "architecture", keys[i], &u);
        if (r != 0 && r != FL_ENOENT && r != FL_EFORMAT)
            __builtin_trap();
        r = fl_artifact_manifest_config_str(m, "architecture", keys[i], str,
                                            sizeof str);
        if (r == 0 && memchr(str, '\0', sizeof str) == NULL)
            __builtin_trap();
    }
    fl_buf_free(&a);
    fl_buf_free(&b);
    fl_artifact_manifest_free(m2);
    fl_artifact_manifest_free(m);
    return 0;
}
