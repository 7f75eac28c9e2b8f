/* The requests a live allocation repeats, walked, checked and signed in C.
 *
 * A TURN client keeps its allocation with Refresh (RFC 8656 §8), and opens
 * it to peers with CreatePermission (§10) and ChannelBind (§12), each
 * signed with the USERNAME, REALM and NONCE of its last request (RFC 8489
 * §9.2.4). relay/server_fast.py hands such a request here with what the
 * Python path authenticated last on the same allocation. check() walks it
 * as Message.decode does, refuses (None) anything but the common form, and
 * checks its FINGERPRINT (§14.7) and its MESSAGE-INTEGRITY (§14.5) with the
 * remembered key; sign() writes a response as Message.encode(integrity_key=)
 * does. allocate() tells the Allocate a client opens with (no
 * MESSAGE-INTEGRITY), which gets a 401 (RFC 8656 §7.2, RFC 8489 §9.2.4),
 * and walks the common form of the signed Allocate that answers it, for
 * Python to authenticate: verify() checks its MESSAGE-INTEGRITY with each
 * key the credential sources name, and sign_allocated() writes its success
 * response. Python keeps every table and every decision: nonce staleness,
 * the credential sources, the 401 rate limit, the allocation, its relay
 * socket, permissions, channels and quotas.
 *
 * HMAC-SHA1 is OpenSSL's libcrypto (the digest Python's hmac module uses):
 * its EVP digest interface keyed by hand (RFC 2104), so no MAC object is
 * fetched per call. tests/unit/test_turn_server.py runs the TURN core's
 * tests with this path first, and tests/unit/test_turn_fast_path.py compares
 * it with the Python path on generated requests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#include "_stun_bytes.h"

#define MAGIC_COOKIE 0x2112A442u
#define FINGERPRINT_XOR 0x5354554Eu
#define ALLOCATE 0x0003
#define REFRESH 0x0004
#define CREATE_PERMISSION 0x0008
#define CHANNEL_BIND 0x0009
#define ATTR_USERNAME 0x0006
#define ATTR_MESSAGE_INTEGRITY 0x0008
#define ATTR_CHANNEL_NUMBER 0x000C
#define ATTR_LIFETIME 0x000D
#define ATTR_XOR_PEER_ADDRESS 0x0012
#define ATTR_REALM 0x0014
#define ATTR_NONCE 0x0015
#define ATTR_REQUESTED_ADDRESS_FAMILY 0x0017
#define ATTR_EVEN_PORT 0x0018
#define ATTR_REQUESTED_TRANSPORT 0x0019
#define ATTR_DONT_FRAGMENT 0x001A
#define ATTR_RESERVATION_TOKEN 0x0022
#define ATTR_XOR_RELAYED_ADDRESS 0x0016
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define ATTR_ADDITIONAL_ADDRESS_FAMILY 0x8000
#define ATTR_PASSWORD_ALGORITHMS 0x8002
#define ATTR_DRAFT_ADDITIONAL_ADDRESS_FAMILY 0x8032
#define ATTR_FINGERPRINT 0x8028
#define SHA1_BLOCK 64
#define SHA1_BYTES 20
/* More peers in one CreatePermission than this are left to Python. */
#define MAX_PEERS 8

static EVP_MD *sha1;
static EVP_MD_CTX *digest;
/* CRC-32 (as zlib.crc32) of the header with its length field set to length, then data[4:end]. */
static uint32_t
crc_of(const unsigned char *data, size_t end, unsigned int length)
{
    unsigned char head[4] = {data[0], data[1], (unsigned char)(length >> 8), (unsigned char)length};
    return crc32_update(crc32_update(0xFFFFFFFFu, head, 4), data + 4, end - 4) ^ 0xFFFFFFFFu;
}

/* HMAC-SHA1 (RFC 2104) with key over the header with its length field set to length, then
 * data[4:end]; 0 on an OpenSSL failure. */
