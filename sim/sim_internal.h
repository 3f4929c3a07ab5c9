/*
 * sim/sim_internal.h — what the files of sim/ share and nothing outside
 * sim/ includes: the corpus loading and central pre-training of
 * sim/fleet.c, reused by the centralized baseline (sim/central.c) so that
 * both start from the same data and the same initial model.
 *
 * Ownership as in sim/sim.h. Thread-safety: one thread.
 */
#ifndef FL_SIM_INTERNAL_H
#define FL_SIM_INTERNAL_H

#include "model/model.h"
#include "model/tokenizer.h"
#include "sim/sim.h"

/* Reads cfg->data into c (initialized here; free with fl_sim_corpus_free
 * even on failure). err gets a sentence on failure. */
int fl_sim__load_corpus(const fl_sim_config_t *cfg, fl_sim_corpus_t *c,
                        char *err, size_t errlen);
/* Appends the text of records idx[0 .. n) to out. */
int fl_sim__records_text(const fl_sim_corpus_t *c, const size_t *idx, size_t n,
                         fl_buf_t *out);
/* The initial global model: cfg's architecture, pre-trained centrally on
 * public_text for cfg->pretrain_steps, saved to path and returned owned in
 * *out_model. */
int fl_sim__pretrain(const fl_sim_config_t *cfg, fl_tokenizer_t *tok,
                     const fl_buf_t *public_text, const char *path,
                     fl_model_t **out_model);

/* The centralized baseline (sim/central.c); fl_sim_run calls it for mode =
 * centralized. */
int fl_sim__central_run(const fl_sim_config_t *cfg, char *err, size_t errlen);

#endif
