/* The Send indication parser of the relay data path (RFC 8656 §11.2), in C.
 *
 * relay.allocation.parse_send_indication walks a Send indication's
 * attributes in Python for every packet a client sends that way; this does
 * the same walk, with the same rules (relay/_sendwalk.h, which the routed
 * relay of relay/_route.c shares), and leaves decoding the peer address to
 * the caller. tests/unit/test_relay_datapath.py checks that both agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_sendwalk.h"

PyDoc_STRVAR(parse_send_doc,
"parse_send(data) -> (xor_peer_address_value, payload, transaction_id) or None\n\n"
"The raw XOR-PEER-ADDRESS value and the DATA of a Send indication, or None\n"
"when it is malformed: a bad header, an attribute overrunning the message,\n"
"one after FINGERPRINT, a FINGERPRINT that does not match, no\n"
"XOR-PEER-ADDRESS or no DATA. The first of a repeated attribute counts and\n"
"attributes after MESSAGE-INTEGRITY are ignored, as in Message.decode.");

static PyObject *
parse_send(PyObject *Py_UNUSED(module), PyObject *arg)
{
    const unsigned char *data, *peer, *payload;
    size_t peer_length = 0, payload_length = 0;

    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "parse_send needs bytes");
        return NULL;
    }
    data = (const unsigned char *)PyBytes_AS_STRING(arg);
    if (!walk_send(data, (size_t)PyBytes_GET_SIZE(arg), &peer, &peer_length, &payload, &payload_length))
        Py_RETURN_NONE;
    return Py_BuildValue("(y#y#y#)", peer, (Py_ssize_t)peer_length, payload, (Py_ssize_t)payload_length,
                         data + 8, (Py_ssize_t)12);
}

static PyMethodDef module_methods[] = {
    {"parse_send", parse_send, METH_O, parse_send_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef indications_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay._indications",
    .m_doc = PyDoc_STR("The Send indication parser of the relay data path (RFC 8656 §11.2)."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__indications(void)
{
    return PyModule_Create(&indications_module);
}