static int
hmac_sha1(const unsigned char *key, size_t key_size, const unsigned char *data, size_t end, unsigned int length,
          unsigned char *mac)
{
    unsigned char pad[SHA1_BLOCK], inner[SHA1_BYTES];
    unsigned char head[4] = {data[0], data[1], (unsigned char)(length >> 8), (unsigned char)length};
    unsigned int size;
    memset(pad, 0, sizeof pad);
    if (key_size > SHA1_BLOCK) {
        if (!EVP_Digest(key, key_size, pad, &size, sha1, NULL))
            return 0;
    } else {
        memcpy(pad, key, key_size);
    }
    for (int i = 0; i < SHA1_BLOCK; i++)
        pad[i] ^= 0x36;
    if (!EVP_DigestInit_ex2(digest, sha1, NULL) || !EVP_DigestUpdate(digest, pad, sizeof pad)
        || !EVP_DigestUpdate(digest, head, sizeof head) || !EVP_DigestUpdate(digest, data + 4, end - 4)
        || !EVP_DigestFinal_ex(digest, inner, &size))
        return 0;
    for (int i = 0; i < SHA1_BLOCK; i++)
        pad[i] ^= 0x36 ^ 0x5C;
    return EVP_DigestInit_ex2(digest, sha1, NULL) && EVP_DigestUpdate(digest, pad, sizeof pad)
        && EVP_DigestUpdate(digest, inner, sizeof inner) && EVP_DigestFinal_ex(digest, mac, &size);
}

/* Whether the attribute at value (size bytes) is exactly expected. */
static int
same_value(const unsigned char *value, size_t size, Py_buffer *expected)
{
    return (size_t)expected->len == size && memcmp(value, expected->buf, size) == 0;
}

/* (host, port) of an IPv4 XOR-PEER-ADDRESS value (RFC 8489 §14.2), as Python's decode_xor_address writes it. */
static PyObject *
ipv4_peer(const unsigned char *value)
{
    return Py_BuildValue("(Ni)",
                         PyUnicode_FromFormat("%u.%u.%u.%u", value[4] ^ 0x21u, value[5] ^ 0x12u, value[6] ^ 0xA4u,
                                              value[7] ^ 0x42u),
                         get16(value + 2) ^ 0x2112);
}

/* The attribute at *offset of the message p, size bytes (RFC 8489 §14): its start (*at), type, length and
 * value, with *offset moved past it and its padding. 1: one was read; 0: none is left; -1: it does not fit. */
static int
next_attribute(const unsigned char *p, size_t size, size_t *offset, size_t *at, unsigned int *type,
               unsigned int *length, const unsigned char **value)
{
    *at = *offset;
    if (*at >= size)
        return 0;
    if (size - *at < 4)
        return -1;
    *type = get16(p + *at);
    *length = get16(p + *at + 2);
    *value = p + *at + 4;
    if (*at + 4 + *length > size)
        return -1;
    *offset = *at + 4 + ((*length + 3) & ~3u);
    return 1;
}

PyDoc_STRVAR(check_doc,
"check(data, username, realm, nonce, key) -> (method, number, peers) or None\n\n"
"A Refresh, CreatePermission or ChannelBind request of the common form, naming exactly\n"
"USERNAME username, REALM realm and NONCE nonce, with a MESSAGE-INTEGRITY that verifies with key\n"
"and a valid FINGERPRINT or none: its method, then LIFETIME (Refresh; None when absent) or the\n"
"channel number (ChannelBind; None otherwise), then the IPv4 XOR-PEER-ADDRESSes as (host, port).\n"
"None for anything else: Python decides those.");

