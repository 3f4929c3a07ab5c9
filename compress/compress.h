/*
 * compress/compress.h — update codecs that survive secure aggregation.
 *
 * A client turns its model delta (a flat float vector of d parameters) into
 * a short message; the server turns the SUM of those messages back into a
 * float vector. Every step is a pure function of flat arrays and of the
 * codec description, fl_compress_config_t, which travels in RoundConfig
 * (proto CodecConfig carries the same fields). No network, no cryptography,
 * no logging.
 *
 * The client pipeline (DESIGN.md §3 step 4), for one round:
 *
 *   x    = clip_S(delta) + residual        the fresh delta is clipped to S
 *   y    = rotate(x)                       optional randomized Hadamard
 *   v    = clip_S(y[support])              dense, public random-k, explicit
 *                                          list, or (secagg off) top-k; what
 *                                          is sent has norm <= S
 *   q    = stochastic_round(v * scale)     b-bit signed, clamped at +-qmax
 *   ring = q mod 2^r                       secure aggregation on
 *   residual' = x - unrotate(scatter(q / scale))
 *
 * so the residual (error feedback) holds exactly what was not transmitted:
 * the coordinates off the support, the part removed by the second clip,
 * what was clamped and the rounding error. The first clip's excess is
 * discarded (it is the DP clipping of the fresh delta). Clipping the sent
 * values rather than x lets a sparse support carry up to S every round, so
 * the residual stays bounded as long as what persists from round to round
 * fits that budget (docs/COMPRESSION.md §8). The server gives every round
 * new support and rotation seeds; error feedback depends on it.
 *
 * The transmit space. Supports and ring vectors index the "transmit space"
 * of size D: D = d without rotation, D = fl_compress_rotation_dim(d) with
 * it (the rotation pads with zeros, at most 4095). m values are sent: m = D for
 * dense, k for the sparse supports.
 *
 * Quantization grid and scale. b bits give signed integers in
 * [-qmax, qmax], qmax = 2^(b-1) - 1 for b >= 2 (the value -2^(b-1) is never
 * produced and is refused by decoders); b = 1 is the sign grid {-1, +1}
 * (qmax = 1, step 2). The scale maps floats to grid units:
 *
 *   scale = qmax / R,   R = min(S, gamma * S / sqrt(m))
 *
 * S the clip norm, m the number of values sent, gamma the range factor
 * (config; 0 = max(1, 1/4 + b/2)): the m sent values have norm <= S, so their
 * RMS is at most S/sqrt(m) and R is gamma times that. An explicit config.scale
 * > 0 overrides the formula. Since no coordinate of a clipped vector exceeds S,
 * gamma >= sqrt(m) means no value is ever clamped. Stochastic rounding is
 * exactly unbiased for |v * scale| <= qmax (b >= 2) and |v * scale| <= 1 (b =
 * 1); beyond that the value is clamped to the edge of the grid, which biases
 * that coordinate towards zero; error feedback puts the clamped excess in the
 * residual, so it is sent in later rounds.
 *
 * The ring. A value q is lifted to q mod 2^r. The sum of n lifted vectors,
 * taken mod 2^r, lifts back to the true integer sum by the centered lift
 * (values >= 2^(r-1) become value - 2^r) as long as |sum| < 2^(r-1); the
 * headroom rule r >= b + ceil(log2 n) + 1 (n = max_summands) guarantees it
 * with one bit to spare, and configurations that break it are refused.
 *
 * Randomness: stochastic rounding draws from a caller's fl_rng_t (not
 * security-critical; seeded for reproducibility). Supports and rotations
 * are public and derived from seeds in the config with fl_rng_t, exactly as
 * documented at each function, so every client and the server agree.
 *
 * Ownership: pointer arguments are borrowed unless stated otherwise.
 * Thread-safety: kernels are thread-safe on distinct buffers; an
 * fl_compress_t handle has scratch memory and must not be used by two
 * threads at once (make one handle per thread from the same config).
 */
#ifndef FL_COMPRESS_H
#define FL_COMPRESS_H

#include "common/common.h"

#include <stddef.h>
#include <stdint.h>

