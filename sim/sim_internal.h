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

#include "model/data.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "sim/sim.h"

/* Appends the text of records idx[0 .. n) to out. */
int fl_sim__records_text(const fl_sim_corpus_t *c, const size_t *idx, size_t n,
                         fl_buf_t *out);
/* What every run starts from: cfg's tokenizer (*tok, owned), its corpus
 * (c, freed by the caller with fl_sim_corpus_free even on failure) and the
 * split of the corpus into devices and public topics (part). err gets a
 * sentence on failure. */
int fl_sim__prepare(const fl_sim_config_t *cfg, fl_tokenizer_t **tok,
                    fl_sim_corpus_t *c, fl_sim_partition_t *part, char *err,
                    size_t errlen);
/* Device i's text of part, tokenized by tok and split into training and
 * validation as every run splits it; *out owned. */
int fl_sim__device_data(const fl_sim_config_t *cfg, const fl_sim_corpus_t *c,
                        const fl_sim_partition_t *part, int i,
                        const fl_tokenizer_t *tok, fl_data_t **out);
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
