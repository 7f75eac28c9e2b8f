/* The relay's routed datagrams, relayed in C inside the read pass (RFC 8656 §11, §12).
 *
 * Python owns every table: C reads the dicts and attributes the Python data
 * path reads (relay/allocation.py), bumps the same counters, and where
 * anything is not plain it hands the datagram to Python, which then does
 * exactly what it always did. What C relays:
 *
 * - client -> peer: ChannelData from a client address in a client-facing
 *   socket's routes, on a bound channel whose permission is installed, sent
 *   from the allocation's relay socket to the peer (Allocation.channel_to_peer);
 *   a Send indication to an IPv4 peer whose IP holds a permission likewise
 *   (Allocation.send_indication, the walk of relay/_sendwalk.h);
 * - peer -> client: a datagram on a relay socket from a permitted peer,
 *   wrapped as ChannelData when the peer has a channel, else as a Data
 *   indication, sent to the UDP client (Allocation.from_peer).
 *
 * Handed to Python: an allocation with a bandwidth limit (its TokenBucket),
 * a stream client, a write or send that is not an Outbox's (see recognize),
 * a scoped IPv6 peer, a Send indication that is malformed or to an IPv6
 * peer or a host of the relay's own, anything not found in the tables.
 * Dropped as Python
 * drops them: ChannelData that is short, longer than its datagram or on an
 * unbound channel or a channel without permission, and data from a peer
 * without permission.
 *
 * What C relays queues here (copied, so the receive buffers can be reused)
 * and leaves in one sendmmsg per socket when the pass's C part ends; its
 * counts go to the allocations' counters, once per allocation, before any
 * Python runs (sends_settle): after a poll_relays or recv_serving call,
 * before a TURN request is handed to Python, when a stay ends.
 */
#include "_mmsg.h"
#include "_sendwalk.h"

#include <structmember.h>

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>

#define SENDS_ITEMS 1024
#define SENDS_BYTES (1024 * 1024)
#define POLL_EVENTS 256
#define COUNTED 256
#define COUNTED_PROBES 8
#define PARSED 64

enum { ERROR = -1, TO_PYTHON = 0, ROUTED = 1 };

typedef struct {
    int fd;
    socklen_t namelen;
    struct sockaddr_storage to;
    size_t offset, length;
} Queued;

/* What C relayed for one allocation and direction since the counters were last told (counts_flush). */
typedef struct {
    PyObject *allocation;
    int inward;  /* packets_in, bytes_in: from a peer; else packets_out, bytes_out */
    Py_ssize_t packets, bytes;
} Counted;

/* A destination (host, port) tuple parsed for a family: tuples are immutable, and the entry holds a reference,
 * so the same object always parses the same. */
typedef struct {
    PyObject *addr;
    int family;
    socklen_t namelen;
    struct sockaddr_storage to;
} Parsed;

struct Sends {
    unsigned char *bytes;
    size_t used;
    Queued *items;
    int count;
    char *taken;
    struct mmsghdr headers[64];
    struct iovec vectors[64];
    Counted counted[COUNTED];          /* by the allocation's address: count */
    unsigned short used_counted[COUNTED];  /* the entries in use, in the order they were taken */
    int counts;
    Parsed parsed[PARSED];  /* by the tuple's address */
};

/* The first fields of CPython's socket object (PySocketSockObject, Modules/socketmodule.h), read instead of a
 * fileno() call and a family attribute per datagram. socket_type is _socket.socket once route_init has checked
 * the layout against a socket's fileno() and family; else NULL, and the calls are made. */
typedef struct {
    PyObject_HEAD
    int fd;
    int family;
    int type;
} SocketHead;

static PyTypeObject *socket_type;

/* Outbox.write and the Sender class (relay/datagrams.py): the writes C may do itself. */
static PyObject *outbox_write, *sender_type;
static PyObject *s_allocation, *s_write, *s_fileno;

/* An attribute read per datagram: read in place when its object's type holds it as a plain __slots__ member
 * (Allocation, Outbox, Sender), else through PyObject_GetAttr. A member descriptor is a data descriptor, so with
 * the generic getattr nothing else can answer for it, and the slot holds what PyObject_GetAttr would return. The
 * type's version tag changes whenever it or a base is modified, and the member is looked up again. */
typedef struct {
    PyObject *name;
    PyTypeObject *type;    /* a reference: its address cannot be reused while kept */
    unsigned int version;  /* type's tp_version_tag when looked up; 0: look up each time */
    Py_ssize_t offset;     /* in an instance of type; 0: not a plain member there */
} Slot;

static Slot a_bucket, a_channels, a_permissions, a_own_hosts, a_peer_channels, a_relays, a_send, a_outbox, a_addr,
    a_socket, a_family, a_packets_out, a_bytes_out, a_packets_in, a_bytes_in;
static uint64_t random_state[2];

static int add_to(PyObject *obj, Slot *name, Py_ssize_t n);

