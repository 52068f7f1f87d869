/*
 * Minimal logging to stderr: one line per call, prefixed "keel: ".
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

enum { KEEL_LOG_ERROR = 0, KEEL_LOG_WARN = 1, KEEL_LOG_INFO = 2, KEEL_LOG_DEBUG = 3 };

/* Messages above level are dropped. Default KEEL_LOG_INFO, or $KEEL_LOG (0-3). */
void keel_log_set_level(int level);
void keel_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif

#endif
