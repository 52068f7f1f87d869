/*
 * Answering with JSON (Debian's cJSON): an optional header, so that libkeel
 * itself does not depend on cJSON. A program that includes it links -lcjson
 * (pkg-config libcjson).
 */
#ifndef KEEL_JSON_H
#define KEEL_JSON_H

#include <cjson/cJSON.h>
#include <errno.h>
#include <string.h>

#include "http.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Answer req with status and json serialized without whitespace, as
 * application/json. json is borrowed for the call only: it is serialized
 * and the text copied into the request's context before this returns, and
 * stays the caller's to change or free. The promise rejects with -ENOMEM
 * (answered 503) when either step finds no memory.
 */
static inline keel_promise *keel_http_respond_json(keel_http_request *req, int status, const cJSON *json)
{
	char *text = cJSON_PrintUnformatted(json);
	if (!text) {
		keel_promise *p = keel_promise_new(req->loop);
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	keel_promise *p = keel_http_respond_copy(req, status, "application/json", text, strlen(text));
	cJSON_free(text);
	return p;
}

#ifdef __cplusplus
}
#endif

#endif