/* Largest parameter count a codec accepts (the padded rotation space must
 * fit the uint32 indices). */
#define FL_COMPRESS_MAX_PARAMS   (1u << 30)
#define FL_COMPRESS_MAX_BITS     16 /* b */
#define FL_COMPRESS_MAX_RING     32 /* r */
#define FL_COMPRESS_DEFAULT_CLIP 1.0f

/* ---- codec description ---------------------------------------------------
 * A plain value struct: fl_compress_config_init, then set fields. Mirrors
 * proto CodecConfig field by field (see docs/COMPRESSION.md). */
typedef enum {
    FL_COMPRESS_SUPPORT_DENSE = 0,
    FL_COMPRESS_SUPPORT_RANDOM_K = 1, /* k coordinates from support_seed */
    FL_COMPRESS_SUPPORT_EXPLICIT = 2, /* server-chosen sorted index list */
    /* Per-client top-k. The indices reveal what each client changed and
     * break mask cancellation: REFUSED when secagg is on (FL_ECONFIG);
     * for experiments with secure aggregation off only. */
    FL_COMPRESS_SUPPORT_TOP_K_NO_SECAGG = 3,
} fl_compress_support_t;

typedef struct {
    fl_compress_support_t support;
    uint64_t support_seed; /* RANDOM_K */
    uint64_t support_size; /* k: RANDOM_K, TOP_K; EXPLICIT: list length */
    /* EXPLICIT: k strictly increasing indices into the transmit space;
     * borrowed (fl_compress_new copies them). The wire form is
     * fl_compress_indices_encode's. */
    const uint32_t *support_indices;
    unsigned quant_bits; /* b, 1..16; 0 = fp32 values (secagg off only) */
    int rotate;          /* randomized Hadamard rotation */
    uint64_t rotation_seed;
    float clip_norm;       /* S > 0 */
    float range_factor;    /* gamma; 0 = max(1, 1/4 + b/2) */
    float scale;           /* > 0 overrides the scale formula; 0 = derive */
    int error_feedback;    /* informative: the client keeps a residual */
    uint64_t quant_seed;   /* base seed for stochastic rounding */
    int secagg;            /* 1: values go into the ring, public supports */
    unsigned ring_bits;    /* r, 1..32 (secagg on) */
    uint32_t max_summands; /* n: most vectors ever summed (secagg on) */
} fl_compress_config_t;

/* Defaults: dense, b = 8, no rotation, S = 1, error feedback on, secagg
 * on, n = 1, r = fl_compress_ring_bits_min(8, 1) = 9. */
void fl_compress_config_init(fl_compress_config_t *cfg);
/* Validates cfg for d parameters: ranges, the headroom rule with secagg,
 * top-k and fp32 refused with secagg, explicit lists sorted and inside the
 * transmit space. FL_ECONFIG (or FL_ERANGE for sizes) on failure. */
