/*
 * model/tokenizer.h — text <-> token ids: byte-level and BPE, one handle.
 *
 * Both kinds share llama2.c's id layout, so that llama2.c tokenizer.bin
 * files (the TinyStories and Llama 2 vocabularies) load unchanged and every
 * vocabulary flotilla trains starts the same way:
 *
 *     0            <unk>   (never produced by fl_tokenizer_encode)
 *     1            <s>     BOS
 *     2            </s>    EOS
 *     3 .. 258     <0x00> .. <0xFF>, one token per byte ("byte fallback")
 *     259 ..       BPE vocabularies only: characters, then merges
 *
 * The byte-level tokenizer is exactly ids 0..258 (vocabulary 259): byte b is
 * id 3 + b. It needs no setup and never fails on any input.
 *
 * BPE follows llama2.c's encoder: the text is cut into UTF-8 characters
 * (a lead byte and its continuation bytes), each character that is in the
 * vocabulary becomes its token and every other byte becomes its <0xXX>
 * token; then, repeatedly, the adjacent pair whose concatenation is in the
 * vocabulary with the highest score is merged (ties: the leftmost pair).
 * Special and <0xXX> tokens never take part in merges or lookups, so
 * decode(encode(x)) == x for every byte string x, invalid UTF-8 included,
 * as long as the vocabulary has the 256 byte tokens (flotilla's always do).
 *
 * Files use llama2.c's tokenizer.bin layout, little-endian:
 *     int32 max_token_length
 *     per token: float32 score, int32 len, len bytes (no NUL)
 * The number of tokens is not stored: the file is read to its end.
 * Special tokens are ids 0, 1, 2 whatever their text; <0xXX> tokens are
 * found by their text. Every size is checked against the bytes left
 * before anything is allocated.
 *
 * Training (fl_tokenizer_train_bpe): characters that cover 99.95 % of the
 * corpus become tokens (most frequent first), then byte-pair merges are
 * learnt within words (a word is an optional leading whitespace character
 * and the non-whitespace run after it) until the vocabulary is full or no
 * pair occurs twice. Merge k (from 0) gets score -(k + 1), so the encoder
 * applies merges in the order they were learnt. Ties are broken by the
 * lowest (left id, right id), so training is deterministic.
 *
 * Ownership: handles are returned owned and freed with fl_tokenizer_free;
 * other pointers are borrowed. Thread-safety: a tokenizer is immutable once
 * built; any number of threads may encode and decode with it at once.
 */
#ifndef FL_MODEL_TOKENIZER_H
#define FL_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

enum {
    FL_TOKENIZER_UNK = 0,
    FL_TOKENIZER_BOS = 1,
    FL_TOKENIZER_EOS = 2,
    FL_TOKENIZER_BYTE0 = 3,            /* id of byte b is BYTE0 + b */
    FL_TOKENIZER_BYTE_VOCAB = 3 + 256, /* the byte-level vocabulary */
};

/* Limits on what a file or a caller may ask for. */
#define FL_TOKENIZER_MAX_VOCAB     (1 << 20)
#define FL_TOKENIZER_MAX_TOKEN_LEN 1024 /* bytes of one token's text */
#define FL_TOKENIZER_MAX_FILE      (64u << 20)

typedef enum {
    FL_TOKENIZER_BYTES = 0, /* byte-level, vocabulary 259 */
    FL_TOKENIZER_BPE = 1,   /* a vocabulary loaded or trained */
} fl_tokenizer_kind_t;

/* Flags for fl_tokenizer_encode. */
enum {
    FL_TOKENIZER_ADD_BOS = 1 << 0, /* start with BOS */
    FL_TOKENIZER_ADD_EOS = 1 << 1, /* end with EOS */
    /* Prepend one space to the text before encoding, as sentencepiece and
     * llama2.c do for Llama vocabularies; fl_tokenizer_decode with the same
     * flag removes it again. */
    FL_TOKENIZER_DUMMY_PREFIX = 1 << 2,
};

typedef struct fl_tokenizer fl_tokenizer_t;

/* The byte-level tokenizer. */
int fl_tokenizer_new_bytes(fl_tokenizer_t **out);

/* Loads a tokenizer.bin from memory (copied; buf may be freed afterwards)
 * or from a file of at most FL_TOKENIZER_MAX_FILE bytes. Errors:
 * FL_ETRUNC (the file ends inside a token), FL_EFORMAT (negative or too
 * long lengths, non-finite scores, an empty vocabulary, fewer than 3 tokens),
 * FL_ETOOBIG (more than FL_TOKENIZER_MAX_VOCAB tokens or a larger file). */
int fl_tokenizer_load_buf(const uint8_t *buf, size_t len, fl_tokenizer_t **out);
int fl_tokenizer_load(const char *path, fl_tokenizer_t **out);

/* Serialises in the tokenizer.bin layout into b (appended; b's max applies).
 * The byte-level tokenizer is written as its 259 tokens. */
int fl_tokenizer_save_buf(const fl_tokenizer_t *t, fl_buf_t *b);
/* Same, to a file, atomically. */
int fl_tokenizer_save(const fl_tokenizer_t *t, const char *path);

void fl_tokenizer_free(fl_tokenizer_t *t); /* NULL is a no-op */

fl_tokenizer_kind_t fl_tokenizer_kind(const fl_tokenizer_t *t);
int fl_tokenizer_vocab_size(const fl_tokenizer_t *t);
/* The stored text of a token (not NUL-terminated; *len receives its
 * length) and its score; NULL for an id out of range. */
const uint8_t *fl_tokenizer_token(const fl_tokenizer_t *t, int id, size_t *len,
                                  float *score);
/* 1 when the tokenizer can encode every byte string (it has all 256 byte
 * tokens), else 0. */
int fl_tokenizer_lossless(const fl_tokenizer_t *t);

/* Encodes text[0..len) into ids (caller-allocated, room for cap ids) and
 * sets *n. At most len + 3 ids are ever produced, so cap = len + 3 is
 * always enough; FL_ETOOBIG if cap is too small for this text. FL_ENOTSUP
 * if a byte has neither a character nor a byte token in this vocabulary. */
int fl_tokenizer_encode(const fl_tokenizer_t *t, const uint8_t *text,
                        size_t len, unsigned flags, int32_t *ids, size_t cap,
                        size_t *n);

/* Appends the text of ids[0..n) to out: BOS, EOS and UNK produce nothing,
 * <0xXX> tokens their byte, others their text. flags: FL_TOKENIZER_
 * DUMMY_PREFIX removes one leading space from the first piece of text.
 * FL_ERANGE for an id outside the vocabulary (nothing appended). */
int fl_tokenizer_decode(const fl_tokenizer_t *t, const int32_t *ids, size_t n,
                        unsigned flags, fl_buf_t *out);

/* ---- training ------------------------------------------------------------ */
typedef struct {
    int vocab_size;          /* total, >= 259 and <= 65536 */
    double char_coverage;    /* share of characters that get a token; 0.9995 */
    int max_token_len;       /* bytes; 0 = 64 */
    size_t max_corpus_bytes; /* 0 = 1 GiB */
} fl_tokenizer_train_opts_t;

void fl_tokenizer_train_opts_init(fl_tokenizer_train_opts_t *o);

/* Trains a BPE vocabulary on text[0..len) (see the header comment).
 * FL_EINVAL for bad options, FL_ETOOBIG for a corpus over the limit. */
int fl_tokenizer_train_bpe(const fl_tokenizer_train_opts_t *o,
                           const uint8_t *text, size_t len,
                           fl_tokenizer_t **out);

#endif /* FL_MODEL_TOKENIZER_H */
