/* The Send indication parser of the relay data path (RFC 8656 §11.2), in C.
 *
 * relay.allocation.parse_send_indication walks a Send indication's
 * attributes in Python for every packet a client sends that way; this does
 * the same walk, with the same rules, and leaves decoding the peer address
 * to the caller. tests/unit/test_relay_datapath.py checks that both agree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#define SEND_INDICATION 0x0016
#define MAGIC_COOKIE 0x2112A442u
#define XOR_PEER_ADDRESS 0x0012
#define DATA 0x0013
#define MESSAGE_INTEGRITY 0x0008
#define MESSAGE_INTEGRITY_SHA256 0x001C
#define FINGERPRINT 0x8028
#define FINGERPRINT_XOR 0x5354554Eu

static uint32_t crc_table[256];

static void
make_crc_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* CRC-32 (ISO 3309, as zlib.crc32) of p[0:n]. */
static uint32_t
crc32_of(const unsigned char *p, Py_ssize_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static unsigned int
u16(const unsigned char *p)
{
    return (unsigned int)p[0] << 8 | p[1];
}

static uint32_t
u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

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
    const unsigned char *data, *peer = NULL, *payload = NULL;
    Py_ssize_t size, offset = 20, peer_length = 0, payload_length = 0;
    int ignoring = 0;

    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "parse_send needs bytes");
        return NULL;
    }
    data = (const unsigned char *)PyBytes_AS_STRING(arg);
    size = PyBytes_GET_SIZE(arg);
    if (size < 20 || u16(data) != SEND_INDICATION || (Py_ssize_t)u16(data + 2) + 20 != size
        || (u16(data + 2) & 3) || u32(data + 4) != MAGIC_COOKIE)
        Py_RETURN_NONE;
    while (offset < size) {
        unsigned int type, length;
        Py_ssize_t start, end;
        if (size - offset < 4)
            Py_RETURN_NONE;
        type = u16(data + offset);
        length = u16(data + offset + 2);
        start = offset + 4;
        end = start + length;
        if (end > size)
            Py_RETURN_NONE;
        if (type == FINGERPRINT) {
            if (end + (-(Py_ssize_t)length & 3) != size || length != 4)
                Py_RETURN_NONE;
            /* Over the message before it, whose length field already counts it. */
            if ((crc32_of(data, offset) ^ FINGERPRINT_XOR) != u32(data + start))
                Py_RETURN_NONE;
        } else if (type == MESSAGE_INTEGRITY || type == MESSAGE_INTEGRITY_SHA256) {
            ignoring = 1;
        } else if (!ignoring && type == XOR_PEER_ADDRESS && peer == NULL) {
            peer = data + start;
            peer_length = length;
        } else if (!ignoring && type == DATA && payload == NULL) {
            payload = data + start;
            payload_length = length;
        }
        offset = end + (-(Py_ssize_t)length & 3);
    }
    if (peer == NULL || payload == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(y#y#y#)", peer, peer_length, payload, payload_length, data + 8, (Py_ssize_t)12);
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
    make_crc_table();
    return PyModule_Create(&indications_module);
}