/* Add what was counted to the allocations' counters (Allocation.packets_in and the others), which Python reads
 * only when it runs next (sends_settle); an exception pending before is kept, one raised here is reported as
 * unraisable. */
static void
counts_flush(Sends *sends)
{
    PyObject *type, *value, *traceback;
    if (sends->counts == 0)
        return;
    PyErr_Fetch(&type, &value, &traceback);
    for (int i = 0; i < sends->counts; i++) {
        Counted *c = &sends->counted[sends->used_counted[i]];
        if (add_to(c->allocation, c->inward ? &a_packets_in : &a_packets_out, c->packets) < 0
            || add_to(c->allocation, c->inward ? &a_bytes_in : &a_bytes_out, c->bytes) < 0)
            PyErr_WriteUnraisable(c->allocation);
        Py_CLEAR(c->allocation);
    }
    sends->counts = 0;
    PyErr_Restore(type, value, traceback);
}

/* Count one relayed datagram of bytes for allocation, told to its counters before Python runs next: the entries
 * are found by the allocation's address, probing COUNTED_PROBES on, and all told at once when none is free. */
static void
count(Sends *sends, PyObject *allocation, int inward, size_t bytes)
{
    size_t start = (((uintptr_t)allocation >> 4) * 2 + (size_t)inward) % COUNTED;
    Counted *c = NULL;
    for (size_t probe = 0; probe < COUNTED_PROBES; probe++) {
        Counted *entry = &sends->counted[(start + probe) % COUNTED];
        if (entry->allocation == NULL || (entry->allocation == allocation && entry->inward == inward)) {
            c = entry;
            break;
        }
    }
    if (c == NULL) {
        counts_flush(sends);
        c = &sends->counted[start];
    }
    if (c->allocation == NULL) {
        c->allocation = Py_NewRef(allocation);
        c->inward = inward;
        c->packets = c->bytes = 0;
        sends->used_counted[sends->counts++] = (unsigned short)(c - sends->counted);
    }
    c->packets++;
    c->bytes += (Py_ssize_t)bytes;
}

Sends *
sends_new(void)
{
    Sends *sends = PyMem_Calloc(1, sizeof *sends);
    if (sends == NULL)
        return NULL;
    sends->bytes = PyMem_Malloc(SENDS_BYTES);
    sends->items = PyMem_Calloc(SENDS_ITEMS, sizeof(Queued));
    sends->taken = PyMem_Calloc(SENDS_ITEMS, 1);
    if (!sends->bytes || !sends->items || !sends->taken) {
        sends_free(sends);
        return NULL;
    }
    return sends;
}

void
sends_free(Sends *sends)
{
    if (sends == NULL)
        return;
    counts_flush(sends);
    for (int i = 0; i < PARSED; i++)
        Py_XDECREF(sends->parsed[i].addr);
    PyMem_Free(sends->bytes);
    PyMem_Free(sends->items);
    PyMem_Free(sends->taken);
    PyMem_Free(sends);
}

/* Send what is queued, one sendmmsg per socket (64 datagrams a call), in the order it was queued. */
void
sends_flush(Sends *sends)
{
    memset(sends->taken, 0, (size_t)sends->count);
    for (int i = 0; i < sends->count; i++) {
        int fd = sends->items[i].fd, n = 0;
        if (sends->taken[i])
            continue;
        for (int j = i; j < sends->count; j++) {
            Queued *item = &sends->items[j];
            if (sends->taken[j] || item->fd != fd)
                continue;
            sends->taken[j] = 1;
            memset(&sends->headers[n], 0, sizeof sends->headers[n]);
            sends->vectors[n].iov_base = sends->bytes + item->offset;
            sends->vectors[n].iov_len = item->length;
            sends->headers[n].msg_hdr.msg_iov = &sends->vectors[n];
            sends->headers[n].msg_hdr.msg_iovlen = 1;
            sends->headers[n].msg_hdr.msg_name = &item->to;
            sends->headers[n].msg_hdr.msg_namelen = item->namelen;
            if (++n == 64) {
                send_prepared(fd, sends->headers, n);
                n = 0;
            }
        }
        if (n > 0)
            send_prepared(fd, sends->headers, n);
    }
    sends->count = 0;
    sends->used = 0;
}

/* Send what is queued and tell the counters: Python, which reads them, runs next. */
void
sends_settle(Sends *sends)
{
    sends_flush(sends);
    counts_flush(sends);
}

unsigned char *
sends_add(Sends *sends, int fd, const struct sockaddr_storage *to, socklen_t namelen, size_t size)
{
    Queued *item;
    if (sends->count == SENDS_ITEMS || sends->used + size > SENDS_BYTES)
        sends_flush(sends);
    item = &sends->items[sends->count++];
    item->fd = fd;
    item->namelen = namelen;
    memcpy(&item->to, to, namelen);
    item->offset = sends->used;
    item->length = size;
    sends->used += (size + 7) & ~(size_t)7;
    return sends->bytes + item->offset;
}

