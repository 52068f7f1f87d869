/*
 * Minimal logging to stderr: one line per call, prefixed with the program's
 * name ("keel: " for the keel binary, "myservice: " for yours) unless set
 * otherwise.
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

enum { KEEL_LOG_ERROR = 0, KEEL_LOG_WARN = 1, KEEL_LOG_INFO = 2, KEEL_LOG_DEBUG = 3 };

/* Messages above level are dropped. Default KEEL_LOG_INFO, or $KEEL_LOG (0-3). */
void keel_log_set_level(int level);
/* Log one line (fmt and its arguments are read during the call). */
void keel_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * The prefix of every line ("PREFIX: message"): NULL (the default) for the
 * program's name, "" for none, or a string of your own, copied (up to 63
 * bytes). Set it before other threads log.
 */
void keel_log_set_prefix(const char *prefix);

#ifdef __cplusplus
}
#endif

#endif
