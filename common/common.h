/*
 * common/common.h — the base every flotilla module stands on.
 *
 * Errors, allocation, growable buffers, logging, table-driven configuration,
 * monotonic time, hex, files (atomic writes, bounded reads) and randomness.
 * Depends on libc only (and libinih inside config.c).
 *
 * Ownership: every pointer argument is borrowed unless its comment says
 * "taken" or "returned owned". Thread-safety: everything here is safe to
 * call from any thread, except fl_log_set_* and fl_alloc_set_*, which are
 * meant for start-up and tests.
 */
#ifndef FL_COMMON_H
#define FL_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- errors -------------------------------------------------------------
 * Every function that can fail returns 0 or a negative FL_E* code. The one
 * table below generates the enum, fl_strerror() and fl_err_name(). */
#define FL_ERRNO_MAP(X)                                                        \
    X(NOMEM, "out of memory")                                                  \
    X(INVAL, "invalid argument")                                               \
    X(IO, "input/output error")                                                \
    X(NOENT, "no such file or directory")                                      \
    X(EXIST, "already exists")                                                 \
    X(TOOBIG, "too large")                                                     \
    X(TRUNC, "truncated input")                                                \
    X(FORMAT, "malformed input")                                               \
    X(MAGIC, "wrong magic number")                                             \
    X(VERSION, "unsupported version")                                          \
    X(RANGE, "value out of range")                                             \
    X(CONFIG, "configuration error")                                           \
    X(UNKNOWN_KEY, "unknown configuration key")                                \
    X(USAGE, "usage error")                                                    \
    X(CRYPTO, "cryptographic failure")                                         \
    X(SIGNATURE, "bad signature")                                              \
    X(MAC, "authentication tag mismatch")                                      \
    X(HASH, "hash mismatch")                                                   \
    X(PROTO, "protocol violation")                                             \
    X(STATE, "message not expected in this state")                             \
    X(ROUND, "wrong round or session")                                         \
    X(DUPLICATE, "duplicate message")                                          \
    X(THRESHOLD, "too few participants")                                       \
    X(ABORTED, "aborted")                                                      \
    X(TIMEOUT, "deadline passed")                                              \
    X(CLOSED, "connection closed")                                             \
    X(AGAIN, "try again")                                                      \
    X(NOTSUP, "not supported")                                                 \
    X(DENIED, "permission denied")                                             \
    X(BUDGET, "privacy budget exhausted")                                      \
    X(INTERNAL, "internal error")

typedef enum {
    FL_OK = 0,
    FL_E__BASE = -1000,
#define FL_ERR_ENUM(name, msg) FL_E##name,
    FL_ERRNO_MAP(FL_ERR_ENUM)
#undef FL_ERR_ENUM
        FL_E__END
} fl_err_t;

/* A human sentence for an error code; never NULL. */
const char *fl_strerror(int err);
/* The symbolic name ("FL_ENOMEM"); never NULL. */
const char *fl_err_name(int err);
/* Maps an errno value to the closest FL_E* code. */
int fl_err_from_errno(int e);

/* Abort on programmer error only: never on input from a peer or a file. */
#define FL_ASSERT(cond)                                                        \
    do {                                                                       \
        if (!(cond))                                                           \
            fl_assert_fail(#cond, __FILE__, __LINE__);                         \
    } while (0)
_Noreturn void fl_assert_fail(const char *expr, const char *file, int line);

#define FL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define FL_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define FL_MAX(a, b)    ((a) > (b) ? (a) : (b))

/* ---- allocation ---------------------------------------------------------
 * Thin wrappers over malloc & co. Tests can make the N-th allocation from
 * now fail, to exercise every error path. Memory from these is freed with
 * fl_free (which is free). */
void *fl_malloc(size_t n);
void *fl_calloc(size_t count, size_t size); /* checks count*size overflow */
void *fl_realloc(void *p, size_t n);
void *fl_aligned_alloc(size_t alignment, size_t n); /* zeroed; n rounded up */
char *fl_strdup(const char *s);
void fl_free(void *p);
/* After this call the countdown-th allocation fails (1 = the next one);
 * 0 switches failure injection off. For tests. */
void fl_alloc_fail_after(long countdown);
/* Multiplies with overflow detection; returns 0 or FL_ETOOBIG. */
int fl_mul_size(size_t a, size_t b, size_t *out);

/* ---- byte buffers -------------------------------------------------------
 * A growable byte buffer with a hard maximum: appends that would exceed
 * `max` fail with FL_ETOOBIG and leave the buffer unchanged. */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t max;
} fl_buf_t;