static void
slot_resolve(Slot *slot, PyTypeObject *type)
{
    PyObject *descr = _PyType_Lookup(type, slot->name);  /* borrowed; gives the type a version tag */
    Py_XSETREF(slot->type, (PyTypeObject *)Py_NewRef(type));
    slot->version = type->tp_version_tag;
    slot->offset = 0;
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) && type->tp_getattro == PyObject_GenericGetAttr
        && PyType_IsSubtype(type, PyDescr_TYPE(descr))) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & PY_AUDIT_READ))
            slot->offset = member->offset;
    }
}

/* obj's attribute slot->name: a new reference, or NULL with an exception, as PyObject_GetAttr. */
static PyObject *
slot_get(PyObject *obj, Slot *slot)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (type != slot->type || type->tp_version_tag != slot->version || slot->version == 0)
        slot_resolve(slot, type);
    if (slot->offset > 0) {
        PyObject *value = *(PyObject **)((char *)obj + slot->offset);
        if (value != NULL)
            return Py_NewRef(value);
    }
    return PyObject_GetAttr(obj, slot->name);
}

/* obj.name += n */
static int
add_to(PyObject *obj, Slot *name, Py_ssize_t n)
{
    PyObject *old = slot_get(obj, name), *amount, *sum;
    int result;
    if (old == NULL)
        return -1;
    amount = PyLong_FromSsize_t(n);
    sum = amount == NULL ? NULL : PyNumber_Add(old, amount);
    Py_DECREF(old);
    Py_XDECREF(amount);
    if (sum == NULL)
        return -1;
    result = PyObject_SetAttr(obj, name->name, sum);
    Py_DECREF(sum);
    return result;
}

/* 1 when obj.name is None, 0 when not or when obj has no such attribute, -1 on error. */
static int
attribute_is_none(PyObject *obj, Slot *name)
{
    PyObject *value = slot_get(obj, name);
    if (value == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(value);
    return value == Py_None;
}

/* 1 when key is in the dict obj.name, 0 when not, -1 on error. */
static int
attribute_has(PyObject *obj, Slot *name, PyObject *key)
{
    PyObject *table = slot_get(obj, name);
    int found;
    if (table == NULL)
        return -1;
    found = PyDict_Check(table) ? PyDict_Contains(table, key) : PySequence_Contains(table, key);
    Py_DECREF(table);
    return found;
}

/* An Outbox's socket descriptor (-1: closed) and family; -1 on error. */
static int
outbox_target(PyObject *outbox, int *fd, int *family)
{
    PyObject *sock = slot_get(outbox, &a_socket), *value;
    if (sock == NULL)
        return -1;
    if (socket_type != NULL && PyObject_TypeCheck(sock, socket_type)) {
        *fd = ((SocketHead *)sock)->fd;
        *family = ((SocketHead *)sock)->family;
        Py_DECREF(sock);
        return 0;
    }
    value = PyObject_CallMethodNoArgs(sock, s_fileno);
    Py_DECREF(sock);
    if (value == NULL)
        return -1;
    *fd = (int)PyLong_AsLong(value);
    Py_DECREF(value);
    if (*fd == -1 && PyErr_Occurred())
        return -1;
    value = slot_get(outbox, &a_family);
    if (value == NULL)
        return -1;
    *family = (int)PyLong_AsLong(value);
    Py_DECREF(value);
    return *family == -1 && PyErr_Occurred() ? -1 : 0;
}

/* parse_address through the sends' cache of parsed tuples. */
static int
parse_cached(Sends *sends, PyObject *addr, int family, struct sockaddr_storage *to, socklen_t *namelen)
{
    Parsed *entry = &sends->parsed[((uintptr_t)addr >> 4) % PARSED];
    if (entry->addr != addr || entry->family != family) {
        if (parse_address(addr, family, to, namelen) < 0)
            return -1;
        Py_XSETREF(entry->addr, Py_NewRef(addr));
        entry->family = family;
        entry->namelen = *namelen;
        memcpy(&entry->to, to, *namelen);
        return 0;
    }
    memcpy(to, &entry->to, entry->namelen);
    *namelen = entry->namelen;
    return 0;
}

/* Where the Outbox sends to addr: 1 with *fd (or -1: the datagram dies, as Outbox.flush and sendmmsg drop it)
 * and to filled, -1 on error. */
static int
destination(Sends *sends, PyObject *outbox, PyObject *addr, int *fd, struct sockaddr_storage *to,
            socklen_t *namelen)
{
    int family;
    if (outbox_target(outbox, fd, &family) < 0)
        return -1;
    if (*fd >= 0 && parse_cached(sends, addr, family, to, namelen) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_OSError) && !PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        *fd = -1;
    }
    return 1;
}

/* The channel numbers' int objects (RFC 8656 §12: 0x4000 through 0x4FFF), made on first use and kept. */
static PyObject *channel_numbers[0x1000];

