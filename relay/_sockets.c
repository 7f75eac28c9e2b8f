/* A relayed transport address's UDP socket, made in one call (RFC 8656 §7.2, §14).
 *
 * relay/relay_ports.py binds a relay socket per allocation: socket(), bind()
 * to a port it picked in the relay range, the receive and send buffers
 * forced to their size (SO_RCVBUFFORCE, SO_SNDBUFFORCE, else the plain
 * options capped by the kernel), and, for DONT-FRAGMENT, IP_PMTUDISC_DO.
 * From Python that is a socket object's construction and five method calls;
 * bind_udp() does the same system calls at once and returns the descriptor,
 * non-blocking and close-on-exec as Python makes its sockets, for
 * socket.SocketType to wrap without a system call. Python keeps every
 * decision: the port, the retries, the tables.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_RCVBUFFORCE
#define SO_RCVBUFFORCE 33
#endif
#ifndef SO_SNDBUFFORCE
#define SO_SNDBUFFORCE 32
#endif

/* Set a buffer size as relay.datagrams.set_buffers does: forced, else the plain option; -1 on failure. */
static int
set_buffer(int fd, int force, int plain, int size)
{
    if (setsockopt(fd, SOL_SOCKET, force, &size, sizeof size) == 0)
        return 0;
    return setsockopt(fd, SOL_SOCKET, plain, &size, sizeof size);
}

PyDoc_STRVAR(bind_udp_doc,
"bind_udp(family, ip, port, buffer_bytes, dont_fragment) -> int\n\n"
"A non-blocking, close-on-exec UDP socket of family (4 or 6) bound to (ip, port), its buffers set to\n"
"buffer_bytes, IP_PMTUDISC_DO with dont_fragment: its descriptor, or -1 when it cannot be bound there\n"
"(the port is taken, ip is not this host's or not an address of family: any bind failure, as a\n"
"Python bind's OSError is taken). OSError for anything else (no descriptor left, ...).");

static PyObject *
bind_udp(PyObject *module, PyObject *args)
{
    int family, port, buffer_bytes, dont_fragment, fd, failed;
    const char *ip;
    struct sockaddr_storage address;
    socklen_t length;
    (void)module;
    if (!PyArg_ParseTuple(args, "isiip:bind_udp", &family, &ip, &port, &buffer_bytes, &dont_fragment))
        return NULL;
    if ((family != 4 && family != 6) || port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "family 4 or 6 and a port in [0, 65535]");
        return NULL;
    }
    memset(&address, 0, sizeof address);
    if (family == 4) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&address;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        failed = inet_pton(AF_INET, ip, &in4->sin_addr) != 1;
        length = sizeof *in4;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&address;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        failed = inet_pton(AF_INET6, ip, &in6->sin6_addr) != 1;
        length = sizeof *in6;
    }
    if (failed)
        return PyLong_FromLong(-1);
    fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (bind(fd, (struct sockaddr *)&address, length) < 0) {
        close(fd);
        return PyLong_FromLong(-1);
    }
    if (set_buffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, buffer_bytes) < 0
            || set_buffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, buffer_bytes) < 0)
        goto error;
    if (dont_fragment) {
        int value = IP_PMTUDISC_DO;
        if (family == 4 ? setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &value, sizeof value)
                        : setsockopt(fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &value, sizeof value))
            goto error;
    }
    return PyLong_FromLong(fd);
error:
    PyErr_SetFromErrno(PyExc_OSError);
    close(fd);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"bind_udp", bind_udp, METH_VARARGS, bind_udp_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sockets_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay._sockets",
    .m_doc = PyDoc_STR("A relay socket made, bound and set up in one call (relay/relay_ports.py)."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__sockets(void)
{
    return PyModule_Create(&sockets_module);
}
