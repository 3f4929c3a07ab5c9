/* net/transport_tls.c — the TLS 1.3 transport: OpenSSL with two memory
 * BIOs, so that libuv owns the socket. Bytes read from the socket go into
 * the read BIO; whatever OpenSSL writes into the write BIO (handshake,
 * records, alerts) is flushed to the socket with uv_write. Also the TLS
 * contexts (server, client with CA and/or pin) and certificate
 * fingerprints. */
#include "net/net_internal.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <string.h>

/* Plaintext is written in slices of this size, each flushed before the
 * next, so a large frame is never held twice (BIO + write request). */
#define TLS_WRITE_SLICE (64u << 10)
#define TLS_SMALL_FRAME 16384u

struct fl_net_tls {
    SSL_CTX *ctx;
    int refs;
    int has_ca;
    int has_pin;
    uint8_t pin[FL_NET_FP_LEN];
};

typedef struct {
    SSL *ssl;
    BIO *rbio; /* socket -> OpenSSL; owned by ssl */
    BIO *wbio; /* OpenSSL -> socket; owned by ssl */
    int handshake_done;
} tls_state_t;

/* ---- fingerprints ---- */

static int x509_fingerprint(X509 *x, fl_net_fp_kind_t kind,
                            uint8_t out[FL_NET_FP_LEN])
{
    int rc = FL_ECRYPTO;
    unsigned char *der = NULL;
    unsigned len = 0;
    if (kind == FL_NET_FP_CERT) {
        if (X509_digest(x, EVP_sha256(), out, &len) == 1 &&
            len == FL_NET_FP_LEN)
            rc = 0;
        goto out;
    }
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
    if (n <= 0)
        goto out;
    if (EVP_Digest(der, (size_t)n, out, &len, EVP_sha256(), NULL) == 1 &&
        len == FL_NET_FP_LEN)
        rc = 0;
out:
    OPENSSL_free(der);
    return rc;
}

int fl_net_cert_fingerprint(const char *pem_file, fl_net_fp_kind_t kind,
                            uint8_t out[FL_NET_FP_LEN])
{
    int rc = FL_ECRYPTO;
    BIO *b = NULL;
    X509 *x = NULL;
    if (!pem_file)
        return FL_EINVAL;
    b = BIO_new_file(pem_file, "r");
    if (!b) {
        rc = FL_ENOENT;
        goto out;
    }
    x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (!x)
        goto out;
    rc = x509_fingerprint(x, kind, out);
out:
    X509_free(x);
    BIO_free(b);
    ERR_clear_error();
    return rc;
}

int fl_net__tls_peer_fingerprint(const fl_net_conn_t *c, fl_net_fp_kind_t kind,
                                 uint8_t out[FL_NET_FP_LEN])
{
    const tls_state_t *t = c->tp_state;
    X509 *x = t ? SSL_get0_peer_certificate(t->ssl) : NULL;
    if (!x)
        return FL_ENOENT;
    return x509_fingerprint(x, kind, out);
}

int fl_net__tls_peer_spki(const fl_net_conn_t *c, uint8_t **der, size_t *len)
{
    const tls_state_t *t = c->tp_state;
    X509 *x = t ? SSL_get0_peer_certificate(t->ssl) : NULL;
    unsigned char *p = NULL;
    if (!x)
        return FL_ENOENT;
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &p);
    if (n <= 0) {
        ERR_clear_error();
        return FL_ECRYPTO;
    }
    *der = fl_malloc((size_t)n);
    if (*der) {
        memcpy(*der, p, (size_t)n);
        *len = (size_t)n;
    }
    OPENSSL_free(p);
    return *der ? 0 : FL_ENOMEM;
}

/* ---- contexts ---- */

fl_net_tls_t *fl_net__tls_ref(fl_net_tls_t *t)
{
    if (t)
        t->refs++;
    return t;
}

void fl_net_tls_free(fl_net_tls_t *t)
{
    if (!t || --t->refs > 0)
        return;
    SSL_CTX_free(t->ctx);
    OPENSSL_cleanse(t->pin, sizeof t->pin);
    fl_free(t);
}