/* number as an int: a new reference, or NULL with an exception. */
static PyObject *
channel_number(unsigned int number)
{
    PyObject **kept;
    if (number < 0x4000 || number > 0x4FFF)
        return PyLong_FromLong((long)number);
    kept = &channel_numbers[number - 0x4000];
    if (*kept == NULL)
        *kept = PyLong_FromLong((long)number);
    return Py_XNewRef(*kept);
}

/* ChannelData from the client of allocation (Allocation.channel_to_peer). */
static int
channel_to_peer(Sends *sends, PyObject *allocation, const unsigned char *data, size_t size)
{
    PyObject *channels, *number, *bound, *write;
    struct sockaddr_storage to;
    socklen_t namelen;
    unsigned int length;
    int result = ROUTED, fd;

    if (size < 4)
        return ROUTED;  /* dropped */
    length = (unsigned int)data[2] << 8 | data[3];
    channels = slot_get(allocation, &a_channels);
    number = channel_number((unsigned int)data[0] << 8 | data[1]);
    if (channels == NULL || number == NULL || !PyDict_Check(channels)) {
        result = channels != NULL && number != NULL ? TO_PYTHON : ERROR;
        goto done;
    }
    bound = PyDict_GetItemWithError(channels, number);
    if (bound == NULL) {
        result = PyErr_Occurred() ? ERROR : ROUTED;  /* no such channel: dropped */
        goto done;
    }
    if (length > size - 4)
        goto done;  /* dropped */
    if (!PyTuple_Check(bound) || PyTuple_GET_SIZE(bound) != 3) {
        result = TO_PYTHON;
        goto done;
    }
    Py_INCREF(bound);
    write = PyTuple_GET_ITEM(bound, 1);
    if (!PyMethod_Check(write) || PyMethod_GET_FUNCTION(write) != outbox_write) {
        result = TO_PYTHON;  /* not a relay socket's Outbox */
    } else {
        int permitted = attribute_has(allocation, &a_permissions, PyTuple_GET_ITEM(bound, 2));
        if (permitted <= 0)
            result = permitted < 0 ? ERROR : ROUTED;  /* no permission: dropped */
        else if (destination(sends, PyMethod_GET_SELF(write), PyTuple_GET_ITEM(bound, 0), &fd, &to, &namelen) < 0)
            result = ERROR;
        else {
            count(sends, allocation, 0, length);
            if (fd >= 0)
                memcpy(sends_add(sends, fd, &to, namelen, length), data + 4, length);
        }
    }
    Py_DECREF(bound);
done:
    Py_XDECREF(channels);
    Py_XDECREF(number);
    return result;
}

/* A Send indication from the client of allocation to an IPv4 peer whose IP holds a permission
 * (Allocation.send_indication); the rest (IPv6, hosts of the relay's own, malformed) is Python's. */
static int
send_to_peer(Sends *sends, PyObject *allocation, const unsigned char *data, size_t size)
{
    const unsigned char *value, *payload;
    size_t value_length = 0, payload_length = 0;
    struct sockaddr_in to;
    char text[16];
    PyObject *host, *relays = NULL, *family = NULL, *relay = NULL, *write = NULL;
    int result = TO_PYTHON, permitted, fd, socket_family;

    if (!walk_send(data, size, &value, &value_length, &payload, &payload_length) || value_length != 8
        || value[1] != 0x01)
        return TO_PYTHON;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons((uint16_t)(get16(value + 2) ^ 0x2112));
    to.sin_addr.s_addr = htonl(get32(value + 4) ^ STUN_MAGIC_COOKIE);
    host = PyUnicode_FromStringAndSize(text, format_ipv4(&to.sin_addr, text));
    if (host == NULL)
        return ERROR;
    permitted = attribute_has(allocation, &a_permissions, host);
    if (permitted == 0) {
        /* an endpoint of the relay's own already allowed (Allocation._decide_endpoint) */
        PyObject *endpoint = Py_BuildValue("(Oi)", host, (int)ntohs(to.sin_port));
        permitted = endpoint == NULL ? ERROR : attribute_has(allocation, &a_permissions, endpoint);
        Py_XDECREF(endpoint);
    }
    Py_DECREF(host);
    if (permitted <= 0)
        return permitted;  /* a host of the relay's own not yet decided, or none: Python decides */
    relays = slot_get(allocation, &a_relays);
    family = PyLong_FromLong(4);
    if (relays == NULL || family == NULL || !PyDict_Check(relays)) {
        result = relays != NULL && family != NULL ? TO_PYTHON : ERROR;
        goto done;
    }
    relay = PyDict_GetItemWithError(relays, family);
    if (relay == NULL) {
        result = PyErr_Occurred() ? ERROR : TO_PYTHON;
        goto done;
    }
    write = PyObject_GetAttr(relay, s_write);
    if (write == NULL) {
        result = ERROR;
        goto done;
    }
    if (!PyMethod_Check(write) || PyMethod_GET_FUNCTION(write) != outbox_write)
        goto done;
    if (outbox_target(PyMethod_GET_SELF(write), &fd, &socket_family) < 0) {
        result = ERROR;
        goto done;
    }
    if (socket_family != AF_INET)
        goto done;
    result = ROUTED;
    count(sends, allocation, 0, payload_length);
    if (fd >= 0)
        memcpy(sends_add(sends, fd, (const struct sockaddr_storage *)&to, sizeof to, payload_length), payload,
               payload_length);
done:
    Py_XDECREF(relays);
    Py_XDECREF(family);
    Py_XDECREF(write);
    return result;
}