static PyObject *
check(PyObject *self, PyObject *args)
{
    Py_buffer data, username, realm, nonce, key;
    const unsigned char *p;
    const unsigned char *value;
    size_t size, offset = 20, at, mac_offset = 0;
    unsigned int method, type, length, seen_username = 0, seen_realm = 0, seen_nonce = 0, peer_count = 0, numbers = 0;
    int walked;
    long number = -1;
    const unsigned char *peers[MAX_PEERS];
    PyObject *result = NULL, *list = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*", &data, &username, &realm, &nonce, &key))
        return NULL;
    p = data.buf;
    size = (size_t)data.len;
    if (size < 20)
        goto other;
    method = get16(p);
    if ((method != REFRESH && method != CREATE_PERMISSION && method != CHANNEL_BIND) || get32(p + 4) != MAGIC_COOKIE
        || (get16(p + 2) & 3) != 0 || (size_t)get16(p + 2) + 20 != size)
        goto other;
    while ((walked = next_attribute(p, size, &offset, &at, &type, &length, &value)) > 0) {
        if (mac_offset) {
            /* After MESSAGE-INTEGRITY only a last FINGERPRINT is taken here. */
            if (type != ATTR_FINGERPRINT || length != 4 || at + 8 != size
                || (crc_of(p, at, (unsigned int)(at + 8 - 20)) ^ FINGERPRINT_XOR) != get32(value))
                goto other;
        } else if (type == ATTR_MESSAGE_INTEGRITY) {
            if (length != SHA1_BYTES)
                goto other;
            mac_offset = at;
        } else if (type == ATTR_USERNAME) {
            if (seen_username++ || !same_value(value, length, &username))
                goto other;
        } else if (type == ATTR_REALM) {
            if (seen_realm++ || !same_value(value, length, &realm))
                goto other;
        } else if (type == ATTR_NONCE) {
            if (seen_nonce++ || !same_value(value, length, &nonce))
                goto other;
        } else if (type == ATTR_LIFETIME && method == REFRESH) {
            if (numbers++ || length != 4)
                goto other;
            number = (long)get32(value);
        } else if (type == ATTR_CHANNEL_NUMBER && method == CHANNEL_BIND) {
            if (numbers++ || length != 4)
                goto other;
            number = get16(value);
        } else if (type == ATTR_XOR_PEER_ADDRESS && method != REFRESH) {
            if (peer_count == MAX_PEERS || length != 8 || value[1] != 0x01)
                goto other;
            peers[peer_count++] = value;
        } else if (type < 0x8000 || type == ATTR_PASSWORD_ALGORITHMS || type == ATTR_FINGERPRINT) {
            goto other;  /* comprehension-required, or read by the Python path, or a misplaced FINGERPRINT */
        }
    }
    if (walked < 0 || !mac_offset || !seen_username || !seen_realm || !seen_nonce
        || (method == CREATE_PERMISSION && peer_count == 0)
        || (method == CHANNEL_BIND && (peer_count != 1 || numbers != 1)))
        goto other;
    {
        unsigned char mac[SHA1_BYTES];
        if (!hmac_sha1(key.buf, (size_t)key.len, p, mac_offset, (unsigned int)(mac_offset + 24 - 20), mac)) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL HMAC-SHA1 failed");
            goto done;
        }
        if (CRYPTO_memcmp(mac, p + mac_offset + 4, SHA1_BYTES) != 0)
            goto other;
    }
    if (!(list = PyList_New(peer_count)))
        goto done;
    for (unsigned int i = 0; i < peer_count; i++) {
        PyObject *peer = ipv4_peer(peers[i]);
        if (!peer)
            goto done;
        PyList_SET_ITEM(list, i, peer);
    }
    if (number < 0)
        result = Py_BuildValue("(iOO)", method, Py_None, list);
    else
        result = Py_BuildValue("(ilO)", method, number, list);
    goto done;
other:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(list);
    PyBuffer_Release(&data);
    PyBuffer_Release(&username);
    PyBuffer_Release(&realm);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&key);
    return result;
}

PyDoc_STRVAR(allocate_doc,
"allocate(data) -> True, (username, realm, nonce, lifetime, dont_fragment, mac_offset) or None\n\n"
"True when data is an Allocate request without MESSAGE-INTEGRITY(-SHA256) whose attributes the\n"
"Python path would all take (the request attributes of Allocate, comprehension-optional ones, a\n"
"last FINGERPRINT that verifies): the request a client opens with, which gets a 401. For the\n"
"common signed form (one REQUESTED-TRANSPORT, UDP; at most one LIFETIME and DONT-FRAGMENT; one\n"
"each of USERNAME, REALM and NONCE; MESSAGE-INTEGRITY; a valid FINGERPRINT or none), the values\n"
"of USERNAME, REALM and NONCE, the LIFETIME (None when absent), whether DONT-FRAGMENT is there\n"
"and where MESSAGE-INTEGRITY starts (for verify). None for anything else: Python decides those.");