/* The client's chain check when a pin is set: the CA check (with the host
 * name) if a CA is configured, then the pin against the leaf. */
static int pin_verify(X509_STORE_CTX *sctx, void *arg)
{
    const fl_net_tls_t *t = arg;
    uint8_t spki[FL_NET_FP_LEN], cert[FL_NET_FP_LEN];
    if (t->has_ca && X509_verify_cert(sctx) <= 0)
        return 0;
    X509 *leaf = X509_STORE_CTX_get0_cert(sctx);
    if (!leaf || x509_fingerprint(leaf, FL_NET_FP_SPKI, spki) < 0 ||
        x509_fingerprint(leaf, FL_NET_FP_CERT, cert) < 0 ||
        (CRYPTO_memcmp(spki, t->pin, FL_NET_FP_LEN) != 0 &&
         CRYPTO_memcmp(cert, t->pin, FL_NET_FP_LEN) != 0)) {
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_CERT_REJECTED);
        return 0;
    }
    return 1;
}

static int tls_new_ctx(const SSL_METHOD *method, fl_net_tls_t **out)
{
    fl_net_tls_t *t = fl_calloc(1, sizeof *t);
    if (!t)
        return FL_ENOMEM;
    t->refs = 1;
    t->ctx = SSL_CTX_new(method);
    if (!t->ctx) {
        fl_free(t);
        return FL_ECRYPTO;
    }
    /* TLS 1.3 and nothing else, both ways. */
    if (SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(t->ctx, TLS1_3_VERSION) != 1) {
        fl_net_tls_free(t);
        return FL_ECRYPTO;
    }
    SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
    *out = t;
    return 0;
}

static int tls_load_cert(SSL_CTX *ctx, const char *cert, const char *key)
{
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        return FL_ECRYPTO;
    return 0;
}

int fl_net_tls_server_new(const fl_net_tls_opts_t *o, fl_net_tls_t **out)
{
    int rc = FL_EINVAL;
    fl_net_tls_t *t = NULL;
    *out = NULL;
    if (!o || !o->cert_file || !o->key_file || o->pin_sha256)
        goto out;
    rc = tls_new_ctx(TLS_server_method(), &t);
    if (rc < 0)
        goto out;
    rc = tls_load_cert(t->ctx, o->cert_file, o->key_file);
    if (rc < 0)
        goto out;
    /* No resumption: every session proves its certificate again. */
    SSL_CTX_set_num_tickets(t->ctx, 0);
    if (o->ca_file) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_file);
        if (!names ||
            SSL_CTX_load_verify_locations(t->ctx, o->ca_file, NULL) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            rc = FL_ECRYPTO;
            goto out;
        }
        SSL_CTX_set_client_CA_list(t->ctx, names); /* takes names */
        SSL_CTX_set_verify(
            t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        t->has_ca = 1;
    }
    *out = t;
    t = NULL;
    rc = 0;
out:
    fl_net_tls_free(t);
    ERR_clear_error();
    return rc;
}

int fl_net_tls_client_new(const fl_net_tls_opts_t *o, fl_net_tls_t **out)
{
    int rc = FL_EINVAL;
    fl_net_tls_t *t = NULL;
    *out = NULL;
    /* A client that verifies nothing is refused: use plain TCP instead. */
    if (!o || (!o->ca_file && !o->pin_sha256) ||
        (!o->cert_file != !o->key_file))
        goto out;
    rc = tls_new_ctx(TLS_client_method(), &t);
    if (rc < 0)
        goto out;
    if (o->cert_file) {
        rc = tls_load_cert(t->ctx, o->cert_file, o->key_file);
        if (rc < 0)
            goto out;
    }
    if (o->ca_file) {
        if (SSL_CTX_load_verify_locations(t->ctx, o->ca_file, NULL) != 1) {
            rc = FL_ECRYPTO;
            goto out;
        }
        t->has_ca = 1;
    }
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    if (o->pin_sha256) {
        memcpy(t->pin, o->pin_sha256, FL_NET_FP_LEN);
        t->has_pin = 1;
        SSL_CTX_set_cert_verify_callback(t->ctx, pin_verify, t);
    }
    *out = t;
    t = NULL;
    rc = 0;
out:
    fl_net_tls_free(t);
    ERR_clear_error();
    return rc;
}