/* An error while routing one datagram (an odd table entry: the checks come before any counter moves)
 * leaves it to Python, whose own path meets the error and logs it; only running out of memory fails. */
static int
for_python_on_error(int result)
{
    if (result != ERROR || PyErr_ExceptionMatches(PyExc_MemoryError))
        return result;
    PyErr_Clear();
    return TO_PYTHON;
}

int
route_from_client(Sends *sends, PyObject *routes, PyObject *addr, const unsigned char *data, size_t size)
{
    PyObject *allocation;
    int result, channel;

    if (size == 0 || outbox_write == NULL)
        return TO_PYTHON;
    channel = data[0] >= 0x40 && data[0] < 0x80;
    if (!channel && !(size >= 2 && data[0] == 0 && data[1] == 0x16))
        return TO_PYTHON;
    allocation = PyDict_GetItemWithError(routes, addr);
    if (allocation == NULL)
        return PyErr_Occurred() ? ERROR : TO_PYTHON;
    Py_INCREF(allocation);
    result = attribute_is_none(allocation, &a_bucket);  /* a bandwidth limit: Python takes from the bucket */
    if (result > 0)
        result = channel ? channel_to_peer(sends, allocation, data, size) : send_to_peer(sends, allocation, data, size);
    Py_DECREF(allocation);
    return for_python_on_error(result);
}

static uint64_t
next_random(void)
{
    uint64_t x = random_state[0], y = random_state[1];
    random_state[0] = y;
    x ^= x << 23;
    random_state[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return random_state[1] + y;
}

/* XOR-PEER-ADDRESS for source with transaction id tid, written at out; its length (12 or 24), 0 if not IP. */
static size_t
xor_peer_attribute(const struct sockaddr_storage *source, const unsigned char *tid, unsigned char *out)
{
    static const unsigned char cookie[4] = {0x21, 0x12, 0xA4, 0x42};
    const unsigned char *ip;
    size_t ip_length;
    unsigned int port;
    if (source->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)source;
        ip = (const unsigned char *)&sin->sin_addr;
        ip_length = 4;
        port = ntohs(sin->sin_port);
    } else if (source->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)source;
        ip = (const unsigned char *)&sin6->sin6_addr;
        ip_length = 16;
        port = ntohs(sin6->sin6_port);
    } else {
        return 0;
    }
    out[0] = 0x00;
    out[1] = 0x12;  /* XOR-PEER-ADDRESS */
    out[2] = 0;
    out[3] = (unsigned char)(4 + ip_length);
    out[4] = 0;
    out[5] = ip_length == 4 ? 0x01 : 0x02;
    out[6] = (unsigned char)((port ^ 0x2112) >> 8);
    out[7] = (unsigned char)((port ^ 0x2112) & 0xFF);
    for (size_t i = 0; i < ip_length; i++)
        out[8 + i] = ip[i] ^ (i < 4 ? cookie[i] : tid[i - 4]);
    return 8 + ip_length;
}

