/* The reactor's wait, done in C while only sockets C serves are ready (issue 16; docs/PERFORMANCE.md).
 *
 * A turn of Twisted's reactor costs about 4 µs of Python (its timed calls, the
 * epoll dispatch through log.callWithLogger, the reader's doRead), however few
 * datagrams the wakeup brings. The relay's client-facing UDP sockets and its
 * relay sockets' poller are read by C (relay/_mmsg.c, relay/_route.c), so a
 * wakeup for them needs no Python unless C leaves it a datagram. Receiver.stay
 * waits on the reactor's own epoll with the reactor's timeout and, while every
 * descriptor it reports is one of those, serves them and waits again. Anything
 * else ends the stay: another descriptor, a write interest, an error or hang-up,
 * a signal, a call queued from a thread, the next timed call's due time, a
 * timed call scheduled by the Python a TURN request was handed to (the
 * socket's answer callable), a datagram left for Python (returned to the
 * caller). The reactor's next poll
 * finds what ended it still ready, since its epoll is level-triggered.
 *
 * A wakeup costs about as much again in the kernel (the switch in and out of
 * an idle core), and under a steady light load each datagram is one: the
 * stay then moderates them as a NIC's interrupt coalescing does (ethtool's
 * adaptive rx-usecs). When its waits sleep for fewer than two datagrams
 * each and less than the hold time apart, it sleeps the hold time before
 * each wait, so that wait finds a batch; when holds stop gathering two
 * datagrams each (a client waiting on each answer), it backs off. A wakeup
 * that brought a batch is not followed by a hold: a backlog (after the thread
 * was preempted or throttled) or a heavy load is served at once. What is
 * ready during a hold waits for it: the hold bounds the latency added, and 0
 * turns it off (``--wakeup-hold``).
 */
#include "_mmsg.h"

#include <errno.h>
#include <limits.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>

#define STAY_EVENTS 64
#define TELLERS 8
/* Wakeups per moderation decision, without and with holds; a wakeup's datagrams after which the next wait is not
 * held; the most windows a backoff passes. */
#define WINDOW 32
#define HELD_WINDOW 8
#define BUSY 16
#define MOST_BACKOFF 256

enum { SERVE_SOCKET = 0, SERVE_RELAYS = 1 };

const char Receiver_stay_doc[] =
"stay(epoll_fd, timeout, selectables, served, calls, wakeups, hold[, timed]) -> None or (fd, rest)\n\n"
"Wait on the reactor's epoll epoll_fd for at most timeout seconds (< 0: no\n"
"limit) and serve in C what it reports while every ready descriptor fd is in\n"
"served with selectables[fd] (the reactor's) as its entry's first item:\n"
"(selectable, 0, tail, routes, answered[, answer]) for a client-facing socket,\n"
"served as recv_serving(fd, tail, routes, answer) with answered(count) told\n"
"of its Binding answers when the stay ends;\n"
"(selectable, 1, ports, batches) for a poller's epoll, served as\n"
"poll_relays(fd, ports, batches). Returns None when something else needs the\n"
"reactor, the time is up, calls (its queue of calls from threads) or timed\n"
"(its timed calls not yet scheduled) is not empty, or wakeups waits were\n"
"served; (fd, rest) when serving fd left rest,\n"
"recv_serving's or poll_relays' list, for Python. hold (seconds, 0: never)\n"
"bounds the sleep before a wait that moderates a steady light load.";

static double
monotonic_seconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* epoll_wait's timeout in ms for what is left until deadline, rounded up; -1: none; 0: the time is up. */
static int
wait_ms(double deadline)
{
    double left;
    if (deadline < 0)
        return -1;
    left = (deadline - monotonic_seconds()) * 1000.0;
    if (left <= 0)
        return 0;
    if (left >= (double)INT_MAX)
        return INT_MAX;
    return (int)left + ((double)(int)left < left);
}

/* served's entry for a ready descriptor, if C serves it: a new reference, or NULL (with an exception on error). */
static PyObject *
served_entry(PyObject *selectables, PyObject *served, const struct epoll_event *event)
{
    PyObject *key, *entry, *selectable;
    if (event->events & ~(uint32_t)EPOLLIN)
        return NULL;  /* a write interest, an error or a hang-up: the reactor's */
    key = PyLong_FromLong(event->data.fd);
    if (key == NULL)
        return NULL;
    entry = PyDict_GetItemWithError(served, key);
    selectable = entry == NULL ? NULL : PyDict_GetItemWithError(selectables, key);
    Py_DECREF(key);
    if (selectable == NULL || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 4
        || PyTuple_GET_ITEM(entry, 0) != selectable)
        return NULL;  /* not ours, or its descriptor now belongs to another reader */
    return Py_NewRef(entry);
}