/* ---- the transport ---- */

/* Why a TLS call failed, as a close reason. Clears the error queue so that
 * it never leaks into another connection's calls. */
static int tls_fail_reason(SSL *ssl)
{
    int rc = FL_ECRYPTO;
    unsigned long e = ERR_peek_error();
    if (SSL_get_verify_result(ssl) != X509_V_OK) {
        rc = FL_EDENIED;
    } else if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
        switch (ERR_GET_REASON(e)) {
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        case SSL_R_CERTIFICATE_VERIFY_FAILED:
        case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
        case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
            rc = FL_EDENIED;
            break;
        case SSL_R_UNSUPPORTED_PROTOCOL:
        case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
        case SSL_R_NO_PROTOCOLS_AVAILABLE:
            rc = FL_ENOTSUP;
            break;
        default:
            break;
        }
    }
    ERR_clear_error();
    return rc;
}

/* Moves everything OpenSSL has written to the socket. */
static int tls_flush(fl_net_conn_t *c, tls_state_t *t)
{
    size_t pending;
    while ((pending = BIO_ctrl_pending(t->wbio)) > 0) {
        fl_net_wreq_t *w = fl_net__wreq_new(pending);
        size_t got = 0;
        if (!w)
            return FL_ENOMEM;
        if (BIO_read_ex(t->wbio, w->data, pending, &got) != 1 || got == 0) {
            fl_free(w);
            return FL_ECRYPTO;
        }
        w->inl = got;
        int rc = fl_net__conn_write_wire(c, w, NULL, 0, NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int tls_start(fl_net_conn_t *c)
{
    tls_state_t *t = c->tp_state;
    if (SSL_is_server(t->ssl))
        return 0; /* wait for the ClientHello */
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r != 1 && SSL_get_error(t->ssl, r) != SSL_ERROR_WANT_READ) {
        tls_flush(c, t);
        return tls_fail_reason(t->ssl);
    }
    return tls_flush(c, t);
}

static int tls_input(fl_net_conn_t *c, const uint8_t *p, size_t n)
{
    tls_state_t *t = c->tp_state;
    uint8_t buf[TLS_SMALL_FRAME];
    size_t written = 0;
    if (BIO_write_ex(t->rbio, p, n, &written) != 1 || written != n)
        return FL_ENOMEM;
    if (!t->handshake_done) {
        ERR_clear_error();
        int r = SSL_do_handshake(t->ssl);
        int frc = tls_flush(c, t); /* also sends our alert on failure */
        if (r != 1) {
            if (SSL_get_error(t->ssl, r) == SSL_ERROR_WANT_READ)
                return frc;
            return tls_fail_reason(t->ssl);
        }
        if (frc < 0)
            return frc;
        t->handshake_done = 1;
        fl_net__conn_opened(c);
        if (c->state != NET_OPEN)
            return FL_ECLOSED;
    }
    for (;;) {
        size_t got = 0;
        ERR_clear_error();
        int r = SSL_read_ex(t->ssl, buf, sizeof buf, &got);
        if (r == 1) {
            int rc = fl_net__conn_deliver(c, buf, got);
            if (rc < 0)
                return rc;
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        int frc = tls_flush(c, t);
        if (e == SSL_ERROR_WANT_READ)
            return frc;
        if (e == SSL_ERROR_ZERO_RETURN) {
            ERR_clear_error();
            return fl_frame_decoder_finish(&c->dec) < 0 ? FL_ETRUNC
                                                        : FL_ECLOSED;
        }
        return tls_fail_reason(t->ssl);
    }
}

static int tls_write_all(fl_net_conn_t *c, tls_state_t *t, const uint8_t *p,
                         size_t n)
{
    while (n > 0) {
        size_t slice = FL_MIN(n, (size_t)TLS_WRITE_SLICE), done = 0;
        ERR_clear_error();
        if (SSL_write_ex(t->ssl, p, slice, &done) != 1 || done != slice)
            return tls_fail_reason(t->ssl);
        p += slice;
        n -= slice;
        int rc = tls_flush(c, t);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int tls_send(fl_net_conn_t *c, const uint8_t hdr[FL_FRAME_HEADER_LEN],
                    const uint8_t *p, size_t n, uint8_t *owned)
{
    tls_state_t *t = c->tp_state;
    int rc;
    if (n <= TLS_SMALL_FRAME - FL_FRAME_HEADER_LEN) {
        /* Header and payload in one record. */
        uint8_t one[TLS_SMALL_FRAME];
        memcpy(one, hdr, FL_FRAME_HEADER_LEN);
        memcpy(one + FL_FRAME_HEADER_LEN, p, n);
        rc = tls_write_all(c, t, one, n + FL_FRAME_HEADER_LEN);
    } else {
        rc = tls_write_all(c, t, hdr, FL_FRAME_HEADER_LEN);
        if (rc == 0)
            rc = tls_write_all(c, t, p, n);
    }
    fl_free(owned);
    return rc;
}

static void tls_shutdown(fl_net_conn_t *c)
{
    tls_state_t *t = c->tp_state;
    ERR_clear_error();
    SSL_shutdown(t->ssl); /* queues close_notify */
    ERR_clear_error();
    tls_flush(c, t);
}

static void tls_destroy(fl_net_conn_t *c)
{
    tls_state_t *t = c->tp_state;
    if (!t)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    fl_free(t);
    c->tp_state = NULL;
}

const fl_net_transport_t fl_net__tls = {
    .name = "tls",
    .start = tls_start,
    .input = tls_input,
    .send = tls_send,
    .shutdown = tls_shutdown,
    .destroy = tls_destroy,
};

static int is_ip_literal(const char *s)
{
    unsigned char tmp[16];
    return uv_inet_pton(AF_INET, s, tmp) == 0 ||
           uv_inet_pton(AF_INET6, s, tmp) == 0;
}

int fl_net__tls_attach(fl_net_conn_t *c, fl_net_tls_t *tls, int is_server,
                       const char *server_name)
{
    int rc = FL_ECRYPTO;
    tls_state_t *t = fl_calloc(1, sizeof *t);
    BIO *rbio = NULL, *wbio = NULL;
    if (!t)
        return FL_ENOMEM;
    t->ssl = SSL_new(tls->ctx);
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !rbio || !wbio)
        goto out;
    /* An empty read BIO means "wait for more", not end of stream. */
    BIO_set_mem_eof_return(rbio, -1);
    BIO_set_mem_eof_return(wbio, -1);
    SSL_set_bio(t->ssl, rbio, wbio); /* takes both */
    rbio = wbio = NULL;
    t->rbio = SSL_get_rbio(t->ssl);
    t->wbio = SSL_get_wbio(t->ssl);
    if (is_server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (server_name && is_ip_literal(server_name)) {
            /* No SNI for an address; its IP SAN is checked instead. */
            if (tls->has_ca && X509_VERIFY_PARAM_set1_ip_asc(
                                   SSL_get0_param(t->ssl), server_name) != 1)
                goto out;
        } else if (server_name) {
            if (SSL_set_tlsext_host_name(t->ssl, server_name) != 1)
                goto out;
            if (tls->has_ca && SSL_set1_host(t->ssl, server_name) != 1)
                goto out;
        }
    }
    c->tls = fl_net__tls_ref(tls);
    c->tp = &fl_net__tls;
    c->tp_state = t;
    t = NULL;
    rc = 0;
out:
    BIO_free(rbio);
    BIO_free(wbio);
    if (t) {
        SSL_free(t->ssl);
        fl_free(t);
    }
    ERR_clear_error();
    return rc;
}
