/* Batched UDP socket calls for the relay data path: recvmmsg(2) and sendmmsg(2).
 *
 * Python's socket module makes one system call per datagram. The relay moves
 * every relayed packet through two of them, and on one core those calls, not
 * the relay's own work, bound its packets per second (docs/PERFORMANCE.md).
 * This module reads up to a batch of datagrams in one recvmmsg and sends a
 * list of datagrams in one sendmmsg. Both are MSG_DONTWAIT, so they never
 * block and keep the GIL: releasing and taking it again costs more than the
 * call (only the stay's epoll_wait, which sleeps, lets other threads run).
 *
 * Receiver.recv_serving also answers, inside the batch, the plain STUN
 * Binding requests the fast path of relay/_binding.c takes, and sends those
 * answers in one sendmmsg, and relays routed ChannelData (relay/_route.c,
 * which also holds Receiver.poll_relays): only the other datagrams become
 * Python objects. Given an answer callable, a TURN request is handed to it
 * inside the batch and its response sent from C, so a request the TURN
 * core's fast path answers (relay/server_fast.py) costs one Python call and
 * no read pass. Receiver.stay (relay/_stay.c) serves those sockets without
 * a turn of the reactor while nothing else is ready.
 *
 * Addresses are what socket.recvfrom gives, cut to (host, port): IPv4 and
 * IPv6 hosts as numeric strings, a scoped IPv6 host as "addr%scope" (from
 * getnameinfo, as CPython does), so they key the same dicts.
 */
#include "_mmsg.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "_binding.h"
#include "_stun_bytes.h"

#define MAX_BATCH 1024

/* "a.b.c.d" for an IPv4 address in network order; returns its length. */
int
format_ipv4(const struct in_addr *in, char *out)
{
    const unsigned char *b = (const unsigned char *)&in->s_addr;
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned int v = b[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        if (i < 3)
            *p++ = '.';
    }
    *p = '\0';
    return (int)(p - out);
}

static PyObject *
address_object(const struct sockaddr_storage *ss)
{
    char host[NI_MAXHOST];
    PyObject *text, *port, *result;
    int length;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        length = format_ipv4(&sin->sin_addr, host);
        text = PyUnicode_FromStringAndSize(host, length);
        port = PyLong_FromLong(ntohs(sin->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        if (sin6->sin6_scope_id == 0) {
            if (inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host) == NULL)
                return PyErr_SetFromErrno(PyExc_OSError);
        } else {
            int err = getnameinfo((const struct sockaddr *)ss, sizeof *sin6, host, sizeof host,
                                  NULL, 0, NI_NUMERICHOST);
            if (err != 0) {
                PyErr_SetString(PyExc_OSError, gai_strerror(err));
                return NULL;
            }
        }
        text = PyUnicode_FromString(host);
        port = PyLong_FromLong(ntohs(sin6->sin6_port));
    } else {
        PyErr_Format(PyExc_OSError, "unsupported address family %d", ss->ss_family);
        return NULL;
    }
    if (text == NULL || port == NULL) {
        Py_XDECREF(text);
        Py_XDECREF(port);
        return NULL;
    }
    result = PyTuple_Pack(2, text, port);
    Py_DECREF(text);
    Py_DECREF(port);
    return result;
}

/* The (host, port) objects of recently seen senders, direct-mapped: a relay
 * hears the same few addresses over and over, and handing back the same
 * tuple saves building it and rehashing its host in every dict lookup. */
#define ADDRESS_CACHE 512

static unsigned int
address_slot(const struct sockaddr_storage *ss)
{
    uint32_t h;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        h = sin->sin_addr.s_addr ^ ((uint32_t)sin->sin_port * 2654435761u);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        const uint32_t *words = (const uint32_t *)&sin6->sin6_addr;
        h = words[0] ^ words[1] ^ words[2] ^ words[3] ^ sin6->sin6_scope_id
            ^ ((uint32_t)sin6->sin6_port * 2654435761u);
    }
    h ^= h >> 16;
    return (h * 2246822519u >> 7) % ADDRESS_CACHE;
}

