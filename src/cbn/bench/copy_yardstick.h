/* copy_yardstick.h - see copy_yardstick.c */
#ifndef CBN_COPY_YARDSTICK_H
#define CBN_COPY_YARDSTICK_H
#include <stdint.h>
void cbn_yardstick_copy(void *dst, const void *src, int64_t nbytes, int n_threads);
#endif