/* The datagram data from peer (source) on a relay socket of allocation, to its client. */
static int
peer_to_client(Sends *sends, PyObject *allocation, PyObject *peer, const struct sockaddr_storage *source,
                const unsigned char *data, size_t n)
{
    PyObject *send = NULL, *outbox = NULL, *client = NULL, *channels = NULL, *number;
    struct sockaddr_storage to;
    socklen_t namelen;
    int result = TO_PYTHON, permitted, fd;
    long channel = -1;

    if (allocation == Py_None || sender_type == NULL || n > 0xFFFF)
        return TO_PYTHON;
    if (source->ss_family == AF_INET6 && ((const struct sockaddr_in6 *)source)->sin6_scope_id != 0)
        return TO_PYTHON;
    Py_INCREF(allocation);
    send = slot_get(allocation, &a_send);
    if (send == NULL) {
        /* not an Allocation: its from_peer decides */
        result = PyErr_ExceptionMatches(PyExc_AttributeError) ? (PyErr_Clear(), TO_PYTHON) : ERROR;
        goto done;
    }
    if ((PyObject *)Py_TYPE(send) != sender_type)
        goto done;  /* a stream client, or a sender C does not know */
    result = attribute_is_none(allocation, &a_bucket);
    if (result <= 0)
        goto done;
    permitted = attribute_has(allocation, &a_permissions, PyTuple_GET_ITEM(peer, 0));
    if (permitted == 0)
        permitted = attribute_has(allocation, &a_own_hosts, PyTuple_GET_ITEM(peer, 0));
    if (permitted <= 0) {
        result = permitted < 0 ? ERROR : ROUTED;  /* no permission: dropped */
        goto done;
    }
    channels = slot_get(allocation, &a_peer_channels);
    outbox = slot_get(send, &a_outbox);
    client = slot_get(send, &a_addr);
    if (channels == NULL || outbox == NULL || client == NULL || !PyDict_Check(channels)) {
        result = channels != NULL && outbox != NULL && client != NULL ? TO_PYTHON : ERROR;
        goto done;
    }
    number = PyDict_GetItemWithError(channels, peer);
    if (number != NULL) {
        channel = PyLong_AsLong(number);
        if (channel == -1 && PyErr_Occurred()) {
            result = ERROR;
            goto done;
        }
    } else if (PyErr_Occurred()) {
        result = ERROR;
        goto done;
    }
    if (channel < 0 && (source->ss_family == AF_INET ? 12 : 24) + 4 + n + (-n & 3) > 0xFFFF) {
        result = TO_PYTHON;  /* too large for a Data indication: Python's path decides */
        goto done;
    }
    if (destination(sends, outbox, client, &fd, &to, &namelen) < 0) {
        result = ERROR;
        goto done;
    }
    result = ROUTED;
    count(sends, allocation, 1, n);
    if (fd < 0) {
        /* the client's socket closed during the pass: the datagram dies with it */
    } else if (channel >= 0) {
        /* RFC 8656 §12.4: ChannelData over UDP needs no padding. */
        unsigned char *out = sends_add(sends, fd, &to, namelen, 4 + n);
        out[0] = (unsigned char)(channel >> 8);
        out[1] = (unsigned char)channel;
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
        memcpy(out + 4, data, n);
    } else {
        /* RFC 8656 §11.4: a Data indication, XOR-PEER-ADDRESS then DATA, padded. */
        unsigned char attribute[24], tid[12];
        uint64_t r0 = next_random(), r1 = next_random();
        size_t attribute_length, padding = -n & 3, body;  /* body fits 16 bits: checked above */
        unsigned char *out;
        memcpy(tid, &r0, 8);
        memcpy(tid + 8, &r1, 4);
        attribute_length = xor_peer_attribute(source, tid, attribute);
        body = attribute_length + 4 + n + padding;
        out = sends_add(sends, fd, &to, namelen, 20 + body);
        out[0] = 0x00;
        out[1] = 0x17;
        out[2] = (unsigned char)(body >> 8);
        out[3] = (unsigned char)body;
        out[4] = 0x21;
        out[5] = 0x12;
        out[6] = 0xA4;
        out[7] = 0x42;
        memcpy(out + 8, tid, 12);
        memcpy(out + 20, attribute, attribute_length);
        out += 20 + attribute_length;
        out[0] = 0x00;
        out[1] = 0x13;  /* DATA */
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
        memcpy(out + 4, data, n);
        memset(out + 4 + n, 0, padding);
    }
done:
    Py_XDECREF(send);
    Py_XDECREF(outbox);
    Py_XDECREF(client);
    Py_XDECREF(channels);
    Py_DECREF(allocation);
    return result;
}

static int
route_from_peer(Sends *sends, PyObject *allocation, PyObject *peer, const struct sockaddr_storage *source,
                const unsigned char *data, size_t n)
{
    return for_python_on_error(peer_to_client(sends, allocation, peer, source, data, n));
}

/* Append (a, b, c) to list; -1 on error. */
static int
append3(PyObject *list, PyObject *a, PyObject *b, PyObject *c)
{
    PyObject *item = PyTuple_Pack(3, a, b, c);
    int result = item == NULL ? -1 : PyList_Append(list, item);
    Py_XDECREF(item);
    return result;
}

const char Receiver_poll_relays_doc[] =
"poll_relays(epoll_fd, ports, batches) -> list of (port, data, addr)\n\n"
"One pass over the relay sockets: the ready descriptors of the epoll\n"
"epoll_fd (ports: descriptor -> RelaySocket), each read until empty or for\n"
"batches recvmmsg calls, what relay/_route.c can relay sent to the\n"
"clients. Returned for Python: (port, data, addr) for each datagram left\n"
"to port.handler; (port, None, None) for a port without an _allocation\n"
"attribute (a RelaySocket's, read without its property), to be read by\n"
"its doRead; (port, None, error) for a port whose read failed with the\n"
"OSError error.";

