# keel — one Makefile for the library, the CLI, examples, tests and benchmarks.
#
#   make            build everything into build/
#   make run        start keel's main job on built-in defaults
#   make test       run every test program under every backend
#   make sanitize   the same tests built with ASan+UBSan (build-san/)
#   make bench      every benchmark in bench/ (echo, pollscale, http, load, idle, overload, ops, proxy, tls, h2, ws)
#   make fuzz       the libFuzzer drivers (parser and whole server), FUZZ_SECONDS each
#   make faults     the fault-injection runs (build-fault/: ASan+UBSan and KEEL_FAULT)
#   make format-check   every C file as .clang-format says (CI runs it)
#   make tsan       the tests built with ThreadSanitizer (build-tsan/): the CLI's
#                   workers, the epoll backend's file threads, cross-thread posts
#
# SAN=1 builds with sanitizers into build-san/. FAULT=1 adds fault injection
# (src/core/fault.h) to a sanitizer build, into build-fault/. TSAN=1 builds
# with ThreadSanitizer into build-tsan/. WERROR=1 turns warnings into errors.

CC      ?= cc
FAULT   ?= 0
SAN     ?= $(FAULT)
TSAN    ?= 0
WERROR  ?= 0
BUILD   ?= $(if $(filter 1,$(FAULT)),build-fault,$(if $(filter 1,$(SAN)),build-san,$(if $(filter 1,$(TSAN)),build-tsan,build)))

CFLAGS_BASE := -std=c17 -D_GNU_SOURCE -g -O2 -fPIC -pthread \
	-Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
	-Wformat=2 -Wvla -Iinclude -Isrc
ifeq ($(WERROR),1)
CFLAGS_BASE += -Werror
endif
ifeq ($(FAULT),1)
CFLAGS_BASE += -DKEEL_FAULT
endif
ifeq ($(SAN),1)
CFLAGS_BASE += -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDFLAGS_SAN := -fsanitize=address,undefined
endif
ifeq ($(TSAN),1)
CFLAGS_BASE += -O1 -fno-omit-frame-pointer -fsanitize=thread
LDFLAGS_SAN := -fsanitize=thread
endif
CFLAGS  ?=
ALL_CFLAGS := $(CFLAGS_BASE) $(CFLAGS)
LDLIBS  := -luring -lssl -lcrypto -lnghttp2 -pthread $(LDFLAGS_SAN)

