/* tests/fuzz/fuzz_config.c — the INI configuration parser on arbitrary
 * bytes, against the server's and the client's real option tables. */
#include "client/client.h"
#include "server/server.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    fl_client_config_t c;
    memset(&c, 0, sizeof c);
    if (fl_cfg_defaults(&fl_client_config_table, &c, err, sizeof err) == 0)
        (void)fl_cfg_load_string(&fl_client_config_table, &c,
                                 (const char *)data, size, "fuzz.ini", err,
                                 sizeof err);
    fl_cfg_free(&fl_client_config_table, &c);

    fl_server_config_t s;
    memset(&s, 0, sizeof s);
    if (fl_server_config_init(&s, err, sizeof err) == 0)
        (void)fl_cfg_load_string(fl_server_config_table(), &s,
                                 (const char *)data, size, "fuzz.ini", err,
                                 sizeof err);
    fl_server_config_free(&s);
    return 0;
}
