/*
 * model/kernels_isa.h — internal to model/: the kernel sets that each
 * ISA-specific file defines. Each file is compiled with its own ISA flags
 * (model/module.mk) and is empty on other architectures; kernels.c only
 * calls a set after checking the CPU's features.
 */
#ifndef FL_MODEL_KERNELS_ISA_H
#define FL_MODEL_KERNELS_ISA_H

#include "model/kernels.h"

#if defined(__x86_64__)
extern const fl_q8_kernels_t fl_q8_kernels_avx512vnni_; /* kernels_avx512.c */
extern const fl_q8_kernels_t fl_q8_kernels_avx2_;       /* kernels_avx2.c */
#elif defined(__aarch64__)
extern const fl_q8_kernels_t fl_q8_kernels_neondot_; /* kernels_neondot.c */
extern const fl_q8_kernels_t fl_q8_kernels_neon_;    /* kernels_neon.c */
/* The NEON activation quantizer (kernels_neon.c), shared by both sets. */
void fl_q8_quantize_act_neon_(uint8_t *xq, float *xs, const float *x, int m,
                              int k, int gs);
#endif

/* The portable activation quantizer; ISA files reuse it for odd shapes. */
void fl_q8_quantize_act_portable_(uint8_t *xq, float *xs, const float *x, int m,
                                  int k, int gs);

#endif
