/* Big-endian reads of STUN header and attribute fields (RFC 8489 §5, §14), shared by the C fast paths
 * (relay/_binding.c, relay/_requests.c). */
#ifndef RELAY_STUN_BYTES_H
#define RELAY_STUN_BYTES_H

#include <stdint.h>

static inline uint16_t
get16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t
get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

#endif