int fl_compress_config_check(const fl_compress_config_t *cfg, uint64_t d);
/* Smallest ring for b-bit values summed n times: b + ceil(log2 n) + 1. */
unsigned fl_compress_ring_bits_min(unsigned b, uint64_t n);
/* Transmit-space size D and number of values sent m for d parameters. */
uint64_t fl_compress_space(const fl_compress_config_t *cfg, uint64_t d);
uint64_t fl_compress_values(const fl_compress_config_t *cfg, uint64_t d);
/* The quantization scale (header comment), or 0 for b = 0. */
double fl_compress_scale(const fl_compress_config_t *cfg, uint64_t d);
/* The L2 norm bound of one client's dequantized contribution: the DP
 * sensitivity after quantization, which the server's noise is calibrated
 * to.
 *
 * The codec turns a client's delta into integers: error feedback added,
 * optionally rotated by the randomized Hadamard transform (orthogonal; its
 * zero padding adds coordinates), restricted to the public support,
 * CLIPPED to L2 norm S (the clip applies to what is sent), multiplied by
 * the scale, stochastically rounded and clamped to [-qmax, qmax]
 * (fl_compress_qmax: 2^(b-1) - 1, or 1 on the sign grid b = 1). m values
 * are sent (fl_compress_values). The server decodes the integer sum by
 * dividing by the scale. Claim: one client moves the decoded sum by at
 * most, in L2 norm,
 *
 *     S' = min( S + sqrt(m) / scale,  qmax sqrt(m) / scale ).
 *
 * Why: let y = scale v with ||v|| <= S, so ||y|| <= scale S. Each sent
 * integer q_i is floor(y_i) or ceil(y_i), or the clamp (smaller in
 * magnitude than y_i), or on the sign grid -1 or +1, so |q_i| <= |y_i| + 1
 * and |q_i| <= qmax. Then
 *     ||q||^2 <= sum (|y_i| + 1)^2 = ||y||^2 + 2 ||y||_1 + m
 *             <= ||y||^2 + 2 sqrt(m) ||y|| + m = (||y|| + sqrt(m))^2,
 * and ||q|| <= qmax sqrt(m); divide by the scale. Stochastic rounding can
 * grow the norm that far: with every y_i just above an integer and every
 * coin rounding up, ||q|| comes within any margin of the first bound
 * (`dp`: test_sensitivity_bounds_rounding). The bound holds for every
 * outcome of the client's coins, as add-or-remove-one sensitivity needs.
 * A rotation needs no term of its own (it keeps norms); its padding is
 * counted in m. b = 0 (fp32 values, secure aggregation off) gives S.
 *
 * Precondition: the clip applies to the vector that is quantized (error
 * feedback included), as fl_compress_encode_* do; clipping only the fresh
 * delta and adding the residual afterwards would leave no finite bound. */
double fl_compress_sensitivity(const fl_compress_config_t *cfg, uint64_t d);
/* Bytes one client puts on the wire for d parameters (the codec payload,
 * not the protobuf framing or key exchange). secagg on: m values at r bits,
 * ceil(m*r/8). secagg off: ceil(m*b/8) (4m for fp32), plus for top-k the
 * index encoding, whose size depends on the indices: *bytes is then an
 * upper bound and *exact is 0; otherwise *exact is 1 (exact may be NULL).
 * Returns 0 or the fl_compress_config_check error. */
int fl_compress_wire_bytes(const fl_compress_config_t *cfg, uint64_t d,
                           uint64_t *bytes, int *exact);

/* ---- clipping ------------------------------------------------------------ */
/* L2 norm, accumulated in double. */
double fl_compress_l2_norm(const float *x, size_t n);
/* Scales x so that ||x|| <= S; returns the norm before clipping. A
 * non-finite norm leaves x unchanged (callers check with isfinite). */
double fl_compress_clip(float *x, size_t n, double S);

typedef struct {
    size_t offset, len; /* a layer's slice of the flat vector */
} fl_compress_slice_t;

/* Clips every slice i of x to norm S[i]; norms_before[i] receives the norm
 * before clipping (may be NULL). Slices must lie inside [0, n) and not
 * overlap. Equal-share budgets S[i] = S * sqrt(len_i / n) keep the whole
 * vector within S. Returns 0 or FL_EINVAL. */
int fl_compress_clip_layers(float *x, size_t n,
                            const fl_compress_slice_t *slices, size_t nslices,
                            const float *S, double *norms_before);

/* ---- quantization and the ring ------------------------------------------- */
/* qmax for b bits (1 for b = 1). */
int32_t fl_compress_qmax(unsigned b);
/* q[i] = stochastic rounding of x[i] * scale onto the b-bit grid, clamped
 * to +-qmax; E[q] = x * scale inside the grid (to 2^-24 of a step). One
 * fl_rng_next step of rng per two values (24 bits each); rng advances. */
void fl_compress_quantize(int32_t *q, const float *x, size_t m, float scale,
                          unsigned b, fl_rng_t *rng);
/* The same, one value at a time, written for clarity; identical output. */
void fl_compress_quantize_ref(int32_t *q, const float *x, size_t m, float scale,
                              unsigned b, fl_rng_t *rng);