static int
same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a, *y = (const struct sockaddr_in *)b;
        return x->sin_addr.s_addr == y->sin_addr.s_addr && x->sin_port == y->sin_port;
    }
    {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a, *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id
            && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
}

PyObject *
cached_address(CachedAddress *cache, const struct sockaddr_storage *ss)
{
    CachedAddress *entry;
    PyObject *value;
    if (cache == NULL || (ss->ss_family != AF_INET && ss->ss_family != AF_INET6))
        return address_object(ss);
    entry = &cache[address_slot(ss)];
    if (entry->value != NULL && same_address(&entry->key, ss)) {
        Py_INCREF(entry->value);
        return entry->value;
    }
    value = address_object(ss);
    if (value == NULL)
        return NULL;
    Py_XSETREF(entry->value, Py_NewRef(value));
    memcpy(&entry->key, ss, sizeof *ss);
    return value;
}

/* Fill ss from a (host, port, ...) tuple; host numeric (a "%scope" suffix allowed on IPv6). */
int
parse_address(PyObject *addr, int family, struct sockaddr_storage *ss, socklen_t *len)
{
    const char *host;
    int port;
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port) tuple");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL)
        return -1;
    port = (int)PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
            sin->sin_family = AF_INET;
            sin->sin_port = htons((uint16_t)port);
            *len = sizeof *sin;
            return 0;
        }
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        struct addrinfo hints, *found = NULL;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons((uint16_t)port);
            *len = sizeof *sin6;
            return 0;
        }
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET6;
        hints.ai_socktype = SOCK_DGRAM;
        hints.ai_flags = AI_NUMERICHOST;
        if (getaddrinfo(host, NULL, &hints, &found) == 0) {
            memcpy(sin6, found->ai_addr, sizeof *sin6);
            freeaddrinfo(found);
            sin6->sin6_port = htons((uint16_t)port);
            *len = sizeof *sin6;
            return 0;
        }
    }
    PyErr_Format(PyExc_OSError, "not a numeric address of the socket's family: %s", host);
    return -1;
}