/* The Binding answers a stay made, per callable to tell (answered), told once when it ends: a callable is
 * Python, and nothing in Python reads the counts until then. */
typedef struct {
    PyObject *callable[TELLERS];
    long count[TELLERS];
    int used;
} Tellers;

/* Tell every callable its count; one that raises is reported as unraisable, and the others are told. */
static void
tell(Tellers *tellers)
{
    for (int i = 0; i < tellers->used; i++) {
        PyObject *told = PyObject_CallFunction(tellers->callable[i], "l", tellers->count[i]);
        if (told == NULL)
            PyErr_WriteUnraisable(tellers->callable[i]);
        Py_XDECREF(told);
        Py_DECREF(tellers->callable[i]);
    }
    tellers->used = 0;
}

/* Count answered for callable, telling the others first if there is no room. */
static void
count_answers(Tellers *tellers, PyObject *callable, int answered)
{
    int i = 0;
    while (i < tellers->used && tellers->callable[i] != callable)
        i++;
    if (i == TELLERS) {
        tell(tellers);
        i = 0;
    }
    if (i == tellers->used) {
        tellers->callable[i] = Py_NewRef(callable);
        tellers->count[i] = 0;
        tellers->used++;
    }
    tellers->count[i] += answered;
}

/* Serve one ready descriptor as its entry says; what it left for Python is appended to rest. -1 on error. */
static int
serve(Receiver *self, int fd, PyObject *entry, PyObject *rest, Tellers *tellers)
{
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
    int answered = 0, result;
    if (kind == SERVE_SOCKET && (PyTuple_GET_SIZE(entry) == 5 || PyTuple_GET_SIZE(entry) == 6)) {
        PyObject *tail = PyTuple_GET_ITEM(entry, 2), *routes = PyTuple_GET_ITEM(entry, 3);
        PyObject *count = PyTuple_GET_ITEM(entry, 4);
        PyObject *answer = PyTuple_GET_SIZE(entry) == 6 ? PyTuple_GET_ITEM(entry, 5) : Py_None;
        if ((tail != Py_None && !PyBytes_Check(tail)) || (routes != Py_None && !PyDict_Check(routes))
            || (answer != Py_None && !PyCallable_Check(answer))) {
            PyErr_SetString(PyExc_TypeError, "tail must be bytes or None, routes a dict or None, answer callable or None");
            return -1;
        }
        result = serve_batch(self, fd, tail, routes, answer, rest, &answered);
        sends_flush(self->sends);
        if (answered > 0 && count != Py_None)
            count_answers(tellers, count, answered);
        return result < 0 ? -1 : 0;
    }
    if (kind == SERVE_RELAYS && PyDict_Check(PyTuple_GET_ITEM(entry, 2))) {
        int batches = (int)PyLong_AsLong(PyTuple_GET_ITEM(entry, 3));
        if (batches < 1) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "batches must be at least 1");
            return -1;
        }
        result = poll_relays_into(self, fd, PyTuple_GET_ITEM(entry, 2), batches, rest);
        sends_flush(self->sends);
        return result;
    }
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "not a served entry");
    return -1;
}

/* Sleep up to hold seconds, never past deadline; a signal cuts it short (the wait after it sees the signal). */
static void
hold_wait(Moderation *m, double hold, double deadline)
{
    struct timespec sleep;
    if (deadline >= 0 && deadline - monotonic_seconds() < hold)
        hold = deadline - monotonic_seconds();
    if (hold <= 0)
        return;
    m->holds++;
    sleep.tv_sec = (time_t)hold;
    sleep.tv_nsec = (long)((hold - (double)sleep.tv_sec) * 1e9);
    Py_BEGIN_ALLOW_THREADS
    clock_nanosleep(CLOCK_MONOTONIC, 0, &sleep, NULL);
    Py_END_ALLOW_THREADS
}

/* The calling thread's voluntary context switches: the waits that slept. */
static long
sleeps(void)
{
    struct rusage usage;
    return getrusage(RUSAGE_THREAD, &usage) == 0 ? usage.ru_nvcsw : 0;
}

/* Count a wakeup that read count datagrams (after a hold if held); every WINDOW wakeups (HELD_WINDOW held ones
 * while holding), decide whether to hold before each wait.
 * Without holds: hold when the waits slept for fewer than two datagrams each and less than hold apart (a steady
 * light load, where a hold gathers more). With holds: go on while they gather at least two each; a window of
 * holds that gathered less backs off for 1, 2, 4, ... windows. A wakeup that brought BUSY or more is not followed
 * by a hold (more is likely waiting: a backlog after the thread was preempted or throttled, or a heavy load), so
 * a hold never keeps the thread from a backlog. */