LIB_SRC := $(wildcard src/core/*.c) $(wildcard src/backend/*.c) \
	$(wildcard src/backend/uring/*.c) $(wildcard src/backend/epoll/*.c) $(wildcard src/net/*.c) \
	$(wildcard src/http/*.c)
CLI_SRC := $(wildcard src/cli/*.c)
LOAD_SRC := $(wildcard src/load/*.c)
TEST_SRC := $(filter-out test/seccomp_exec.c,$(wildcard test/test_*.c))
TEST_PY := $(wildcard test/test_*.py)
EXAMPLE_SRC := $(wildcard examples/*.c)

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
LOAD_OBJ := $(LOAD_SRC:%.c=$(BUILD)/obj/%.o)
TESTS := $(TEST_SRC:test/%.c=$(BUILD)/test/%) $(TEST_PY:test/%=$(BUILD)/test/%)
EXAMPLES := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/examples/%)

.PHONY: all deps run test sanitize faults tsan bench fuzz clean format format-check fanout docs-diagram \
	install uninstall
all: deps $(BUILD)/libkeel.a $(BUILD)/libkeel.so $(BUILD)/keel $(TESTS) $(BUILD)/test/keeltest.py $(BUILD)/test/ws_upstream.py $(BUILD)/test/seccomp_exec $(BUILD)/test/http_testsrv $(BUILD)/test/ws_testsrv $(EXAMPLES)

# Debian packages the build needs; installed when run as root, otherwise named.
DEPS_HDR := /usr/include/liburing.h
deps:
	@TSAN=$(TSAN) sh scripts/deps.sh

$(BUILD)/obj/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libkeel.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The shared library exports keel_* only (src/keel.map) and is named for its
# ABI: libkeel.so.0.1.0, soname libkeel.so.0, with libkeel.so.0 and
# libkeel.so as symlinks. Nothing in the tree links it (libkeel.a is for that).
SO_ABI := 0
SO_VERSION := $(SO_ABI).1.0
$(BUILD)/libkeel.so: $(LIB_OBJ) src/keel.map
	$(CC) -shared -Wl,-soname,libkeel.so.$(SO_ABI) -Wl,--version-script=src/keel.map \
		-o $@.$(SO_VERSION) $(LIB_OBJ) $(LDLIBS)
	ln -sf libkeel.so.$(SO_VERSION) $@.$(SO_ABI)
	ln -sf libkeel.so.$(SO_ABI) $@

# make install [PREFIX=/usr/local] [DESTDIR=staging]: the keel binary, libkeel.so (with its
# soname and symlinks) and libkeel.a, the public headers under include/keel/, keel.pc
# (pkg-config --cflags --libs keel; --static for libkeel.a's dependencies) and the man
# pages (docs/man: keel(1), keel.conf(5), keel(7) and section 3), and for operators the
# systemd units, keel.conf.example and a logrotate snippet. make uninstall removes exactly those.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= $(PREFIX)/etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
HEADERS := $(wildcard include/keel/*.h)
MAN1 := $(wildcard docs/man/*.1)
MAN3 := $(wildcard docs/man/*.3)
MAN5 := $(wildcard docs/man/*.5)
MAN7 := $(wildcard docs/man/*.7)
# What operators get beside the binary (docs/operations.md): the systemd units (the
# service's paths filled in), the example configuration and a logrotate snippet.
OPS_FILES := $(DESTDIR)$(UNITDIR)/keel.service $(DESTDIR)$(UNITDIR)/keel.socket \
	$(DESTDIR)$(SYSCONFDIR)/keel/keel.conf.example $(DESTDIR)$(SYSCONFDIR)/logrotate.d/keel

install: $(BUILD)/keel $(BUILD)/libkeel.a $(BUILD)/libkeel.so src/keel.pc.in
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/keel $(DESTDIR)$(PKGCONFIGDIR)
	install -m 755 $(BUILD)/keel $(DESTDIR)$(BINDIR)/keel
	install -m 644 $(BUILD)/libkeel.a $(DESTDIR)$(LIBDIR)/libkeel.a
	install -m 755 $(BUILD)/libkeel.so.$(SO_VERSION) $(DESTDIR)$(LIBDIR)/libkeel.so.$(SO_VERSION)
	ln -sf libkeel.so.$(SO_VERSION) $(DESTDIR)$(LIBDIR)/libkeel.so.$(SO_ABI)
	ln -sf libkeel.so.$(SO_ABI) $(DESTDIR)$(LIBDIR)/libkeel.so
	@# The loader finds libkeel.so.0 in /usr/local/lib through its cache: refresh it there.
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && { [ "$(LIBDIR)" = /usr/local/lib ] || \
		[ "$(LIBDIR)" = /usr/lib ]; }; then ldconfig; fi
	install -m 644 $(HEADERS) $(DESTDIR)$(INCLUDEDIR)/keel/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
		-e 's|@VERSION@|$(SO_VERSION)|' src/keel.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/keel.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/keel.pc
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(MANDIR)/man7
	install -m 644 $(MAN1) $(DESTDIR)$(MANDIR)/man1/
	install -m 644 $(MAN3) $(DESTDIR)$(MANDIR)/man3/
	install -m 644 $(MAN5) $(DESTDIR)$(MANDIR)/man5/
	install -m 644 $(MAN7) $(DESTDIR)$(MANDIR)/man7/
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/keel $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' dist/keel.service.in \
		> $(DESTDIR)$(UNITDIR)/keel.service
	chmod 644 $(DESTDIR)$(UNITDIR)/keel.service
	install -m 644 dist/keel.socket $(DESTDIR)$(UNITDIR)/keel.socket
	install -m 644 keel.conf.example $(DESTDIR)$(SYSCONFDIR)/keel/keel.conf.example
	install -m 644 dist/keel.logrotate $(DESTDIR)$(SYSCONFDIR)/logrotate.d/keel

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/keel $(DESTDIR)$(LIBDIR)/libkeel.a $(DESTDIR)$(LIBDIR)/libkeel.so \
		$(DESTDIR)$(LIBDIR)/libkeel.so.$(SO_ABI) $(DESTDIR)$(LIBDIR)/libkeel.so.$(SO_VERSION) \
		$(DESTDIR)$(PKGCONFIGDIR)/keel.pc $(HEADERS:include/keel/%=$(DESTDIR)$(INCLUDEDIR)/keel/%) \
		$(MAN3:docs/man/%=$(DESTDIR)$(MANDIR)/man3/%) $(MAN7:docs/man/%=$(DESTDIR)$(MANDIR)/man7/%) \
		$(MAN1:docs/man/%=$(DESTDIR)$(MANDIR)/man1/%) $(MAN5:docs/man/%=$(DESTDIR)$(MANDIR)/man5/%) \
		$(OPS_FILES)
	-rmdir $(DESTDIR)$(INCLUDEDIR)/keel $(DESTDIR)$(SYSCONFDIR)/keel

# The load generator (keel load): a module of its own on top of libkeel, not part of its API.
$(BUILD)/libkeel_load.a: $(LOAD_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The CLI reads config files with Debian's libinih, and takes sockets from systemd with libsystemd.
$(BUILD)/keel: $(CLI_OBJ) $(BUILD)/libkeel_load.a $(BUILD)/libkeel.a
	$(CC) -o $@ $(CLI_OBJ) $(BUILD)/libkeel_load.a $(BUILD)/libkeel.a -linih -lsystemd $(LDLIBS)

$(BUILD)/test/%: test/%.c test/test.h $(BUILD)/libkeel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itest -o $@ $< $(BUILD)/libkeel.a $(LDLIBS)

# test_respond answers with keel/json.h, which uses Debian's cJSON.
$(BUILD)/test/test_respond: test/test_respond.c test/test.h $(BUILD)/libkeel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itest -o $@ $< $(BUILD)/libkeel.a -lcjson $(LDLIBS)

# test_hist tests the load generator's histogram, linked from its module.
$(BUILD)/test/test_hist: test/test_hist.c test/test.h $(BUILD)/libkeel_load.a $(BUILD)/libkeel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itest -o $@ $< $(BUILD)/libkeel_load.a $(BUILD)/libkeel.a $(LDLIBS)

$(BUILD)/test/%.py: test/%.py
	@mkdir -p $(dir $@)
	cp $< $@ && chmod +x $@

$(BUILD)/test/http_testsrv: test/http_testsrv.c $(BUILD)/libkeel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libkeel.a $(LDLIBS)

$(BUILD)/test/ws_testsrv: test/ws_testsrv.c $(BUILD)/libkeel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libkeel.a $(LDLIBS)

$(BUILD)/test/seccomp_exec: test/seccomp_exec.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LDFLAGS_SAN)

$(BUILD)/examples/%: examples/%.c $(BUILD)/libkeel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libkeel.a $(LDLIBS)

# The fan-out example combines JSON with Debian's cJSON.
$(BUILD)/examples/fanout: examples/fanout.c examples/fanout_svc.c $(BUILD)/libkeel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -I/usr/include/cjson -o $@ $< $(BUILD)/libkeel.a -lcjson $(LDLIBS)

run: all
	$(BUILD)/keel serve --status www

test: all
	@BUILD=$(BUILD) sh test/run.sh

sanitize:
	@$(MAKE) --no-print-directory SAN=1 test

# The server, client, proxy and static files under injected faults (test/test_faults.py),
# in a sanitizer build with KEEL_FAULT; then the TLS tests with kernel TLS emulated
# (src/net/ktls.h: what would be handed to the kernel, checked by real clients), as no
# kernel here has CONFIG_TLS.
faults:
	@$(MAKE) --no-print-directory FAULT=1 all
	@BUILD=build-fault sh test/run.sh test_faults
	@KEEL_KTLS_EMULATE=1 BUILD=build-fault sh test/run.sh test_tls

# Data races: every test under ThreadSanitizer, which stops a program at its first report.
tsan:
	@$(MAKE) --no-print-directory TSAN=1 all
	@TSAN_OPTIONS="halt_on_error=1 exitcode=66 $${TSAN_OPTIONS:-}" BUILD=build-tsan sh test/run.sh

bench: all
	bench/echo/run.sh
	bench/pollscale/run.sh
	bench/http/run.sh
	bench/load/run.sh
	bench/idle/run.sh
	bench/overload/run.sh
	bench/ops/run.sh
	bench/proxy/run.sh
	bench/tls/run.sh
	bench/h2/run.sh
	bench/ws/run.sh

# libFuzzer drivers (the HTTP parser, the chunked decoder, WebSocket framing, the whole server), each for a bounded time.
fuzz:
	sh fuzz/run.sh

# docs/architecture.svg and .png, from docs/architecture.dot (Debian's graphviz).
docs-diagram:
	dot -Tsvg docs/architecture.dot -o docs/architecture.svg
	dot -Tpng -Gdpi=110 docs/architecture.dot -o docs/architecture.png

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

# CI: every C file as clang-format (14, Debian 12) would write it; prints the offending lines.
format-check:
	@clang-format --dry-run -Werror $$(git ls-files '*.c' '*.h') && echo "format: ok"

clean:
	rm -rf build build-san build-fault build-tsan

# The fan-out example as a self-contained demo: 127.0.0.1:8090, its upstreams on 8091..8093.
fanout: $(BUILD)/examples/fanout
	$(BUILD)/examples/fanout

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(LOAD_OBJ:.o=.d)
