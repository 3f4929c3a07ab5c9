/* tests/fuzz/fuzz_net_stream.c — arbitrary bytes from a real loopback peer
 * into a plain TCP server connection. The server must deliver exactly the
 * frames the frame decoder finds in the same bytes, close with the reason
 * the decoder gives (or FL_ECLOSED / FL_ETRUNC at the end of the stream),
 * echo every frame without trouble, and be left with no connection. */
#include "net/net.h"
#include "proto/frame.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FRAME 64

static uv_loop_t g_loop;
static fl_net_server_t *g_srv;
static int g_port;
static int g_frames, g_closed, g_reason;
static fl_net_conn_t *g_conn;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_frame(fl_net_conn_t *c, const uint8_t *p, size_t n)
{
    if (n == 0 || n > MAX_FRAME)
        __builtin_trap();
    g_frames++;
    int rc = fl_net_send(c, p, n);
    if (rc < 0 && rc != FL_ECLOSED)
        __builtin_trap();
}

static void on_open(fl_net_conn_t *c)
{
    g_conn = c;
}

static void on_close(fl_net_conn_t *c, int reason)
{
    if (c == g_conn)
        g_conn = NULL;
    g_closed++;
    g_reason = reason;
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&g_loop) != 0)
        __builtin_trap();
    fl_net_server_opts_t o;
    fl_net_server_opts_init(&o);
    o.limits.max_frame = MAX_FRAME;
    o.cb.on_open = on_open;
    o.cb.on_frame = on_frame;
    o.cb.on_close = on_close;
    if (fl_net_server_new(&g_loop, &o, &g_srv) != 0)
        __builtin_trap();
    g_port = fl_net_server_port(g_srv);
}

/* What the decoder alone makes of the bytes: frames, and the error. */
static void reference(const uint8_t *data, size_t size, int *frames, int *err)
{
    fl_frame_decoder_t d;
    fl_frame_decoder_init(&d, MAX_FRAME);
    *frames = 0;
    *err = 0;
    while (size > 0) {
        size_t used;
        const uint8_t *fr;
        size_t fl;
        int rc = fl_frame_decoder_feed(&d, data, size, &used, &fr, &fl);
        data += used;
        size -= used;
        if (rc < 0) {
            *err = rc;
            break;
        }
        *frames += rc == 1;
    }
    if (*err == 0)
        *err = fl_frame_decoder_finish(&d) < 0 ? FL_ETRUNC : FL_ECLOSED;
    fl_frame_decoder_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_srv)
        setup();
    int frames0 = g_frames, closed0 = g_closed;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        __builtin_trap();
    size_t off = 0;
    while (off < size && g_closed == closed0) {
        ssize_t k =
            send(fd, data + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0)
            off += (size_t)k;
        else
            uv_run(&g_loop, UV_RUN_ONCE);
    }
    /* Once the server has every byte, the peer resets the connection (a
     * FIN would leave a million TIME_WAIT sockets behind). */
    for (;;) {
        fl_net_stats_t st = {0};
        if (g_conn)
            fl_net_conn_stats(g_conn, &st);
        if (g_closed != closed0 || (g_conn && st.bytes_in == size))
            break;
        uv_run(&g_loop, UV_RUN_ONCE);
    }
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    while (g_closed == closed0)
        uv_run(&g_loop, UV_RUN_ONCE);

    int want_frames, want_err;
    reference(data, size, &want_frames, &want_err);
    if (g_frames - frames0 != want_frames || g_reason != want_err ||
        fl_net_server_nconns(g_srv) != 0)
        __builtin_trap();
    return 0;
}
