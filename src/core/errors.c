/*
 * keel_strerror and the log sink.
 */
#include <errno.h> /* program_invocation_short_name */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/errors.h"
#include "keel/log.h"

const char *keel_strerror(int err)
{
	switch (err) {
	case 0: return "success";
	case KEEL_ELIMIT: return "a configured limit was reached";
	case KEEL_EBACKEND: return "the requested backend cannot run here";
	case KEEL_ESTOPPED: return "the loop is stopping";
	case KEEL_ECONNTIMEDOUT: return "connecting timed out";
	case KEEL_ENAME: return "name does not resolve";
	case KEEL_ETLS: return "TLS record failed";
	case KEEL_ETLSHS: return "TLS handshake failed";
	case KEEL_ETLSCERT: return "TLS certificate did not verify";
	case KEEL_EWSCLOSED: return "WebSocket closed";
	default: break;
	}
	if (err < 0 && err > -4096)
		return strerror(-err); /* glibc: thread-safe for known codes, static strings */
	return "unknown error";
}

static int log_level = -1;
static char log_prefix[64];
static bool log_prefix_set;

void keel_log_set_prefix(const char *prefix)
{
	log_prefix_set = prefix != NULL;
	snprintf(log_prefix, sizeof(log_prefix), "%s", prefix ? prefix : "");
}

void keel_log_set_level(int level)
{
	log_level = level;
}

void keel_log(int level, const char *fmt, ...)
{
	if (log_level < 0) {
		const char *env = getenv("KEEL_LOG");
		log_level = env && *env >= '0' && *env <= '3' ? *env - '0' : KEEL_LOG_INFO;
	}
	if (level > log_level)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	const char *prefix = log_prefix_set ? log_prefix : program_invocation_short_name;
	if (*prefix)
		fprintf(stderr, "%s: %s\n", prefix, line);
	else
		fprintf(stderr, "%s\n", line);
}
