/*
 * keel: a proactor runtime for Linux (io_uring, with an epoll fallback),
 * promises with All/Any synchronization, and the network and file operations
 * built on them. Include this for everything.
 */
#ifndef KEEL_H
#define KEEL_H

#include "acceptor.h"
#include "buf.h"
#include "errors.h"
#include "file.h"
#include "log.h"
#include "loop.h"
#include "promise.h"
#include "signal.h"
#include "tcp.h"
#include "timer.h"
#include "tls.h"
#include "transport.h"
#include "util.h"

#endif