static PyObject *
allocate(PyObject *self, PyObject *arg)
{
    Py_buffer data;
    const unsigned char *p;
    const unsigned char *named[3] = {NULL, NULL, NULL};
    unsigned int named_size[3] = {0, 0, 0};
    const unsigned char *value;
    size_t size, offset = 20, at, mac_offset = 0;
    unsigned int type, length, transports = 0, udp = 0, lifetimes = 0, fragments = 0, others = 0;
    int walked;
    long lifetime = -1;
    PyObject *result = NULL;
    (void)self;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    p = data.buf;
    size = (size_t)data.len;
    if (size < 20 || get16(p) != ALLOCATE || get32(p + 4) != MAGIC_COOKIE || (get16(p + 2) & 3) != 0
        || (size_t)get16(p + 2) + 20 != size)
        goto other;
    while ((walked = next_attribute(p, size, &offset, &at, &type, &length, &value)) > 0) {
        int slot = -1;
        if (type == ATTR_FINGERPRINT) {
            if (length != 4 || at + 8 != size
                || (crc_of(p, at, (unsigned int)(size - 20)) ^ FINGERPRINT_XOR) != get32(value))
                goto other;
        } else if (mac_offset) {
            goto other;  /* after MESSAGE-INTEGRITY only a last FINGERPRINT is taken here */
        } else if (type == ATTR_MESSAGE_INTEGRITY) {
            if (length != SHA1_BYTES)
                goto other;
            mac_offset = at;
        } else if (type == ATTR_REQUESTED_TRANSPORT) {
            transports++;
            udp = length == 4 && value[0] == 17;
        } else if (type == ATTR_LIFETIME) {
            if (lifetimes++ || length != 4)
                others++;
            else
                lifetime = (long)get32(value);
        } else if (type == ATTR_DONT_FRAGMENT) {
            fragments++;
        } else if (type == ATTR_USERNAME) {
            slot = 0;
        } else if (type == ATTR_REALM) {
            slot = 1;
        } else if (type == ATTR_NONCE) {
            slot = 2;
        } else if (type == ATTR_REQUESTED_ADDRESS_FAMILY || type == ATTR_EVEN_PORT
                   || type == ATTR_RESERVATION_TOKEN || type >= 0x8000) {
            /* Allocate takes these; the signed form leaves them, and the optional ones its handler
             * reads, to Python. */
            if (type < 0x8000 || type == ATTR_ADDITIONAL_ADDRESS_FAMILY || type == ATTR_PASSWORD_ALGORITHMS
                || type == ATTR_DRAFT_ADDITIONAL_ADDRESS_FAMILY)
                others++;
        } else {
            goto other;  /* USERHASH, PASSWORD-ALGORITHM, MESSAGE-INTEGRITY-SHA256 or one Allocate does not take */
        }
        if (slot >= 0) {
            if (named[slot])
                others++;
            named[slot] = value;
            named_size[slot] = length;
        }
    }
    if (walked < 0)
        goto other;
    if (!mac_offset) {
        result = Py_NewRef(Py_True);
        goto done;
    }
    if (others || transports != 1 || !udp || fragments > 1 || !named[0] || !named[1] || !named[2])
        goto other;
    if (lifetime < 0)
        result = Py_BuildValue("(y#y#y#OOn)", named[0], (Py_ssize_t)named_size[0], named[1],
                               (Py_ssize_t)named_size[1], named[2], (Py_ssize_t)named_size[2], Py_None,
                               fragments ? Py_True : Py_False, (Py_ssize_t)mac_offset);
    else
        result = Py_BuildValue("(y#y#y#lOn)", named[0], (Py_ssize_t)named_size[0], named[1],
                               (Py_ssize_t)named_size[1], named[2], (Py_ssize_t)named_size[2], lifetime,
                               fragments ? Py_True : Py_False, (Py_ssize_t)mac_offset);
    goto done;
other:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(verify_doc,
"verify(data, mac_offset, key) -> bool\n\n"
"Whether the MESSAGE-INTEGRITY at mac_offset (as allocate() found it) verifies with key.");

static PyObject *
verify(PyObject *self, PyObject *args)
{
    Py_buffer data, key;
    Py_ssize_t mac_offset;
    unsigned char mac[SHA1_BYTES];
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ny*", &data, &mac_offset, &key))
        return NULL;
    if (mac_offset < 20 || mac_offset + 24 > data.len) {
        PyErr_SetString(PyExc_ValueError, "no MESSAGE-INTEGRITY at that offset");
        goto done;
    }
    if (!hmac_sha1(key.buf, (size_t)key.len, data.buf, (size_t)mac_offset, (unsigned int)(mac_offset + 24 - 20), mac)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL HMAC-SHA1 failed");
        goto done;
    }
    result = PyBool_FromLong(CRYPTO_memcmp(mac, (const unsigned char *)data.buf + mac_offset + 4, SHA1_BYTES) == 0);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    return result;
}

/* The response to request (its method, cookie and transaction id), error or success, carrying body then
 * MESSAGE-INTEGRITY with key, as Message.encode(integrity_key=key) writes it. */
static PyObject *
signed_response(const unsigned char *request, int error, const unsigned char *body, size_t body_size,
                const unsigned char *key, size_t key_size)
{
    size_t length = body_size + 24;
    unsigned int type = (get16(request) & ~0x0110u) | (error ? 0x0110u : 0x0100u);
    unsigned char *out;
    PyObject *result;
    if (body_size & 3 || body_size > 0xFFFF - 24) {
        PyErr_SetString(PyExc_ValueError, "a body that cannot follow a STUN header");
        return NULL;
    }
    if (!(result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(20 + length))))
        return NULL;
    out = (unsigned char *)PyBytes_AS_STRING(result);
    out[0] = (unsigned char)(type >> 8);
    out[1] = (unsigned char)type;
    out[2] = (unsigned char)(length >> 8);
    out[3] = (unsigned char)length;
    memcpy(out + 4, request + 4, 16);
    memcpy(out + 20, body, body_size);
    out[20 + body_size] = 0;
    out[21 + body_size] = ATTR_MESSAGE_INTEGRITY;
    out[22 + body_size] = 0;
    out[23 + body_size] = SHA1_BYTES;
    if (!hmac_sha1(key, key_size, out, 20 + body_size, (unsigned int)length, out + 24 + body_size)) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL HMAC-SHA1 failed");
        return NULL;
    }
    return result;
}

