/* The STUN Binding fast path: a plain Binding request answered without Python.
 *
 * The UDP read pass (relay/_mmsg.c, Receiver.recv_serving) offers every
 * datagram here first. A request qualifies when it is exactly an RFC 8489
 * Binding request (type 0x0001, magic cookie, length matching the datagram,
 * §5) whose attributes are all comprehension-optional (0x8000-0xFFFF, which
 * the Python core ignores, §14) except a last FINGERPRINT that verifies
 * (§14.7). Anything else -- RFC 3489 classic requests, CHANGE-REQUEST,
 * RESPONSE-PORT, PADDING, USERNAME, MESSAGE-INTEGRITY, any other method or
 * class, a malformed or bad-fingerprint message -- is left to the Python
 * core (rendezvous/stun/binding.py), which answers, rejects or drops it.
 *
 * The answer is the bytes the Python core gives for the same request:
 * XOR-MAPPED-ADDRESS and MAPPED-ADDRESS of the source (§14.2, §14.1), then
 * the attributes that do not depend on the request (RESPONSE-ORIGIN,
 * OTHER-ADDRESS, SOFTWARE), which the core encodes once per socket as the
 * "tail" (BindingServer.plain_answer_tail), then FINGERPRINT when the
 * request had one (§7.3.1). tests/unit/test_binding.py runs the Binding
 * tests through this path too, and a hypothesis test compares the two on
 * generated requests.
 */
#include "_binding.h"
#include "_stun_bytes.h"

#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#define MAGIC_COOKIE 0x2112A442u
#define FINGERPRINT_XOR 0x5354554Eu
#define ATTR_MAPPED_ADDRESS 0x0001
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define ATTR_FINGERPRINT 0x8028
#define FAMILY_IPV4 0x01
#define FAMILY_IPV6 0x02

static unsigned char *
put16(unsigned char *p, unsigned int value)
{
    p[0] = (unsigned char)(value >> 8);
    p[1] = (unsigned char)value;
    return p + 2;
}

/* Whether request is a plain Binding request; *fingerprint says whether it ends with a FINGERPRINT. */
static int
plain_request(const unsigned char *request, size_t size, int *fingerprint)
{
    size_t offset = 20;
    if (size < 20 || get16(request) != 0x0001 || get32(request + 4) != MAGIC_COOKIE)
        return 0;
    if ((get16(request + 2) & 3) != 0 || (size_t)get16(request + 2) + 20 != size)
        return 0;
    *fingerprint = 0;
    while (offset < size) {
        unsigned int type, length;
        if (size - offset < 4)
            return 0;
        type = get16(request + offset);
        length = get16(request + offset + 2);
        if (offset + 4 + length > size)
            return 0;
        if (type == ATTR_FINGERPRINT) {
            if (length != 4 || offset + 8 != size
                || (crc32_of(request, offset) ^ FINGERPRINT_XOR) != get32(request + offset + 4))
                return 0;
            *fingerprint = 1;
        } else if (type < 0x8000) {
            return 0;
        }
        offset += 4 + ((length + 3) & ~3u);
    }
    return 1;
}

/* An address attribute of source: XOR-ed with the cookie and transaction id when xor_with is given. */
static unsigned char *
put_address(unsigned char *p, unsigned int type, const struct sockaddr_storage *source,
            const unsigned char *xor_with)
{
    const unsigned char *address;
    unsigned int port, size, family;
    if (source->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)source;
        address = (const unsigned char *)&sin->sin_addr;
        port = ntohs(sin->sin_port);
        size = 4;
        family = FAMILY_IPV4;
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)source;
        address = (const unsigned char *)&sin6->sin6_addr;
        port = ntohs(sin6->sin6_port);
        size = 16;
        family = FAMILY_IPV6;
    }
    p = put16(p, type);
    p = put16(p, 4 + size);
    *p++ = 0;
    *p++ = (unsigned char)family;
    p = put16(p, xor_with ? port ^ (MAGIC_COOKIE >> 16) : port);
    for (unsigned int i = 0; i < size; i++)
        *p++ = xor_with ? address[i] ^ xor_with[i] : address[i];
    return p;
}

/* The answer to request from source, written to out; its length, or 0 when Python must answer. */
size_t
binding_answer(const unsigned char *request, size_t size, const struct sockaddr_storage *source,
               const unsigned char *tail, size_t tail_length, unsigned char *out, size_t capacity)
{
    int fingerprint;
    size_t address_bytes, total;
    unsigned char *p;
    if (source->ss_family == AF_INET)
        address_bytes = 12;
    else if (source->ss_family == AF_INET6)
        address_bytes = 24;
    else
        return 0;
    if (!plain_request(request, size, &fingerprint))
        return 0;
    total = 20 + 2 * address_bytes + tail_length + (fingerprint ? 8 : 0);
    if (total > capacity || total - 20 > 0xFFFF)
        return 0;
    p = put16(out, 0x0101);
    p = put16(p, (unsigned int)(total - 20));
    memcpy(p, request + 4, 16);  /* magic cookie and transaction id */
    p += 16;
    p = put_address(p, ATTR_XOR_MAPPED_ADDRESS, source, request + 4);
    p = put_address(p, ATTR_MAPPED_ADDRESS, source, NULL);
    memcpy(p, tail, tail_length);
    p += tail_length;
    if (fingerprint) {
        uint32_t crc = crc32_of(out, (size_t)(p - out)) ^ FINGERPRINT_XOR;
        p = put16(p, ATTR_FINGERPRINT);
        p = put16(p, 4);
        p = put16(p, crc >> 16);
        p = put16(p, crc & 0xFFFF);
    }
    return (size_t)(p - out);
}
