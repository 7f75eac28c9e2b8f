/* What relay/_mmsg.c shares with relay/_route.c and relay/_stay.c: the Receiver and its helpers. */
#ifndef RELAY_MMSG_H
#define RELAY_MMSG_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/socket.h>

typedef struct {
    struct sockaddr_storage key;
    PyObject *value;
} CachedAddress;

typedef struct Sends Sends;

/* A stay's wakeup moderation (relay/_stay.c): whether to hold before each wait, the window of wakeups that
 * decides it, the windows to pass after holds that brought no batch, and what the last wakeup brought. */
typedef struct {
    int holding;
    unsigned long last;
    unsigned long long holds;          /* ever: Receiver.holds */
    unsigned int wakeups;
    unsigned long datagrams;
    long switches;                     /* the thread's voluntary context switches when the window began */
    double since;
    unsigned int skip;
    unsigned int backoff;
} Moderation;

/* Receiver: the buffers of one recvmmsg batch, reused call after call. */
typedef struct {
    PyObject_HEAD
    unsigned int count;
    size_t size;
    char *buffers;
    struct mmsghdr *headers;
    struct iovec *vectors;
    struct sockaddr_storage *addresses;
    CachedAddress *cache;
    unsigned char *answers;            /* recv_answering's answers, BINDING_ANSWER_BYTES each */
    struct mmsghdr *answer_headers;
    struct iovec *answer_vectors;
    Sends *sends;                      /* what the routing pass queued (relay/_route.c) */
    unsigned long received;            /* datagrams read, ever: a stay's count per wakeup (relay/_stay.c) */
    Moderation moderation;             /* relay/_stay.c */
} Receiver;

#include <netinet/in.h>

int format_ipv4(const struct in_addr *in, char *out);
PyObject *cached_address(CachedAddress *cache, const struct sockaddr_storage *ss);
int parse_address(PyObject *addr, int family, struct sockaddr_storage *ss, socklen_t *len);
int receive_batch(Receiver *self, int fd);
PyObject *datagram_item(Receiver *self, int i);
Py_ssize_t send_prepared(int fd, struct mmsghdr *headers, int count);
/* One recvmmsg on a client-facing socket served (recv_serving); how many were read, or -1 on error. */
int serve_batch(Receiver *self, int fd, PyObject *tail, PyObject *routes, PyObject *answer, PyObject *rest,
                int *answered);

/* relay/_route.c */
int route_init(PyObject *module);
Sends *sends_new(void);
void sends_free(Sends *sends);
/* Send what is queued; what was counted is told to the allocations' counters by sends_settle, before Python runs. */
void sends_flush(Sends *sends);
void sends_settle(Sends *sends);
/* Room for one datagram of size bytes to fd at to (flushing first when full); where to write it. */
unsigned char *sends_add(Sends *sends, int fd, const struct sockaddr_storage *to, socklen_t namelen, size_t size);
/* 1: routed (queued on sends, or dropped as the Python path drops it), 0: for Python, -1: error. */
int route_from_client(Sends *sends, PyObject *routes, PyObject *addr, const unsigned char *data, size_t size);
int poll_relays_into(Receiver *self, int epoll_fd, PyObject *ports, int batches, PyObject *rest);
PyObject *Receiver_poll_relays(Receiver *self, PyObject *args);
extern PyMethodDef route_functions[];
extern const char Receiver_poll_relays_doc[];

/* relay/_stay.c */
PyObject *Receiver_stay(Receiver *self, PyObject *args);
extern const char Receiver_stay_doc[];

#endif