PyDoc_STRVAR(sign_doc,
"sign(request, error, body, key) -> bytes\n\n"
"The success (error false) or error response to request, carrying the encoded attributes body\n"
"then MESSAGE-INTEGRITY with key, as Message.encode(integrity_key=key) writes it.");

static PyObject *
sign(PyObject *self, PyObject *args)
{
    Py_buffer request, body, key;
    int error;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*py*y*", &request, &error, &body, &key))
        return NULL;
    if (request.len < 20)
        PyErr_SetString(PyExc_ValueError, "not a STUN request");
    else
        result = signed_response(request.buf, error, body.buf, (size_t)body.len, key.buf, (size_t)key.len);
    PyBuffer_Release(&request);
    PyBuffer_Release(&body);
    PyBuffer_Release(&key);
    return result;
}

/* At out, an XOR-*-ADDRESS attribute of attr_type for host and port (RFC 8489 §14.2) as
 * Message.add_address writes it, tid the request's cookie and transaction id: its size (12 or 24),
 * or 0 when host is no IP literal or port no port. */
static size_t
xor_address(unsigned char *out, unsigned int attr_type, const char *host, int port, const unsigned char *tid)
{
    unsigned char ip[16];
    size_t ip_size = strchr(host, ':') ? 16 : 4;
    if (inet_pton(ip_size == 16 ? AF_INET6 : AF_INET, host, ip) != 1 || port < 0 || port > 0xFFFF)
        return 0;
    out[0] = (unsigned char)(attr_type >> 8);
    out[1] = (unsigned char)attr_type;
    out[2] = 0;
    out[3] = (unsigned char)(4 + ip_size);
    out[4] = 0;
    out[5] = ip_size == 16 ? 0x02 : 0x01;
    out[6] = (unsigned char)((port >> 8) ^ tid[0]);
    out[7] = (unsigned char)(port ^ tid[1]);
    for (size_t i = 0; i < ip_size; i++)
        out[8 + i] = ip[i] ^ tid[i];
    return 8 + ip_size;
}

