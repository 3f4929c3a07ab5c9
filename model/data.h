/*
 * model/data.h — a directory of text files as token streams and training
 * windows, with a deterministic train/validation split.
 *
 * Files: the regular files directly inside the directory, sorted by name
 * (strcmp). Symbolic links, sub-directories, hidden files (".name"), and
 * the index files of the fortunes package ("*.dat", and "*.u8", which are
 * symbolic links anyway) are skipped; so is any file with a NUL byte in it
 * (not text). Text is taken as bytes: invalid UTF-8 goes through the
 * tokenizer's byte fallback, nothing is dropped.
 *
 * Token stream: each file is encoded on its own and starts with BOS.
 *
 * Split (FL_DATA_SPLIT_POSITION, the default): each file's token stream is
 * cut into chunks of chunk_tokens; round(val_fraction * chunks) of them
 * (at least one when the file has two chunks or more and val_fraction > 0)
 * go to validation, chosen by a shuffle seeded with (seed, the file's
 * name). So every file, and every client holding one, has both parts, and
 * adding or removing other files does not change a file's split.
 * FL_DATA_SPLIT_FILE instead puts round(val_fraction * files) whole files
 * into validation, chosen by a shuffle seeded with seed. Either way the
 * two parts are disjoint, their union is everything, and the same seed
 * gives the same split. Each part is one concatenated stream.
 *
 * Windows are T + 1 consecutive ids of one part (inputs ids[0..T), targets
 * ids[1..T+1)); a window may span the boundary between two chunks or files
 * of that part.
 *
 * Ownership: handles are returned owned; the tokenizer passed to
 * fl_data_load is borrowed for the call only. Thread-safety: a loaded
 * fl_data_t is immutable; fl_data_batch draws from the caller's rng, so
 * threads with their own rngs may share one fl_data_t.
 */
#ifndef FL_MODEL_DATA_H
#define FL_MODEL_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"
#include "model/tokenizer.h"

#define FL_DATA_MAX_FILES 100000

/* ---- files ----------------------------------------------------------------
 */
/* Lists the text files of dir as above: names[i] is the file name (not the
 * path). names is returned owned; free with fl_data_names_free. An empty
 * directory gives n = 0. FL_ENOENT when dir does not exist, FL_ETOOBIG
 * over FL_DATA_MAX_FILES files. */
int fl_data_list_files(const char *dir, char ***names, size_t *n);
void fl_data_names_free(char **names, size_t n);

/* Reads the listed files of dir (all of them when names is NULL) and
 * concatenates their bytes into *out (returned owned, NUL after the data),
 * each file followed by a newline: a corpus to train a tokenizer on.
 * FL_ETOOBIG when more than max_bytes would be read. */
int fl_data_read_corpus(const char *dir, char *const *names, size_t nnames,
                        size_t max_bytes, uint8_t **out, size_t *len);

/* ---- token streams --------------------------------------------------------
 */
typedef enum {
    FL_DATA_SPLIT_POSITION = 0, /* chunks of every file */
    FL_DATA_SPLIT_FILE = 1,     /* whole files */
} fl_data_split_mode_t;

typedef enum { FL_DATA_TRAIN = 0, FL_DATA_VAL = 1 } fl_data_part_t;

typedef struct {
    const char *dir;     /* borrowed */
    char *const *names;  /* files of dir to use, borrowed; NULL = all */
    size_t nnames;       /* entries in names */
    size_t max_bytes;    /* limit on the bytes read; 0 = 256 MiB */
    double val_fraction; /* 0 .. 0.5; default 0.1 */
    uint64_t seed;       /* the split's seed; default 0 */
    fl_data_split_mode_t split;
    size_t chunk_tokens; /* chunk size for SPLIT_POSITION; default 256 */
} fl_data_opts_t;

void fl_data_opts_init(fl_data_opts_t *o);

typedef struct fl_data fl_data_t;

/* Reads, tokenizes and splits. FL_ENOENT (no such directory or file),
 * FL_ETOOBIG (over max_bytes), FL_EINVAL (bad options), FL_EIO. */
int fl_data_load(const fl_data_opts_t *o, const fl_tokenizer_t *tok,
                 fl_data_t **out);
/* Same from one buffer already in memory, as if it were a single file
 * named name (used by tests and by clients holding text in memory). */
int fl_data_load_text(const fl_data_opts_t *o, const fl_tokenizer_t *tok,
                      const uint8_t *text, size_t len, const char *name,
                      fl_data_t **out);
void fl_data_free(fl_data_t *d); /* NULL is a no-op */

/* The ids of one part, borrowed from d (valid until fl_data_free). */
const int32_t *fl_data_tokens(const fl_data_t *d, fl_data_part_t part,
                              size_t *n);
/* Number of files read, and the bytes read from them. */
size_t fl_data_num_files(const fl_data_t *d);
size_t fl_data_num_bytes(const fl_data_t *d);

/* Fills out[B][T+1] with B windows drawn uniformly from part with rng.
 * FL_ERANGE when the part has fewer than T + 1 ids. */
int fl_data_batch(const fl_data_t *d, fl_data_part_t part, fl_rng_t *rng, int B,
                  int T, int32_t *out);
/* The non-overlapping windows of a part, in order, for evaluation: window
 * i is ids[i*T .. i*T + T + 1). fl_data_num_windows counts them. */
size_t fl_data_num_windows(const fl_data_t *d, fl_data_part_t part, int T);
int fl_data_window(const fl_data_t *d, fl_data_part_t part, size_t i, int T,
                   int32_t *out);

#endif /* FL_MODEL_DATA_H */
