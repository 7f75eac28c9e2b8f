/* The walk over a Send indication's attributes (RFC 8656 §11.2), shared by relay/_indications.c
 * (parse_send) and relay/_route.c (Send indications relayed in C). Plain C, no Python objects. */
#ifndef RELAY_SENDWALK_H
#define RELAY_SENDWALK_H

#include <stddef.h>
#include <stdint.h>

#include "_stun_bytes.h"

#define SEND_INDICATION 0x0016
#define STUN_MAGIC_COOKIE 0x2112A442u
#define ATTR_XOR_PEER_ADDRESS 0x0012
#define ATTR_DATA 0x0013
#define ATTR_MESSAGE_INTEGRITY 0x0008
#define ATTR_MESSAGE_INTEGRITY_SHA256 0x001C
#define ATTR_FINGERPRINT 0x8028
#define FINGERPRINT_XOR 0x5354554Eu

/* Find the XOR-PEER-ADDRESS value and the DATA of a Send indication: 1, or 0 when it is malformed (a bad
 * header, an attribute overrunning the message, one after FINGERPRINT, a FINGERPRINT that does not match,
 * no XOR-PEER-ADDRESS or no DATA). The first of a repeated attribute counts and attributes after
 * MESSAGE-INTEGRITY are ignored, as in Message.decode. */
static int
walk_send(const unsigned char *data, size_t size, const unsigned char **peer, size_t *peer_length,
          const unsigned char **payload, size_t *payload_length)
{
    size_t offset = 20;
    int ignoring = 0;
    *peer = *payload = NULL;
    if (size < 20 || get16(data) != SEND_INDICATION || (size_t)get16(data + 2) + 20 != size
        || (get16(data + 2) & 3) || get32(data + 4) != STUN_MAGIC_COOKIE)
        return 0;
    while (offset < size) {
        unsigned int type, length;
        size_t start, end;
        if (size - offset < 4)
            return 0;
        type = get16(data + offset);
        length = get16(data + offset + 2);
        start = offset + 4;
        end = start + length;
        if (end > size)
            return 0;
        if (type == ATTR_FINGERPRINT) {
            if (end + (-(size_t)length & 3) != size || length != 4)
                return 0;
            /* Over the message before it, whose length field already counts it. */
            if ((crc32_of(data, offset) ^ FINGERPRINT_XOR) != get32(data + start))
                return 0;
        } else if (type == ATTR_MESSAGE_INTEGRITY || type == ATTR_MESSAGE_INTEGRITY_SHA256) {
            ignoring = 1;
        } else if (!ignoring && type == ATTR_XOR_PEER_ADDRESS && *peer == NULL) {
            *peer = data + start;
            *peer_length = length;
        } else if (!ignoring && type == ATTR_DATA && *payload == NULL) {
            *payload = data + start;
            *payload_length = length;
        }
        offset = end + (-(size_t)length & 3);
    }
    return *peer != NULL && *payload != NULL;
}

#endif