PyDoc_STRVAR(sign_allocated_doc,
"sign_allocated(request, relayed, lifetime, mapped, tail, key) -> bytes\n\n"
"The success response to an Allocate request as relay.server_allocate.allocated writes it for one\n"
"relayed address: XOR-RELAYED-ADDRESS relayed, LIFETIME lifetime, XOR-MAPPED-ADDRESS mapped (each\n"
"(host, port)), the encoded attributes tail (SOFTWARE), then MESSAGE-INTEGRITY with key.");

static PyObject *
sign_allocated(PyObject *self, PyObject *args)
{
    Py_buffer request, tail, key;
    const char *relayed_host, *mapped_host;
    int relayed_port, mapped_port;
    unsigned long lifetime;
    unsigned char *body = NULL;
    size_t size, at;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*(si)k(si)y*y*", &request, &relayed_host, &relayed_port, &lifetime, &mapped_host,
                          &mapped_port, &tail, &key))
        return NULL;
    if (request.len < 20 || tail.len > 0xFFFF - 80 || lifetime > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_ValueError, "not a STUN request, or a lifetime or tail that cannot answer one");
        goto done;
    }
    if (!(body = PyMem_Malloc(56 + (size_t)tail.len))) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(at = xor_address(body, ATTR_XOR_RELAYED_ADDRESS, relayed_host, relayed_port, request.buf + 4)))
        goto bad_address;
    body[at] = 0, body[at + 1] = ATTR_LIFETIME, body[at + 2] = 0, body[at + 3] = 4;
    body[at + 4] = (unsigned char)(lifetime >> 24), body[at + 5] = (unsigned char)(lifetime >> 16);
    body[at + 6] = (unsigned char)(lifetime >> 8), body[at + 7] = (unsigned char)lifetime;
    at += 8;
    if (!(size = xor_address(body + at, ATTR_XOR_MAPPED_ADDRESS, mapped_host, mapped_port, request.buf + 4)))
        goto bad_address;
    at += size;
    memcpy(body + at, tail.buf, (size_t)tail.len);
    result = signed_response(request.buf, 0, body, at + (size_t)tail.len, key.buf, (size_t)key.len);
    goto done;
bad_address:
    PyErr_SetString(PyExc_ValueError, "an address that is no IP literal and port");
done:
    PyMem_Free(body);
    PyBuffer_Release(&request);
    PyBuffer_Release(&tail);
    PyBuffer_Release(&key);
    return result;
}

static PyMethodDef module_methods[] = {
    {"check", check, METH_VARARGS, check_doc},
    {"sign", sign, METH_VARARGS, sign_doc},
    {"allocate", allocate, METH_O, allocate_doc},
    {"verify", verify, METH_VARARGS, verify_doc},
    {"sign_allocated", sign_allocated, METH_VARARGS, sign_allocated_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef requests_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay._requests",
    .m_doc = PyDoc_STR("A live allocation's Refresh, CreatePermission and ChannelBind, and the Allocate that makes "
                       "it, checked and signed in C (relay/server_fast.py)."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__requests(void)
{
    sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    digest = EVP_MD_CTX_new();
    if (!sha1 || !digest) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-1 digest");
        return NULL;
    }
    return PyModule_Create(&requests_module);
}
