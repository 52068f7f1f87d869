/*
 * The live dashboard: a history per worker, one sample a second (requests
 * and shed requests per second, open connections, p50 and p99 latency,
 * the process's resident memory), kept for BOARD_SAMPLES seconds in a
 * ring per worker slot, under one mutex (each worker writes a sample a
 * second; a page reads them all a second: no contention worth a lock-free
 * design). The page draws them with no external assets.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "board.h"
#include "keel/loop.h"
#include "keel/util.h"

struct sample {
	uint64_t t_ms; /* wall clock */
	uint64_t rps, shed_ps, conns, rss, p50_us, p99_us;
};

struct ring {
	struct sample s[BOARD_SAMPLES];
	unsigned head, len; /* the oldest at head */
};

static pthread_mutex_t board_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ring
    *rings[BOARD_WORKERS_MAX]; /* (made on a worker's first sample; the process's to the end) */
static int nslots;

static int statm_fd = -1;
static pthread_once_t statm_once = PTHREAD_ONCE_INIT;

static void statm_open(void)
{
	statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
}

/* The process's resident memory (/proc/self/statm, opened once by whichever worker samples first). */
static uint64_t rss_now(void)
{
	pthread_once(&statm_once, statm_open);
	int fd = statm_fd;
	char b[96];
	ssize_t n = fd >= 0 ? pread(fd, b, sizeof(b) - 1, 0) : -1;
	unsigned long long size, resident;
	if (n <= 0)
		return 0;
	b[n] = '\0';
	return sscanf(b, "%llu %llu", &size, &resident) == 2 ? resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

static void board_push(int index, const struct sample *x)
{
	if (index < 0 || index >= BOARD_WORKERS_MAX)
		return;
	pthread_mutex_lock(&board_mu);
	struct ring *r = rings[index];
	if (!r)
		r = rings[index] = calloc(1, sizeof(*r));
	if (r) {
		unsigned at = (r->head + r->len) % BOARD_SAMPLES;
		r->s[at] = *x;
		if (r->len < BOARD_SAMPLES)
			r->len++;
		else
			r->head = (r->head + 1) % BOARD_SAMPLES;
		if (index >= nslots)
			nslots = index + 1;
	}
	pthread_mutex_unlock(&board_mu);
}

static void board_tick(keel_loop *loop, keel_timer *t)
{
	board_worker *b = keel_container_of(t, board_worker, timer);
	keel_http_stats st;
	keel_http_server_stats(b->srv, &st);
	keel_http_latency lat;
	keel_http_server_latency(b->srv, &lat);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	struct sample x = {
	    .t_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000,
	    .rps = st.requests - b->requests,
	    .shed_ps = st.shed - b->shed,
	    .conns = st.conns_open,
	    .rss = rss_now(),
	    .p50_us = lat.p50_us,
	    .p99_us = lat.p99_us,
	};
	b->requests = st.requests;
	b->shed = st.shed;
	board_push(b->index, &x);
	keel_timer_arm(loop, &b->timer, BOARD_INTERVAL_MS);
}

void board_worker_start(board_worker *b, keel_loop *loop, keel_http_server *srv, int index)
{
	*b = (board_worker){.srv = srv, .index = index, .on = true};
	keel_timer_init(&b->timer, board_tick);
	keel_http_latency drop;
	keel_http_server_latency(srv, &drop); /* (a window starts now) */
	keel_timer_arm(loop, &b->timer, BOARD_INTERVAL_MS);
}

void board_worker_stop(board_worker *b, keel_loop *loop)
{
	if (b->on)
		keel_timer_disarm(loop, &b->timer);
	b->on = false;
}

/* ?format=json: {"interval_ms": N, "workers": [{"worker": I, "samples": [[t_ms, rps, shed_ps, conns, rss, p50_us, p99_us], ...]}, ...]} */
static keel_promise *board_json(keel_http_request *req)
{
	pthread_mutex_lock(&board_mu);
	int n = nslots;
	size_t cap = 64 + (size_t)n * (48 + BOARD_SAMPLES * (7 * 21 + 4));
	char *out = keel_ctx_alloc(keel_http_request_ctx(req), cap);
	size_t len = 0;
	if (out) {
		len += (size_t)snprintf(out, cap, "{\"interval_ms\": %d, \"workers\": [", BOARD_INTERVAL_MS);
		bool first = true;
		for (int i = 0; i < n; i++) {
			const struct ring *r = rings[i];
			if (!r)
				continue;
			len += (size_t)snprintf(out + len, cap - len, "%s\n {\"worker\": %d, \"samples\": [",
			                        first ? "" : ",", i);
			first = false;
			for (unsigned k = 0; k < r->len; k++) {
				const struct sample *x = &r->s[(r->head + k) % BOARD_SAMPLES];
				len += (size_t)snprintf(
				    out + len, cap - len, "%s[%llu,%llu,%llu,%llu,%llu,%llu,%llu]",
				    k ? "," : "", (unsigned long long)x->t_ms, (unsigned long long)x->rps,
				    (unsigned long long)x->shed_ps, (unsigned long long)x->conns,
				    (unsigned long long)x->rss, (unsigned long long)x->p50_us,
				    (unsigned long long)x->p99_us);
			}
			len += (size_t)snprintf(out + len, cap - len, "]}");
		}
		len += (size_t)snprintf(out + len, cap - len, "]}\n");
	}
	pthread_mutex_unlock(&board_mu);
	if (!out)
		return keel_http_respond(req, 503, "text/plain", "out of memory\n", 14);
	return keel_http_respond(req, 200, "application/json", out, len);
}

/* The page: five plots of the last minutes, one line per worker, redrawn every second. */
static const char page[] =
    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>keel: live</title>\n"
    "<style>body{font:14px system-ui,sans-serif;margin:16px;background:#fff;color:#222}"
    "h1{font-size:18px;margin:0 0 8px}#plots{display:grid;grid-template-columns:repeat(auto-fill,"
    "minmax(460px,1fr));gap:12px}canvas{border:1px solid #ddd;width:100%;height:200px}"
    "#state{color:#666}</style></head><body>\n"
    "<h1>keel: live, up to the last 5 minutes</h1><div id=\"state\">loading</div>\n"
    "<div id=\"plots\"><canvas id=\"rps\"></canvas><canvas id=\"p99\"></canvas>"
    "<canvas id=\"shed\"></canvas><canvas id=\"conns\"></canvas><canvas id=\"rss\"></canvas></div>\n"
    "<script>\n"
    "const COL=['#1f77b4','#d62728','#2ca02c','#9467bd','#ff7f0e','#17becf','#8c564b','#e377c2'];\n"
    "const PLOTS=[['rps','requests/s',1,1,false],['p99','p99 latency (ms; p50 dashed)',6,0.001,false],"
    "['shed','shed requests/s',2,1,false],['conns','open connections',3,1,false],"
    "['rss','resident memory (MiB, the process)',4,1/1048576,true]];\n"
    "let ink={};\n"
    "function draw(d){const ts=d.workers.flatMap(w=>w.samples.map(s=>s[0]));"
    "const now=ts.reduce((a,b)=>Math.max(a,b),0),old=ts.reduce((a,b)=>Math.min(a,b),now);"
    "const span=Math.min(300000,Math.max(10000,now-old));const t0=now-span;ink={};\n"
    " for(const [id,title,col,scale,one] of PLOTS){const c=document.getElementById(id);"
    "c.width=c.clientWidth;c.height=c.clientHeight;const g=c.getContext('2d');"
    "g.fillStyle='#fff';g.fillRect(0,0,c.width,c.height);\n"
    "  const ws=one?d.workers.slice(0,1):d.workers;let max=1e-9;"
    "for(const w of ws)for(const s of w.samples)if(s[0]>=t0)max=Math.max(max,s[col]*scale);max*=1.1;\n"
    "  const L=56,R=8,T=22,B=18,W=c.width-L-R,H=c.height-T-B;g.strokeStyle='#ccc';g.strokeRect(L,T,W,H);"
    "g.fillStyle='#222';g.font='12px sans-serif';\n"
    "  const last=ws.map(w=>w.samples.length?(w.samples[w.samples.length-1][col]*scale):0);"
    "g.fillText(title+': '+last.map(v=>+v.toFixed(v<10?2:0)).join(' / '),L,14);\n"
    "  g.fillText(+max.toFixed(max<10?2:0),2,T+10);g.fillText('0',2,T+H);"
    "g.fillText(span<120000?'-'+Math.round(span/1000)+' s':'-'+Math.round(span/60000)+' min',L,c.height-4);"
    "g.fillText('now',L+W-24,c.height-4);let n=0;\n"
    "  ws.forEach((w,i)=>{const line=(k,dash)=>{g.strokeStyle=COL[w.worker%COL.length];g.setLineDash(dash);"
    "g.beginPath();let on=false;\n"
    "   g.lineWidth=2;for(const s of w.samples){if(s[0]<t0)continue;"
    "const x=L+W*(s[0]-t0)/span,y=T+H-H*s[k]*scale/max;"
    "if(on)g.lineTo(x,y);else g.moveTo(x,y);on=true;if(s[k]>0)n++;}g.stroke();g.setLineDash([]);};\n"
    "   line(col,[]);if(id==='p99')line(5,[4,3]);});ink[id]=n;}\n"
    " document.getElementById('state').textContent=d.workers.length+' worker'+(d.workers.length==1?'':'s')"
    "+', updated '+new Date(now).toLocaleTimeString();}\n"
    "async function tick(){try{const r=await fetch(location.pathname+'?format=json',{cache:'no-store'});"
    "draw(await r.json());}catch(e){document.getElementById('state').textContent='no data: '+e;}}\n"
    "tick();setInterval(tick,1000);\n"
    "</script></body></html>\n";

keel_promise *board_handler(keel_http_request *req, void *ud)
{
	(void)ud;
	if (req->query.len >= 11 && memmem(req->query.ptr, req->query.len, "format=json", 11))
		return board_json(req);
	return keel_http_respond(req, 200, "text/html; charset=utf-8", page, sizeof(page) - 1);
}