static void
moderate(Moderation *m, double hold, unsigned long count, int held)
{
    double now;
    long slept;
    m->last = count;
    if (m->holding && !held)
        return;
    m->datagrams += count;
    if (++m->wakeups < (m->holding ? HELD_WINDOW : WINDOW))
        return;
    now = monotonic_seconds();
    slept = sleeps() - m->switches;
    if (m->holding) {
        m->holding = m->datagrams >= 2 * (unsigned long)m->wakeups;
        m->backoff = m->holding ? 0 : (m->backoff == 0 ? 1 : 2 * m->backoff);
        if (m->backoff > MOST_BACKOFF)
            m->backoff = MOST_BACKOFF;
        m->skip = m->backoff;
    } else if (m->skip > 0) {
        m->skip--;
    } else {
        m->holding = slept > 0 && (unsigned long)(2 * slept) > m->datagrams && now - m->since < hold * (double)slept;
    }
    m->wakeups = 0;
    m->datagrams = 0;
    m->switches += slept;
    m->since = now;
}

static PyObject *
stay(Receiver *self, int epoll_fd, double timeout, PyObject *selectables, PyObject *served, PyObject *calls,
     int wakeups, double hold, PyObject *timed, Tellers *tellers)
{
    struct epoll_event events[STAY_EVENTS];
    double deadline = timeout < 0 ? -1.0 : monotonic_seconds() + timeout;
    PyObject *rest = NULL, *result = Py_None;  /* rest: for what serving leaves Python, kept while empty */

    for (int w = 0; w < wakeups && result == Py_None; w++) {
        PyObject *entries[STAY_EVENTS];
        int ready, ms, found = 0;
        unsigned long before = self->received;
        int held = hold > 0 && self->moderation.holding && self->moderation.last < BUSY;
        if (held)
            hold_wait(&self->moderation, hold, deadline);
        ms = wait_ms(deadline);
        if (ms == 0 || PyList_GET_SIZE(calls) > 0 || (timed != NULL && PyList_GET_SIZE(timed) > 0))
            break;
        Py_BEGIN_ALLOW_THREADS
        ready = epoll_wait(epoll_fd, events, STAY_EVENTS, ms);
        Py_END_ALLOW_THREADS
        if (ready < 0 && errno != EINTR) {
            result = PyErr_SetFromErrno(PyExc_OSError);
            break;
        }
        if (ready <= 0)
            break;  /* the time is up, or a signal: its handler runs when Python resumes */
        while (found < ready && (entries[found] = served_entry(selectables, served, &events[found])) != NULL)
            found++;
        if (found < ready) {
            for (int i = 0; i < found; i++)
                Py_DECREF(entries[i]);
            if (PyErr_Occurred())
                result = NULL;
            break;
        }
        for (int i = 0; i < ready; i++) {
            int fd = events[i].data.fd;
            if (result == Py_None && rest == NULL && (rest = PyList_New(0)) == NULL)
                result = NULL;
            else if (result == Py_None && serve(self, fd, entries[i], rest, tellers) < 0)
                result = NULL;
            else if (result == Py_None && PyList_GET_SIZE(rest) > 0)
                result = Py_BuildValue("(iO)", fd, rest);
            Py_DECREF(entries[i]);
        }
        if (hold > 0)
            moderate(&self->moderation, hold, self->received - before, held);
    }
    Py_XDECREF(rest);
    return result == Py_None ? Py_NewRef(Py_None) : result;
}

PyObject *
Receiver_stay(Receiver *self, PyObject *args)
{
    PyObject *selectables, *served, *calls, *timed = NULL, *result;
    Tellers tellers = {.used = 0};
    double timeout, hold;
    int epoll_fd, wakeups;

    if (!PyArg_ParseTuple(args, "idO!O!O!id|O!", &epoll_fd, &timeout, &PyDict_Type, &selectables, &PyDict_Type,
                          &served, &PyList_Type, &calls, &wakeups, &hold, &PyList_Type, &timed))
        return NULL;
    result = stay(self, epoll_fd, timeout, selectables, served, calls, wakeups, hold, timed, &tellers);
    sends_settle(self->sends);  /* the counters of what C relayed during the stay, for the Python that runs next */
    if (result == NULL) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        tell(&tellers);
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    tell(&tellers);
    return result;
}