/* Append (who, None, the exception being raised) to rest, clearing it; -1 on error. */
static int
append_failure(PyObject *rest, PyObject *who)
{
    PyObject *type, *value, *traceback;
    int result;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    result = value == NULL ? -1 : append3(rest, who, Py_None, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return result;
}

/* Read one ready relay socket (port) as poll_relays does; -1 on error. */
static int
serve_relay(Receiver *self, int fd, PyObject *port, int batches, PyObject *rest)
{
    PyObject *allocation = PyObject_GetAttr(port, s_allocation);
    int result = 0;
    if (allocation == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return append3(rest, port, Py_None, Py_None);
    }
    for (int b = 0; b < batches && result == 0; b++) {
        int received = receive_batch(self, fd);
        if (received < 0) {
            result = append_failure(rest, port);
            break;
        }
        for (int i = 0; i < received && result == 0; i++) {
            const unsigned char *data = self->vectors[i].iov_base;
            size_t length = self->headers[i].msg_len;
            PyObject *addr = cached_address(self->cache, &self->addresses[i]);
            int routed = addr == NULL ? ERROR
                : route_from_peer(self->sends, allocation, addr, &self->addresses[i], data, length);
            if (routed == TO_PYTHON) {
                PyObject *bytes = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)length);
                routed = bytes == NULL || append3(rest, port, bytes, addr) < 0 ? ERROR : ROUTED;
                Py_XDECREF(bytes);
            }
            Py_XDECREF(addr);
            result = routed == ERROR ? -1 : 0;
        }
        if (received < (int)self->count)
            break;  /* the socket is empty */
    }
    Py_DECREF(allocation);
    return result;
}

/* poll_relays' pass with what is left for Python appended to rest; what C relays is queued on sends, not
 * yet sent (sends_flush). -1 on error. */
int
poll_relays_into(Receiver *self, int epoll_fd, PyObject *ports, int batches, PyObject *rest)
{
    struct epoll_event events[POLL_EVENTS];
    int ready, failed = 0;
    do {
        ready = epoll_wait(epoll_fd, events, POLL_EVENTS, 0);  /* no wait: the GIL stays held */
    } while (ready < 0 && errno == EINTR);
    if (ready < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (int e = 0; e < ready && !failed; e++) {
        PyObject *key = PyLong_FromLong(events[e].data.fd), *port;
        port = key == NULL ? NULL : PyDict_GetItemWithError(ports, key);
        Py_XDECREF(key);
        if (port == NULL) {
            failed = PyErr_Occurred() != NULL;
            continue;
        }
        Py_INCREF(port);
        failed = serve_relay(self, events[e].data.fd, port, batches, rest) < 0;
        Py_DECREF(port);
    }
    return failed ? -1 : 0;
}

PyObject *
Receiver_poll_relays(Receiver *self, PyObject *args)
{
    PyObject *ports, *rest;
    int epoll_fd, batches, failed;

    if (!PyArg_ParseTuple(args, "iO!i", &epoll_fd, &PyDict_Type, &ports, &batches))
        return NULL;
    rest = PyList_New(0);
    if (rest == NULL)
        return NULL;
    failed = poll_relays_into(self, epoll_fd, ports, batches, rest) < 0;
    sends_settle(self->sends);
    if (failed)
        Py_CLEAR(rest);
    return rest;
}

PyDoc_STRVAR(recognize_doc,
"recognize(outbox_write, sender_type)\n\n"
"Name the Python objects C may write through itself: Outbox.write (a\n"
"channel's write, bound to a relay socket's Outbox) and the Sender class\n"
"(an allocation's send to a UDP client). Until then nothing is routed in C.");

static PyObject *
recognize(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *write, *type;
    if (!PyArg_ParseTuple(args, "OO!", &write, &PyType_Type, &type))
        return NULL;
    Py_XSETREF(outbox_write, Py_NewRef(write));
    Py_XSETREF(sender_type, Py_NewRef(type));
    Py_RETURN_NONE;
}

/* What sends holds, as a list of (fd, bytes, (host, port)), emptied. */
static PyObject *
sends_take(Sends *sends)
{
    PyObject *taken;
    counts_flush(sends);
    taken = PyList_New(0);
    for (int i = 0; taken != NULL && i < sends->count; i++) {
        Queued *item = &sends->items[i];
        PyObject *fd = PyLong_FromLong(item->fd);
        PyObject *bytes = PyBytes_FromStringAndSize((const char *)sends->bytes + item->offset, (Py_ssize_t)item->length);
        PyObject *to = cached_address(NULL, &item->to);
        if (fd == NULL || bytes == NULL || to == NULL || append3(taken, fd, bytes, to) < 0)
            Py_CLEAR(taken);
        Py_XDECREF(fd);
        Py_XDECREF(bytes);
        Py_XDECREF(to);
    }
    sends->count = 0;
    sends->used = 0;
    return taken;
}

/* One datagram through route, its sends returned instead of sent. */
static PyObject *
route_one(PyObject *args, int from_client)
{
    PyObject *table, *addr, *result;
    Py_buffer data;
    struct sockaddr_storage source;
    socklen_t length;
    Sends *sends;
    int routed;
    if (!PyArg_ParseTuple(args, "Oy*O!", &table, &data, &PyTuple_Type, &addr))
        return NULL;
    if (from_client && !PyDict_Check(table)) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_TypeError, "routes must be a dict");
        return NULL;
    }
    sends = sends_new();
    if (sends == NULL) {
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    if (from_client) {
        routed = route_from_client(sends, table, addr, data.buf, (size_t)data.len);
    } else {
        PyObject *host = PyTuple_GET_SIZE(addr) >= 2 ? PyTuple_GET_ITEM(addr, 0) : NULL;
        int family = host != NULL && PyUnicode_Check(host)
            && PyUnicode_FindChar(host, ':', 0, PyUnicode_GET_LENGTH(host), 1) >= 0 ? AF_INET6 : AF_INET;
        routed = parse_address(addr, family, &source, &length) < 0 ? ERROR
            : route_from_peer(sends, table, addr, &source, data.buf, (size_t)data.len);
    }
    PyBuffer_Release(&data);
    result = routed == ERROR ? NULL : routed == TO_PYTHON ? Py_NewRef(Py_None) : sends_take(sends);
    sends_free(sends);
    return result;
}

