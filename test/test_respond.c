/*
 * The respond helpers, over loopback with keel's own client:
 *
 *  - keel_http_respond_copy sends what the body held when it was called: a
 *    stack buffer overwritten right after the call still arrives as it was.
 *    An empty body is answered with Content-Length 0.
 *  - keel_http_respondf formats into the request's context, from one byte to
 *    100 KB.
 *  - keel_http_respond_json (keel/json.h) sends a cJSON tree as
 *    application/json that parses back to the same values; the tree stays
 *    the caller's.
 *  - Routing with a catch-all ("/" for every method): a path a more specific
 *    route knows under other methods is 405 with those in Allow, not the
 *    catch-all's answer; every other path and method reaches the catch-all,
 *    and a less specific route that names the method still takes it.
 *  - keel_log's prefix: the program's name by default, one of its own, none.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/http_client.h"
#include "keel/json.h"
#include "keel/keel.h"
#include "test.h"

static keel_loop *loop;
static char up[64];

static keel_promise *h_copy(keel_http_request *r, void *ud)
{
	(void)ud;
	char buf[64];
	snprintf(buf, sizeof(buf), "copied %.*s", (int)r->query.len, r->query.ptr);
	keel_promise *p = keel_http_respond_copy(r, 200, "text/plain", buf, strlen(buf));
	memset(buf, 'X', sizeof(buf)); /* (what was sent is what the call saw) */
	return p;
}

static keel_promise *h_empty(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond_copy(r, 204, NULL, NULL, 0);
}

static keel_promise *h_fmt(keel_http_request *r, void *ud)
{
	(void)ud;
	long n = strtol(r->query.ptr ? r->query.ptr : "1", NULL, 10);
	return keel_http_respondf(r, 201, "text/plain", "%0*d|%s", (int)n, 7, "end");
}

static keel_promise *h_json(keel_http_request *r, void *ud)
{
	cJSON *tree = ud;
	return keel_http_respond_json(r, 200, tree);
}

static keel_promise *h_users(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "text/plain", "users", 5);
}

static keel_promise *h_fallback(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 404, "text/plain", "nothing here", 12);
}

static keel_http_client_response *ask(keel_http_client *c, const char *method, const char *target)
{
	keel_http_client_request q = {.upstream = up, .method = method, .target = target};
	keel_outcome o = test_await(loop, keel_http_client_request_send(c, &q));
	if (o.err)
		FAIL("%s %s: %s", method ? method : "GET", target, keel_strerror(o.err));
	return o.ptr;
}

static keel_http_client_response *get(keel_http_client *c, const char *target)
{
	return ask(c, NULL, target);
}

/* method target: status, body, and the Allow header (NULL: none). */
static void routed(keel_http_client *c, const char *method, const char *target, int status, const char *body,
                   const char *allow)
{
	keel_http_client_response *r = ask(c, method, target);
	const keel_http_header *a = keel_http_header_find(&r->msg, "allow");
	if (r->status != status ||
	    (body && (r->body.len != strlen(body) || memcmp(r->body.ptr, body, r->body.len))) ||
	    (allow ? !a || !keel_str_eq(a->value, allow) : a != NULL))
		FAIL("%s %s: %d \"%.*s\" Allow \"%.*s\"", method, target, r->status, (int)r->body.len,
		     r->body.ptr, a ? (int)a->value.len : 0, a ? a->value.ptr : "");
	keel_http_client_response_free(r);
}

static void expect(keel_http_client *c, const char *target, int status, const char *ctype, const char *body)
{
	keel_http_client_response *r = get(c, target);
	ASSERT_EQ(r->status, status);
	const keel_http_header *ct = keel_http_header_find(&r->msg, "content-type");
	if (ctype)
		ASSERT(ct && keel_str_eq(ct->value, ctype));
	else
		ASSERT(!ct);
	if (r->body.len != strlen(body) || memcmp(r->body.ptr, body, r->body.len) != 0)
		FAIL("GET %s: body \"%.*s\", want \"%s\"", target, (int)r->body.len, r->body.ptr, body);
	keel_http_client_response_free(r);
}

static void test_log_prefix(void)
{
	char path[] = "/tmp/keel-log-XXXXXX";
	int fd = mkstemp(path);
	ASSERT_OK(fd);
	unlink(path);
	int saved = dup(2);
	ASSERT_OK(dup2(fd, 2));
	keel_log(KEEL_LOG_ERROR, "one %d", 1);
	keel_log_set_prefix("svc");
	keel_log(KEEL_LOG_ERROR, "two");
	keel_log_set_prefix("");
	keel_log(KEEL_LOG_ERROR, "three");
	keel_log_set_prefix(NULL);
	keel_log(KEEL_LOG_ERROR, "four");
	dup2(saved, 2);
	close(saved);
	char buf[256];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	ASSERT(n > 0);
	buf[n] = '\0';
	const char *want = "test_respond: one 1\nsvc: two\nthree\ntest_respond: four\n";
	if (strcmp(buf, want) != 0)
		FAIL("log lines \"%s\", want \"%s\"", buf, want);
	printf("keel_log: the program's name, a prefix of its own, none: ok\n");
}