static void
Receiver_dealloc(Receiver *self)
{
    PyMem_Free(self->buffers);
    PyMem_Free(self->headers);
    PyMem_Free(self->vectors);
    PyMem_Free(self->addresses);
    PyMem_Free(self->answers);
    PyMem_Free(self->answer_headers);
    PyMem_Free(self->answer_vectors);
    sends_free(self->sends);
    if (self->cache != NULL) {
        for (int i = 0; i < ADDRESS_CACHE; i++)
            Py_XDECREF(self->cache[i].value);
        PyMem_Free(self->cache);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Receiver_init(Receiver *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"count", "size", NULL};
    int count = 64;
    Py_ssize_t size = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|in", keywords, &count, &size))
        return -1;
    if (count < 1 || count > MAX_BATCH || size < 1 || size > 65536) {
        PyErr_Format(PyExc_ValueError, "count must be 1-%d and size 1-65536", MAX_BATCH);
        return -1;
    }
    if (self->buffers != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver already initialised");
        return -1;
    }
    self->count = (unsigned int)count;
    self->size = (size_t)size;
    self->buffers = PyMem_Malloc((size_t)count * (size_t)size);
    self->headers = PyMem_Calloc((size_t)count, sizeof(struct mmsghdr));
    self->vectors = PyMem_Calloc((size_t)count, sizeof(struct iovec));
    self->addresses = PyMem_Calloc((size_t)count, sizeof(struct sockaddr_storage));
    self->cache = PyMem_Calloc(ADDRESS_CACHE, sizeof(CachedAddress));
    self->sends = sends_new();
    if (!self->buffers || !self->headers || !self->vectors || !self->addresses || !self->cache || !self->sends) {
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned int i = 0; i < self->count; i++) {
        self->vectors[i].iov_base = self->buffers + (size_t)i * self->size;
        self->vectors[i].iov_len = self->size;
        self->headers[i].msg_hdr.msg_iov = &self->vectors[i];
        self->headers[i].msg_hdr.msg_iovlen = 1;
        self->headers[i].msg_hdr.msg_name = &self->addresses[i];
    }
    return 0;
}

PyDoc_STRVAR(Receiver_recv_doc,
"recv(fd) -> list of (bytes, (host, port))\n\n"
"The datagrams waiting on the non-blocking socket fd, at most count, in one\n"
"recvmmsg; [] when there are none. ICMP errors pending on the socket\n"
"(ECONNREFUSED) are cleared and skipped; other errors raise OSError.");

/* recvmmsg into the buffers: how many datagrams came (0: none), or -1 with an exception set. */
int
receive_batch(Receiver *self, int fd)
{
    int received, tries = 0;
    if (self->buffers == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Receiver not initialised");
        return -1;
    }
    for (unsigned int i = 0; i < self->count; i++)
        self->headers[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    do {
        received = recvmmsg(fd, self->headers, self->count, MSG_DONTWAIT, NULL);
    } while (received < 0 && (errno == EINTR || errno == ECONNREFUSED) && ++tries < 4);
    if (received < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNREFUSED)
            return 0;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->received += (unsigned long)received;
    return received;
}

/* The i-th datagram of the batch as (bytes, (host, port)). */
PyObject *
datagram_item(Receiver *self, int i)
{
    PyObject *data, *addr, *item;
    data = PyBytes_FromStringAndSize(self->vectors[i].iov_base, self->headers[i].msg_len);
    if (data == NULL)
        return NULL;
    addr = cached_address(self->cache, &self->addresses[i]);
    if (addr == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    item = PyTuple_Pack(2, data, addr);
    Py_DECREF(data);
    Py_DECREF(addr);
    return item;
}

/* sendmmsg count prepared headers; a datagram the kernel refuses is dropped. Returns how many it took. */
Py_ssize_t
send_prepared(int fd, struct mmsghdr *headers, int count)
{
    int offset = 0, result;
    Py_ssize_t sent = 0;
    while (offset < count) {
        result = sendmmsg(fd, headers + offset, (unsigned int)(count - offset), MSG_DONTWAIT);
        if (result > 0) {
            sent += result;
            offset += result;
        } else if (result < 0 && errno == EINTR) {
            continue;
        } else {
            offset++;  /* refused: drop this datagram, send the rest */
        }
    }
    return sent;
}

static PyObject *
Receiver_recv(Receiver *self, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    int received;
    PyObject *result;
    if (fd < 0)
        return NULL;
    received = receive_batch(self, fd);
    if (received < 0)
        return NULL;
    result = PyList_New(received);
    if (result == NULL)
        return NULL;
    for (int i = 0; i < received; i++) {
        PyObject *item = datagram_item(self, i);
        if (item == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyList_SET_ITEM(result, i, item);
    }
    return result;
}

PyDoc_STRVAR(Receiver_recv_serving_doc,
"recv_serving(fd, tail, routes[, answer]) -> (received, answered, list of (bytes, (host, port)))\n\n"
"As recv, but what C can serve is served inside the batch. With tail\n"
"(bytes), the plain STUN Binding requests are answered (relay/_binding.c:\n"
"XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, then the encoded attributes in tail,\n"
"then FINGERPRINT when asked) and sent back from fd in one sendmmsg. With\n"
"routes (a client-facing socket's dict of client address -> Allocation),\n"
"ChannelData from a routed client is relayed to its peer as\n"
"Allocation.channel_to_peer would (relay/_route.c). With answer (not None),\n"
"a STUN request of a method other than Binding is given to answer(data,\n"
"(host, port)), which returns the response to send from fd (bytes), b\"\"\n"
"for none, or None to leave the datagram for Python; once one datagram is\n"
"left, the batch's later requests are left too, in order. Returns how many\n"
"datagrams were read, how many were answered, and the ones left for Python.");

/* Whether the datagram is a STUN request of a method other than Binding (RFC 8489 §5, §6): a TURN request. */
static int
turn_request(const unsigned char *data, size_t length)
{
    unsigned int type;
    if (length < 20 || data[0] >= 0x40)
        return 0;
    type = get16(data);
    return (type & 0x0110) == 0 && type != 0x0001;
}

/* Ask answer(data, addr) for the response to a TURN request and queue it on sends to fd's client at to.
 * What sends holds is sent first: the call may close a relay socket whose descriptor a queued datagram
 * names, and open another with the same number. 1: answered (b"": no answer), 0: for Python (None), -1: error. */
static int
answer_request(Sends *sends, int fd, const struct sockaddr_storage *to, socklen_t namelen, PyObject *answer,
               PyObject *data, PyObject *addr)
{
    PyObject *args[2] = {data, addr}, *response;
    int result = 1;
    sends_settle(sends);
    response = PyObject_Vectorcall(answer, args, 2, NULL);
    if (response == NULL)
        return -1;
    if (response == Py_None) {
        result = 0;
    } else if (!PyBytes_Check(response)) {
        PyErr_SetString(PyExc_TypeError, "answer must return bytes or None");
        result = -1;
    } else if (PyBytes_GET_SIZE(response) > 0) {
        size_t size = (size_t)PyBytes_GET_SIZE(response);
        memcpy(sends_add(sends, fd, to, namelen, size), PyBytes_AS_STRING(response), size);
    }
    Py_DECREF(response);
    return result;
}

/* The buffers recv_serving's Binding answers are written to, made on first use; -1 on error. */
static int
answer_buffers(Receiver *self)
{
    if (self->answers != NULL || self->buffers == NULL)
        return 0;
    self->answers = PyMem_Malloc((size_t)self->count * BINDING_ANSWER_BYTES);
    self->answer_headers = PyMem_Calloc(self->count, sizeof(struct mmsghdr));
    self->answer_vectors = PyMem_Calloc(self->count, sizeof(struct iovec));
    if (!self->answers || !self->answer_headers || !self->answer_vectors) {
        PyMem_Free(self->answers);
        PyMem_Free(self->answer_headers);
        PyMem_Free(self->answer_vectors);
        self->answers = NULL;
        self->answer_headers = NULL;
        self->answer_vectors = NULL;
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* One recvmmsg on a client-facing socket served: Binding answers sent, routed datagrams queued, TURN requests
 * answered through answer (unless None), the rest appended to rest as (bytes, addr); *answered grows by the
 * Binding answers. How many were read, or -1 on error. */
int
serve_batch(Receiver *self, int fd, PyObject *tail, PyObject *routes, PyObject *answer, PyObject *rest,
            int *answered)
{
    int received, count = 0, failed = 0;
    if (tail != Py_None && answer_buffers(self) < 0)
        return -1;
    received = receive_batch(self, fd);
    if (received < 0)
        return -1;
    for (int i = 0; i < received && !failed; i++) {
        const unsigned char *data = self->vectors[i].iov_base;
        size_t length = self->headers[i].msg_len, size = 0;
        PyObject *addr;
        int routed;
        if (tail != Py_None) {
            unsigned char *out = self->answers + (size_t)count * BINDING_ANSWER_BYTES;
            size = binding_answer(data, length, &self->addresses[i], (const unsigned char *)PyBytes_AS_STRING(tail),
                                  (size_t)PyBytes_GET_SIZE(tail), out, BINDING_ANSWER_BYTES);
            if (size > 0) {
                struct msghdr *header = &self->answer_headers[count].msg_hdr;
                self->answer_vectors[count].iov_base = out;
                self->answer_vectors[count].iov_len = size;
                header->msg_iov = &self->answer_vectors[count];
                header->msg_iovlen = 1;
                header->msg_name = &self->addresses[i];
                header->msg_namelen = self->headers[i].msg_hdr.msg_namelen;
                count++;
                continue;
            }
        }
        addr = cached_address(self->cache, &self->addresses[i]);
        routed = addr == NULL ? -1 : routes == Py_None ? 0 : route_from_client(self->sends, routes, addr, data, length);
        if (routed == 0) {
            PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)length);
            if (bytes == NULL)
                routed = -1;
            else if (answer != Py_None && PyList_GET_SIZE(rest) == 0 && turn_request(data, length))
                routed = answer_request(self->sends, fd, &self->addresses[i], self->headers[i].msg_hdr.msg_namelen,
                                        answer, bytes, addr);
            if (routed == 0) {
                PyObject *item = PyTuple_Pack(2, bytes, addr);
                routed = item == NULL || PyList_Append(rest, item) < 0 ? -1 : 0;
                Py_XDECREF(item);
            }
            Py_XDECREF(bytes);
        }
        Py_XDECREF(addr);
        failed = routed < 0;
    }
    if (count > 0)
        send_prepared(fd, self->answer_headers, count);
    *answered += count;
    return failed ? -1 : received;
}

static PyObject *
Receiver_recv_serving(Receiver *self, PyObject *args)
{
    PyObject *fdobj, *tail, *routes, *answer = Py_None, *rest;
    int fd, received, answered = 0;
    if (!PyArg_ParseTuple(args, "OOO|O", &fdobj, &tail, &routes, &answer))
        return NULL;
    if ((tail != Py_None && !PyBytes_Check(tail)) || (routes != Py_None && !PyDict_Check(routes))
        || (answer != Py_None && !PyCallable_Check(answer))) {
        PyErr_SetString(PyExc_TypeError, "tail must be bytes or None, routes a dict or None, answer callable or None");
        return NULL;
    }
    fd = PyObject_AsFileDescriptor(fdobj);
    if (fd < 0)
        return NULL;
    rest = PyList_New(0);
    if (rest == NULL)
        return NULL;
    received = serve_batch(self, fd, tail, routes, answer, rest, &answered);
    sends_settle(self->sends);
    if (received < 0) {
        Py_DECREF(rest);
        return NULL;
    }
    return Py_BuildValue("(iiN)", received, answered, rest);
}

static PyMethodDef Receiver_methods[] = {
    {"recv", (PyCFunction)Receiver_recv, METH_O, Receiver_recv_doc},
    {"recv_serving", (PyCFunction)Receiver_recv_serving, METH_VARARGS, Receiver_recv_serving_doc},
    {"poll_relays", (PyCFunction)Receiver_poll_relays, METH_VARARGS, Receiver_poll_relays_doc},
    {"stay", (PyCFunction)Receiver_stay, METH_VARARGS, Receiver_stay_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Receiver_members[] = {
    {"holds", T_ULONGLONG, offsetof(Receiver, moderation.holds), READONLY,
     "Holds a stay slept before a wait to gather a batch (relay/_stay.c), ever."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._mmsg.Receiver",
    .tp_doc = PyDoc_STR("Receiver(count=64, size=65536): buffers for reading up to count datagrams per call."),
    .tp_basicsize = sizeof(Receiver),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Receiver_init,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_methods = Receiver_methods,
    .tp_members = Receiver_members,
};

PyDoc_STRVAR(send_doc,
"send(fd, family, datagrams) -> int\n\n"
"Send a list of (bytes, (host, port)) on the socket fd of the given address\n"
"family, 64 per sendmmsg. UDP may drop: a datagram the kernel refuses (full\n"
"buffer, pending ICMP error) or whose host is not a numeric address of the\n"
"family is skipped, not raised. Returns how many the kernel took.");

static PyObject *
mmsg_send(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *fdobj, *datagrams;
    int family, fd;
    struct mmsghdr headers[64];
    struct iovec vectors[64];
    struct sockaddr_storage addresses[64];
    Py_buffer views[64];
    Py_ssize_t done = 0, sent = 0;

    if (!PyArg_ParseTuple(args, "OiO!", &fdobj, &family, &PyList_Type, &datagrams))
        return NULL;
    fd = PyObject_AsFileDescriptor(fdobj);
    if (fd < 0)
        return NULL;
    /* The size is read again after each call: the GIL was released meanwhile. */
    while (done < PyList_GET_SIZE(datagrams)) {
        int chunk = 0;
        memset(headers, 0, sizeof headers);
        while (chunk < 64 && done + chunk < PyList_GET_SIZE(datagrams)) {
            PyObject *item = PyList_GET_ITEM(datagrams, done + chunk);
            socklen_t len;
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
                PyErr_SetString(PyExc_TypeError, "each datagram must be a (data, address) tuple");
                goto fail;
            }
            if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &views[chunk], PyBUF_SIMPLE) < 0)
                goto fail;
            if (parse_address(PyTuple_GET_ITEM(item, 1), family, &addresses[chunk], &len) < 0) {
                PyBuffer_Release(&views[chunk]);
                if (!PyErr_ExceptionMatches(PyExc_OSError) && !PyErr_ExceptionMatches(PyExc_OverflowError))
                    goto fail;
                PyErr_Clear();  /* an unusable address or port, as sendto refuses: drop it, send the rest */
                done++;
                continue;
            }
            vectors[chunk].iov_base = views[chunk].buf;
            vectors[chunk].iov_len = (size_t)views[chunk].len;
            headers[chunk].msg_hdr.msg_iov = &vectors[chunk];
            headers[chunk].msg_hdr.msg_iovlen = 1;
            headers[chunk].msg_hdr.msg_name = &addresses[chunk];
            headers[chunk].msg_hdr.msg_namelen = len;
            chunk++;
        }
        sent += send_prepared(fd, headers, chunk);
        for (int i = 0; i < chunk; i++)
            PyBuffer_Release(&views[i]);
        done += chunk;
        continue;
fail:
        for (int i = 0; i < chunk; i++)
            PyBuffer_Release(&views[i]);
        return NULL;
    }
    return PyLong_FromSsize_t(sent);
}

PyDoc_STRVAR(answer_binding_doc,
"answer_binding(data, (host, port), tail) -> bytes or None\n\n"
"What recv_serving sends for the datagram data from (host, port), or None\n"
"when the fast path leaves it to Python (relay/_binding.c).");

static PyObject *
mmsg_answer_binding(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer data;
    PyObject *addr, *tail, *host;
    struct sockaddr_storage source;
    socklen_t length;
    unsigned char out[BINDING_ANSWER_BYTES];
    size_t size;
    int family;
    if (!PyArg_ParseTuple(args, "y*OO!", &data, &addr, &PyBytes_Type, &tail))
        return NULL;
    host = PyTuple_Check(addr) && PyTuple_GET_SIZE(addr) >= 2 ? PyTuple_GET_ITEM(addr, 0) : NULL;
    family = host != NULL && PyUnicode_Check(host) && PyUnicode_FindChar(host, ':', 0, PyUnicode_GET_LENGTH(host), 1) >= 0
        ? AF_INET6 : AF_INET;
    if (parse_address(addr, family, &source, &length) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    size = binding_answer(data.buf, (size_t)data.len, &source, (const unsigned char *)PyBytes_AS_STRING(tail),
                          (size_t)PyBytes_GET_SIZE(tail), out, sizeof out);
    PyBuffer_Release(&data);
    if (size == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)size);
}

static PyMethodDef module_methods[] = {
    {"send", mmsg_send, METH_VARARGS, send_doc},
    {"answer_binding", mmsg_answer_binding, METH_VARARGS, answer_binding_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mmsg_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay._mmsg",
    .m_doc = PyDoc_STR("Batched UDP reads and writes (recvmmsg, sendmmsg) for the relay data path."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__mmsg(void)
{
    PyObject *module;
    if (PyType_Ready(&ReceiverType) < 0)
        return NULL;
    module = PyModule_Create(&mmsg_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ReceiverType);
    if (route_init(module) < 0 || PyModule_AddObject(module, "Receiver", (PyObject *)&ReceiverType) < 0) {
        Py_DECREF(&ReceiverType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