void fl_buf_init(fl_buf_t *b, size_t max);
void fl_buf_free(fl_buf_t *b);  /* releases data; the struct can be reused */
void fl_buf_reset(fl_buf_t *b); /* len = 0, keeps the allocation */
int fl_buf_reserve(fl_buf_t *b, size_t extra);
int fl_buf_append(fl_buf_t *b, const void *p, size_t n);
int fl_buf_append_u8(fl_buf_t *b, uint8_t v);
int fl_buf_append_be32(fl_buf_t *b, uint32_t v);
int fl_buf_printf(fl_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Removes the first n bytes (n <= len). */
void fl_buf_consume(fl_buf_t *b, size_t n);

/* ---- logging ------------------------------------------------------------
 * Only programs log (server, client, sim, cli). Each line carries the UTC
 * time, the pid, the role and the level. FL_LOG checks the level before
 * any argument is formatted. Secrets are never passed to it. */
typedef enum {
    FL_LOG_DEBUG = 0,
    FL_LOG_INFO,
    FL_LOG_WARN,
    FL_LOG_ERROR,
    FL_LOG_OFF
} fl_log_level_t;

extern int fl_log_level_; /* read by the macro; set with fl_log_set_level */
void fl_log_set_level(fl_log_level_t level);
void fl_log_set_role(const char *role); /* copied; e.g. "server" */
void fl_log_set_stream(FILE *f);        /* default stderr */
void fl_log_set_json(int on);           /* one JSON object per line */
int fl_log_level_parse(const char *s, fl_log_level_t *out);
void fl_log_write(fl_log_level_t level, const char *file, int line,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define FL_LOG(level, ...)                                                     \
    do {                                                                       \
        if ((int)(level) >= fl_log_level_)                                     \
            fl_log_write((level), __FILE__, __LINE__, __VA_ARGS__);            \
    } while (0)
#define FL_DEBUG(...) FL_LOG(FL_LOG_DEBUG, __VA_ARGS__)
#define FL_INFO(...)  FL_LOG(FL_LOG_INFO, __VA_ARGS__)
#define FL_WARN(...)  FL_LOG(FL_LOG_WARN, __VA_ARGS__)
#define FL_ERROR(...) FL_LOG(FL_LOG_ERROR, __VA_ARGS__)

/* ---- configuration ------------------------------------------------------
 * One table describes every option of a command: its name (the long flag
 * and the INI key are the same), type, offset of the field in the caller's
 * struct, default, bounds and an optional validator. Defaults are applied
 * first, then an INI file, then command-line flags. */
typedef enum {
    FL_CFG_INT,    /* int64_t field */
    FL_CFG_DOUBLE, /* double field */
    FL_CFG_BOOL,   /* int field, 0/1; flags: --name, --no-name */
    FL_CFG_STRING, /* char * field, owned by the struct (fl_cfg_free) */
    FL_CFG_ENUM,   /* int field; `choices` lists the names, "a|b|c" */
} fl_cfg_type_t;

typedef struct fl_cfg_opt {
    const char *name;
    fl_cfg_type_t type;
    size_t offset;
    const char *def; /* default, as text; NULL = 0 / NULL */
    double min, max; /* inclusive bounds for INT and DOUBLE; min > max: none */
    const char *choices; /* FL_CFG_ENUM only */
    /* Optional extra check; on failure writes a reason into why. */
    int (*validate)(const void *field, char *why, size_t whylen);
    const char *help;
} fl_cfg_opt_t;

typedef struct {
    const fl_cfg_opt_t *opts;
    size_t nopts;
    const char *section; /* INI keys may sit at the top or in [section] */
} fl_cfg_table_t;

/* Sets every field to its default. */
int fl_cfg_defaults(const fl_cfg_table_t *t, void *obj, char *err,
                    size_t errlen);
/* Applies "name = value" lines from an INI file. Errors name the file, the
 * line and the key: "f.ini:3: key 'rounds': 0 is below the minimum 1". */
int fl_cfg_load_file(const fl_cfg_table_t *t, void *obj, const char *path,
                     char *err, size_t errlen);
/* Same, from a string (for tests and fuzzing); `name` is used in errors. */
int fl_cfg_load_string(const fl_cfg_table_t *t, void *obj, const char *text,
                       size_t len, const char *name, char *err, size_t errlen);
/* Sets one option from text. */
int fl_cfg_set(const fl_cfg_table_t *t, void *obj, const char *key,
               const char *value, char *err, size_t errlen);
/* The whole command line: defaults, then --config FILE if present, then
 * the flags (flags override the file). argv[0] is the command's name. The
 * arguments that are not options end up in argv[*rest .. argc) (argv is
 * permuted). --help sets *help = 1 and stops. */
int fl_cfg_parse_args(const fl_cfg_table_t *t, void *obj, int argc, char **argv,
                      int *rest, int *help, char *err, size_t errlen);
/* Prints the options, their defaults and help text. */
void fl_cfg_print_help(const fl_cfg_table_t *t, FILE *out);
/* Frees the STRING fields. */
void fl_cfg_free(const fl_cfg_table_t *t, void *obj);

/* ---- time ---------------------------------------------------------------- */
uint64_t fl_time_mono_ns(void);
double fl_time_mono_s(void);
uint64_t fl_time_wall_ms(void);

/* ---- hex ----------------------------------------------------------------- */
/* Writes 2*n lowercase hex digits and a NUL; out must hold 2*n+1 bytes. */
void fl_hex_encode(char *out, const uint8_t *in, size_t n);
/* Decodes exactly 2*n hex digits; FL_EFORMAT on a bad digit or length. */
int fl_hex_decode(uint8_t *out, size_t n, const char *in, size_t inlen);

/* ---- files --------------------------------------------------------------- */
/* Writes the file atomically: temp file in the same directory, fsync,
 * rename over the target, fsync of the directory. mode e.g. 0644. */
int fl_file_write_atomic(const char *path, const void *data, size_t len,
                         unsigned mode);
/* Writes all n bytes to fd, retrying after EINTR and short writes. */
int fl_fd_write_all(int fd, const void *data, size_t n);
/* Reads a whole file of at most max bytes into *out (returned owned, one
 * extra NUL byte after the data). FL_ETOOBIG when larger. */
int fl_file_read_all(const char *path, size_t max, uint8_t **out, size_t *len);
/* The same from an open descriptor (not closed): a regular file only
 * (FL_EINVAL otherwise), read from its current offset. */
int fl_file_read_fd(int fd, size_t max, uint8_t **out, size_t *len);
/* fsyncs a directory. */
int fl_dir_sync(const char *path);
/* mkdir -p with the given mode for the directories it creates. */
int fl_mkdir_p(const char *path, unsigned mode);
/* Joins two path parts into out; FL_ETOOBIG when it does not fit. */
int fl_path_join(char *out, size_t outlen, const char *a, const char *b);

/* ---- randomness -----------------------------------------------------------
 * fl_random_bytes: the kernel CSPRNG (getrandom); for keys and seeds.
 * fl_rng_t: xoshiro256** — fast, seeded, reproducible, NOT cryptographic.
 * Only for numerics where reproducibility matters (data shuffling,
 * stochastic rounding, simulations); never where security depends on it. */
int fl_random_bytes(void *buf, size_t n);

typedef struct {
    uint64_t s[4];
} fl_rng_t;

void fl_rng_seed(fl_rng_t *r, uint64_t seed);
uint64_t fl_rng_next(fl_rng_t *r);
/* Uniform in [0, 1) with 53 bits. */
double fl_rng_uniform(fl_rng_t *r);
/* Uniform in [0, bound) without bias; bound > 0. */
uint64_t fl_rng_below(fl_rng_t *r, uint64_t bound);
/* Standard normal (Box–Muller). */
double fl_rng_normal(fl_rng_t *r);
/* splitmix64 step, to derive seeds from seeds. */
uint64_t fl_splitmix64(uint64_t *state);

#endif /* FL_COMMON_H */
