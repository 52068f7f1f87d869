/*
 * keel load: the command line of the load generator in src/load/. This
 * file only turns flags into a load_opts, checks them (a bad flag is a
 * usage error, exit status 2, before anything starts) and calls load_run.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "load/load.h"

#define LOAD_BODY_MAX (64l << 20) /* --body @FILE */

static void load_usage(FILE *f)
{
	fputs(
	    "usage: keel load [options] URL\n"
	    "  URL                     http://HOST[:PORT][/path] or https://...; HOST a numeric\n"
	    "                          IPv4 address, [IPv6] or localhost (127.0.0.1)\n"
	    "  -c, --connections N     connections (default 64)\n"
	    "  -d, --duration SECONDS  length of the run (default 10)\n"
	    "  -R, --rate R            open loop: R requests/s in total, each timed from when it was\n"
	    "                          due (coordinated omission corrected); default: closed loop\n"
	    "  -p, --pipeline D        requests in flight per connection (default 1; 16 with --rate)\n"
	    "  -m, --method M          request method (default GET)\n"
	    "  -b, --body STRING|@FILE request body, sent with Content-Length\n"
	    "  -H, --header 'N: v'     extra request header (repeatable)\n"
	    "  -T, --timeout MS        connect timeout, and how long a connection may go without\n"
	    "                          answering its oldest request before it is dropped (default 2000)\n"
	    "  -t, --threads N         threads, each with a loop and a share of the connections (default 1)\n"
	    "  -j, --json FILE         also write the results as JSON\n"
	    "  -q, --quiet             no progress line on stderr\n"
	    "      --tls-ca FILE       https: verify the server against this CA (PEM; default: the\n"
	    "                          system store)\n"
	    "  -k, --insecure          https: do not verify the server at all\n",
	    f);
}

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("keel load: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	load_usage(stderr);
	return CLI_USAGE;
}

static bool is_tchar(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool is_token(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_tchar((unsigned char)s[i]))
			return false;
	return true;
}

/* --body @FILE: the whole file, at most LOAD_BODY_MAX bytes. NULL with errno set. */
static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat sb;
	char *buf = NULL;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size > LOAD_BODY_MAX) {
		errno = EFBIG;
		goto out_close;
	}
	buf = malloc((size_t)sb.st_size + 1);
	if (!buf)
		goto out_close;
	size_t got = 0;
	while (got < (size_t)sb.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
		if (r <= 0) {
			free(buf);
			buf = NULL;
			errno = r == 0 ? EIO : errno;
			goto out_close;
		}
		got += (size_t)r;
	}
	*len = got;
out_close:
	close(fd);
	return buf;
}

/* --duration accepts "5" or "5s". */
static long parse_seconds(const char *opt, const char *s)
{
	char buf[32];
	size_t n = strlen(s);
	if (n > 0 && n < sizeof(buf) && s[n - 1] == 's') {
		memcpy(buf, s, n - 1);
		buf[n - 1] = '\0';
		s = buf;
	}
	return cli_parse_long(opt, s, 1, 86400);
}

int cli_load(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"connections", required_argument, NULL, 'c'},
	    {"duration", required_argument, NULL, 'd'},
	    {"rate", required_argument, NULL, 'R'},
	    {"pipeline", required_argument, NULL, 'p'},
	    {"method", required_argument, NULL, 'm'},
	    {"body", required_argument, NULL, 'b'},
	    {"header", required_argument, NULL, 'H'},
	    {"timeout", required_argument, NULL, 'T'},
	    {"threads", required_argument, NULL, 't'},
	    {"json", required_argument, NULL, 'j'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"tls-ca", required_argument, NULL, 'A'},
	    {"insecure", no_argument, NULL, 'k'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	load_opts o;
	memset(&o, 0, sizeof(o));
	o.conns = 64;
	o.duration_s = 10;
	o.timeout_ms = 2000;
	o.threads = 1;
	o.method = "GET";
	long pipeline = 0;
	const char *body_arg = NULL;
	const char **headers = calloc((size_t)argc, sizeof(*headers));
	int nheaders = 0, status = CLI_USAGE;
	char *body = NULL;
	size_t body_len = 0;
	if (!headers)
		return CLI_FAIL;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:d:R:p:m:b:H:T:t:j:qkh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': o.conns = cli_parse_long("--connections", optarg, 1, 1000000); break;
		case 'd': o.duration_s = parse_seconds("--duration", optarg); break;
		case 'R': o.rate = cli_parse_long("--rate", optarg, 1, 100000000); break;
		case 'p': pipeline = cli_parse_long("--pipeline", optarg, 1, 1024); break;
		case 'm':
			if (!is_token(optarg, strlen(optarg)) || strlen(optarg) > 32) {
				status = usage_error("--method: not an HTTP method token: '%s'", optarg);
				goto out;
			}
			o.method = optarg;
			break;
		case 'b': body_arg = optarg; break;
		case 'H': {
			const char *colon = strchr(optarg, ':');
			if (!colon || !is_token(optarg, (size_t)(colon - optarg)) ||
			    strpbrk(optarg, "\r\n")) {
				status = usage_error("--header: expected 'Name: value', got '%s'", optarg);
				goto out;
			}
			headers[nheaders++] = optarg;
			break;
		}
		case 'T': o.timeout_ms = cli_parse_long("--timeout", optarg, 1, 3600000); break;
		case 't': o.threads = cli_parse_long("--threads", optarg, 1, 256); break;
		case 'j': o.json_path = optarg; break;
		case 'q': o.quiet = true; break;
		case 'A': o.tls_ca = optarg; break;
		case 'k': o.tls_insecure = true; break;
		case 'h':
			load_usage(stdout);
			status = CLI_OK;
			goto out;
		case ':': status = usage_error("%s needs a value", argv[optind - 1]); goto out;
		default: status = usage_error("unknown option '%s'", argv[optind - 1]); goto out;
		}
	}
	if (argc - optind != 1) {
		status = usage_error("%s", argc == optind ? "a URL is needed" : "one URL only");
		goto out;
	}
	o.url = argv[optind];
	o.pipeline = pipeline ? pipeline : o.rate ? 16 : 1;
	if (o.threads > o.conns) {
		status = usage_error("%s", "--threads: more threads than connections");
		goto out;
	}
	if (o.conns * o.pipeline > LOAD_SLOTS_MAX) {
		status = usage_error(
		    "%s", "--connections x --pipeline: too many requests in flight (at most 4194304)");
		goto out;
	}
	load_url url; /* load_run parses it again; checked here so that a bad URL is a usage error */
	if (load_url_parse(&url, o.url) < 0) {
		status = usage_error("bad URL '%s' (expected http[s]://IP[:PORT]/path, [IPv6] or localhost)",
		                     o.url);
		goto out;
	}
	if (body_arg && body_arg[0] == '@') {
		body = read_file(body_arg + 1, &body_len);
		if (!body) {
			fprintf(stderr, "keel load: --body %s: %s\n", body_arg, strerror(errno));
			status = CLI_FAIL;
			goto out;
		}
	} else if (body_arg) {
		body_len = strlen(body_arg);
	}
	o.headers = headers;
	o.nheaders = nheaders;
	o.body = body ? body : body_arg;
	o.body_len = body_len;
	status = load_run(&o) < 0 ? CLI_FAIL : CLI_OK;
out:
	free(body);
	free(headers);
	return status;
}