int main(void)
{
	test_log_prefix();
	loop = test_loop();
	cJSON *tree = cJSON_CreateObject();
	cJSON_AddStringToObject(tree, "name", "keel \"json\"");
	cJSON_AddNumberToObject(tree, "n", 42);
	cJSON *list = cJSON_AddArrayToObject(tree, "list");
	cJSON_AddItemToArray(list, cJSON_CreateTrue());
	cJSON_AddItemToArray(list, cJSON_CreateNull());

	keel_http_config cfg;
	keel_http_config_default(&cfg);
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	ASSERT_OK(keel_http_route(srv, "GET", "/copy", 0, h_copy, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/empty", 0, h_empty, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/fmt", 0, h_fmt, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/json", 0, h_json, tree));
	ASSERT_OK(keel_http_route(srv, "GET", "/users", 0, h_users, NULL));
	ASSERT_OK(keel_http_route(srv, "POST", "/users", 0, h_users, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/files/", KEEL_HTTP_PREFIX, h_users, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/a", 0, h_users, NULL));
	ASSERT_OK(keel_http_route(srv, "POST", "/a", KEEL_HTTP_PREFIX, h_empty, NULL));
	ASSERT_OK(keel_http_route(srv, "OPTIONS", "/", KEEL_HTTP_PREFIX, h_users, NULL));
	ASSERT_OK(keel_http_route(srv, NULL, "/", KEEL_HTTP_PREFIX, h_fallback, NULL));
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	ASSERT_OK(lfd);
	snprintf(up, sizeof(up), "127.0.0.1:%d", keel_tcp_port(lfd));
	ASSERT_OK(keel_http_server_start(srv, lfd));
	keel_http_client *c;
	ASSERT_OK(keel_http_client_new(&c, loop, NULL));

	expect(c, "/copy?abc", 200, "text/plain", "copied abc");
	keel_http_client_response *r = get(c, "/empty");
	ASSERT_EQ(r->status, 204);
	ASSERT_EQ(r->body.len, 0);
	keel_http_client_response_free(r);
	printf("keel_http_respond_copy: the body as it was at the call, an empty one: ok\n");

	expect(c, "/fmt?1", 201, "text/plain", "7|end");
	r = get(c, "/fmt?100000");
	ASSERT_EQ(r->status, 201);
	ASSERT_EQ(r->body.len, 100004);
	ASSERT(r->body.ptr[99998] == '0' && memcmp(r->body.ptr + 99999, "7|end", 5) == 0);
	keel_http_client_response_free(r);
	printf("keel_http_respondf: 5 B and 100 KB bodies: ok\n");

	for (int i = 0; i < 2; i++) { /* (twice: the tree is still the caller's) */
		r = get(c, "/json");
		ASSERT_EQ(r->status, 200);
		const keel_http_header *ct = keel_http_header_find(&r->msg, "content-type");
		ASSERT(ct && keel_str_eq(ct->value, "application/json"));
		cJSON *back = cJSON_ParseWithLength(r->body.ptr, r->body.len);
		ASSERT(back && cJSON_Compare(back, tree, true));
		cJSON_Delete(back);
		keel_http_client_response_free(r);
	}
	printf("keel_http_respond_json: application/json that parses back to the tree: ok\n");

	routed(c, "DELETE", "/users", 405, NULL, "GET, POST, OPTIONS, HEAD");
	routed(c, "POST", "/users", 200, "users", NULL);
	routed(c, "HEAD", "/users", 200, "", NULL);
	routed(c, "PUT", "/files/a/b", 405, NULL, "GET, OPTIONS, HEAD");
	routed(c, "GET", "/files/a/b", 200, "users", NULL);
	routed(c, "GET", "/elsewhere", 404, "nothing here", NULL);
	routed(c, "PUT", "/elsewhere", 404, "nothing here", NULL);
	routed(c, "POST", "/a", 204, "", NULL); /* a less specific route that names POST takes it */
	routed(c, "OPTIONS", "/users", 200, "users", NULL); /* as does one naming OPTIONS for every path */
	routed(c, "DELETE", "/a", 405, NULL, "GET, POST, OPTIONS, HEAD");
	printf("a catch-all route: a method the path's own routes do not take is 405 with Allow: ok\n");

	keel_http_client_free(c);
	test_await(loop, keel_http_server_stop(srv, 1000));
	keel_http_server_free(srv);
	keel_loop_free(loop);
	cJSON_Delete(tree);
	return 0;
}
