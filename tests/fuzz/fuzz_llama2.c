/* tests/fuzz/fuzz_llama2.c — llama2.c checkpoint import on arbitrary
 * bytes: refused with an error, or imported with finite weights. */
#include "model/llama2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fl_model_t *m = NULL;
    fl_llama2_info_t info;
    char why[256];
    int rc = fl_llama2_import_buf(data, size, &m, &info, why, sizeof why);
    if (rc == 0) {
        if (!m || info.file_size != size)
            __builtin_trap();
        fl_model_free(m);
    } else if (m || rc >= 0) {
        __builtin_trap();
    }
    return 0;
}