/* x[i] = q[i] / scale. */
void fl_compress_dequantize(float *x, const int32_t *q, size_t m, float scale);
/* ring[i] = q[i] mod 2^r. */
void fl_compress_lift(uint32_t *ring, const int32_t *q, size_t m, unsigned r);
/* q[i] = the centered lift of ring[i]: in [-2^(r-1), 2^(r-1)). */
void fl_compress_unlift(int32_t *q, const uint32_t *ring, size_t m, unsigned r);
/* acc[i] = (acc[i] + x[i]) mod 2^r: summing ring vectors. */
void fl_compress_ring_add(uint32_t *acc, const uint32_t *x, size_t m,
                          unsigned r);

/* ---- randomized Hadamard rotation ----------------------------------------
 * The rotation space of d coordinates: D = the next power of two when
 * d <= 4096, else d rounded up to a multiple of 4096 (padding costs at
 * most 4095 coordinates, never more than padding to a power of two).
 * The D coordinates are read as a matrix of H = min(D, 4096) rows and
 * C = D / H columns, row-major (coordinate i is row i / C, column i % C),
 * so each column holds coordinates spread evenly over the whole vector.
 * rotate: x <- signs, then every column is multiplied by the H x H
 * Walsh–Hadamard matrix normalized by 1/sqrt(H); the signs are bit j%64 of
 * the (j/64)-th fl_rng_next of fl_rng_seed(seed) (1 = minus), over all D.
 * unrotate is its inverse (and transpose). Both orthonormal. */
#define FL_COMPRESS_ROT_ROWS 4096
size_t fl_compress_rotation_dim(size_t d); /* d >= 1 */
/* p a power of two: the unnormalized transform of x[p], in place. */
void fl_compress_hadamard(float *x, size_t p);
void fl_compress_hadamard_ref(float *x, size_t p);
/* The unnormalized transform of every column of x[rows][cols] (rows a
 * power of two), in place; the same butterflies as hadamard_ref on each
 * column. */
void fl_compress_hadamard_columns(float *x, size_t rows, size_t cols);
/* D must be a rotation space size (fl_compress_rotation_dim of some d). */
void fl_compress_rotate(float *x, size_t D, uint64_t seed);
void fl_compress_unrotate(float *x, size_t D, uint64_t seed);

/* ---- supports ------------------------------------------------------------ */
/* Public random-k: k distinct indices in [0, D), sorted ascending, the same
 * for every caller with the same (seed, k, D). Robert Floyd's sampler over
 * fl_rng_below of fl_rng_seed(seed): for j = D-k .. D-1, t = below(j+1);
 * take t, or j if t is taken. scratch: (D + 63) / 64 words. FL_EINVAL when
 * k > D. O(k + D/64). */
int fl_compress_support_random_k(uint32_t *idx, uint64_t *scratch, size_t k,
                                 size_t D, uint64_t seed);
/* Exact top-k by magnitude (secure aggregation off only), sorted
 * ascending; ties at the threshold go to the lower indices. Radix select
 * on the magnitudes' bit patterns: four passes over x, O(D), no scratch.
 * x must be finite. */
int fl_compress_support_top_k(uint32_t *idx, const float *x, size_t D,
                              size_t k);

/* Index lists on the wire: a sorted, strictly increasing list of k indices
 * below D, as whichever is smaller of
 *   0x01 varint(D) varint(k) varint(i0) varint(i1-i0-1) ...   (gaps)
 *   0x02 varint(D) varint(k) bitmap of ceil(D/8) bytes        (bit i = i in)
 * (LEB128 varints, minimal length; unused bitmap bits zero). */
#define FL_COMPRESS_INDEX_GAPS   0x01
#define FL_COMPRESS_INDEX_BITMAP 0x02
/* Size of the encoding of idx. */
size_t fl_compress_indices_bytes(const uint32_t *idx, size_t k, size_t D);
/* An upper bound on the encoding of any k-subset of [0, D). */
size_t fl_compress_indices_bytes_max(size_t k, size_t D);
/* Writes the encoding; out holds fl_compress_indices_bytes(...) bytes
 * (cap checked: FL_ETOOBIG). idx must be strictly increasing below D
 * (FL_EINVAL). */
int fl_compress_indices_encode(uint8_t *out, size_t cap, size_t *len,
                               const uint32_t *idx, size_t k, size_t D);
