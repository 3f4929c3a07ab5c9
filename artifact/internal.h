/* artifact/internal.h — shared between the files of artifact/ only. */
#ifndef FL_ARTIFACT_INTERNAL_H
#define FL_ARTIFACT_INTERNAL_H

#include <stdint.h>

/* 1 when name may be listed in a manifest: [A-Za-z0-9._-]+, shorter than
 * FL_ARTIFACT_NAME_MAX, not starting with '.', not manifest.json or
 * manifest.sig. Such a name cannot leave its directory. */
int fl_artifact__name_ok(const char *name);

/* SHA-256 of everything readable from fd (from its current offset);
 * *size (may be NULL) receives the byte count. */
int fl_artifact__sha256_fd(int fd, uint8_t *out, uint64_t *size);
/* The same, writing every byte read to dst as well (dst < 0: nowhere). */
int fl_artifact__sha256_copy_fd(int fd, int dst, uint8_t *out, uint64_t *size);

#endif