PyDoc_STRVAR(route_client_doc,
"route_client(routes, data, (host, port)) -> list of (fd, bytes, (host, port)) or None\n\n"
"What recv_serving does with the datagram data from a client: None when it\n"
"is left to Python, else what it sends ([]: dropped). Counters change.");

static PyObject *
route_client(PyObject *Py_UNUSED(module), PyObject *args)
{
    return route_one(args, 1);
}

PyDoc_STRVAR(route_peer_doc,
"route_peer(allocation, data, (host, port)) -> list of (fd, bytes, (host, port)) or None\n\n"
"What poll_relays does with the datagram data from a peer on a relay socket\n"
"of allocation: None when it is left to Python, else what it sends ([]:\n"
"dropped). Counters change.");

static PyObject *
route_peer(PyObject *Py_UNUSED(module), PyObject *args)
{
    return route_one(args, 0);
}

PyMethodDef route_functions[] = {
    {"recognize", recognize, METH_VARARGS, recognize_doc},
    {"route_client", route_client, METH_VARARGS, route_client_doc},
    {"route_peer", route_peer, METH_VARARGS, route_peer_doc},
    {NULL, NULL, 0, NULL},
};

/* socket_type set when a fresh _socket.socket's fields read as its fileno(), family and type. 0, or -1 on
 * error. */
static int
check_socket_layout(void)
{
    struct {
        PyTypeObject *socket_type;
    } *api = PyCapsule_Import("_socket.CAPI", 0);
    PyObject *sock, *fd;
    int same;
    if (api == NULL)
        return -1;
    if (api->socket_type->tp_basicsize < (Py_ssize_t)sizeof(SocketHead))
        return 0;
    sock = PyObject_CallFunction((PyObject *)api->socket_type, "ii", AF_UNIX, SOCK_DGRAM);
    if (sock == NULL)
        return -1;
    fd = PyObject_CallMethodNoArgs(sock, s_fileno);
    same = fd != NULL && PyLong_AsLong(fd) == ((SocketHead *)sock)->fd && ((SocketHead *)sock)->family == AF_UNIX
        && ((SocketHead *)sock)->type == SOCK_DGRAM;
    Py_XDECREF(fd);
    Py_XDECREF(PyObject_CallMethod(sock, "close", NULL));
    Py_DECREF(sock);
    if (PyErr_Occurred())
        return -1;
    if (same)
        socket_type = api->socket_type;
    return 0;
}

int
route_init(PyObject *module)
{
    struct {
        PyObject **name;
        const char *text;
    } names[] = {
        {&s_allocation, "_allocation"}, {&s_write, "write"}, {&s_fileno, "fileno"}, {&a_bucket.name, "bucket"},
        {&a_channels.name, "channels"}, {&a_permissions.name, "permissions"}, {&a_own_hosts.name, "own_hosts"},
        {&a_peer_channels.name, "peer_channels"}, {&a_relays.name, "relays"}, {&a_send.name, "send"},
        {&a_outbox.name, "outbox"}, {&a_addr.name, "addr"}, {&a_socket.name, "socket"}, {&a_family.name, "family"},
        {&a_packets_out.name, "packets_out"}, {&a_bytes_out.name, "bytes_out"}, {&a_packets_in.name, "packets_in"},
        {&a_bytes_in.name, "bytes_in"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].name = PyUnicode_InternFromString(names[i].text);
        if (*names[i].name == NULL)
            return -1;
    }
    if (getrandom(random_state, sizeof random_state, 0) != (ssize_t)sizeof random_state) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    random_state[0] |= 1;
    if (check_socket_layout() < 0 || PyModule_AddIntConstant(module, "SOCKET_FIELDS", socket_type != NULL) < 0)
        return -1;
    return PyModule_AddFunctions(module, route_functions);
}