/* Checks the encoding at the start of in (a peer's; bytes after it are
 * allowed) without writing anything: its D, k and length enc_len. Refuses
 * (FL_EFORMAT, FL_ETRUNC, FL_ETOOBIG) anything malformed or with
 * D > max_D. O(k) for gaps, O(D/8) for a bitmap. */
int fl_compress_indices_peek(const uint8_t *in, size_t len, size_t max_D,
                             size_t *D, size_t *k, size_t *enc_len);
/* Decodes an encoding from a peer into idx (cap entries); it must be
 * exactly len bytes (no trailing bytes), with D <= max_D, k <= cap,
 * strictly increasing indices below D. */
int fl_compress_indices_decode(uint32_t *idx, size_t cap, size_t *k, size_t *D,
                               const uint8_t *in, size_t len, size_t max_D);

/* ---- the codec ------------------------------------------------------------
 * A handle for one configuration and d: the precomputed support, the scale
 * and scratch buffers (O(D) floats). */
typedef struct fl_compress fl_compress_t;

/* *out is returned owned (fl_compress_free). cfg is copied, but EXPLICIT
 * indices are copied too, so cfg->support_indices may be freed after. */
int fl_compress_new(fl_compress_t **out, const fl_compress_config_t *cfg,
                    uint64_t d);
void fl_compress_free(fl_compress_t *c); /* NULL: no-op */
/* The handle's config (support_indices points into the handle). */
const fl_compress_config_t *fl_compress_config(const fl_compress_t *c);
uint64_t fl_compress_dim(const fl_compress_t *c);         /* d */
uint64_t fl_compress_space_dim(const fl_compress_t *c);   /* D */
uint64_t fl_compress_value_count(const fl_compress_t *c); /* m */
double fl_compress_scale_of(const fl_compress_t *c);

/* Client, secure aggregation on: ring[m] receives the values in Z_(2^r),
 * ready for masking and fl_bitpack at r bits. delta[d] is not modified;
 * residual[d] (NULL = no error feedback) is added and then replaced by the
 * new residual; *norm (may be NULL) receives ||delta|| before clipping.
 * FL_ERANGE when delta or residual is not finite; FL_ECONFIG when the
 * handle's config has secagg off. rng: the client's stochastic-rounding
 * generator (e.g. seeded from quant_seed and the client's id). */
int fl_compress_encode_ring(fl_compress_t *c, uint32_t *ring,
                            const float *delta, float *residual, fl_rng_t *rng,
                            double *norm);
/* Client, secure aggregation off: the payload (top-k: index encoding; then
 * the values, b-bit two's complement packed, or fp32 little-endian for
 * b = 0). out has cap bytes (fl_compress_wire_bytes is enough); *len
 * receives the size written (FL_ETOOBIG when cap is short). Same
 * delta/residual/rng/norm contract; FL_ECONFIG when secagg is on. */
int fl_compress_encode_payload(fl_compress_t *c, uint8_t *out, size_t cap,
                               size_t *len, const float *delta, float *residual,
                               fl_rng_t *rng, double *norm);

/* Server, secure aggregation on: sum[m] is the unmasked ring sum (mod
 * 2^r). out[d] = unrotate(scatter(centered_lift(sum) / scale)) / denom,
 * denom the fixed expected cohort (> 0, else FL_EINVAL). */
int fl_compress_decode_ring_sum(fl_compress_t *c, float *out,
                                const uint32_t *sum, double denom);
/* Server, secure aggregation off: adds one client's payload (peer data:
 * every length, index and value is checked, and a contribution above the
 * sensitivity bound is refused with FL_ERANGE) into acc[D], in the
 * transmit space. On error acc is unchanged. */
int fl_compress_accumulate_payload(fl_compress_t *c, float *acc,
                                   const uint8_t *in, size_t len);
/* out[d] = unrotate(acc) / denom, after every payload of the round was
 * accumulated; acc[D] is used as scratch (destroyed). */
int fl_compress_finish(fl_compress_t *c, float *out, float *acc, double denom);

#endif /* FL_COMPRESS_H */
